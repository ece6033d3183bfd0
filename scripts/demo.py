"""The main job of `make demo`: train LR and DeepFM (PyTorch, and DeepFM again in TensorFlow) on the
synthetic store, compare with the oracle.

Runs the same `ctrkit train` commands a user would type, then prints the test AUC of each model
next to the oracle AUC (the true click probabilities written by `ctrkit synth`) on the same test
rows.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from ctrkit.data.pipeline import SPLITS, split_assignment
from ctrkit.data.store import Store
from ctrkit.metrics import auc, logloss

DEEPFM = ["--epochs", "2", "--embed_size", "16", "--hidden_units", "400,400,400"]
#: run name -> (model, framework, options)
RUNS = {
    "lr": ("lr", "torch", ["--epochs", "2", "--lr", "0.005"]),
    "deepfm": ("deepfm", "torch", DEEPFM),
    "deepfm-tf": ("deepfm", "tf", DEEPFM),
}


def oracle_on_test(store: Store, raw: Path) -> tuple[float, float]:
    """AUC and logloss of the true probabilities on the store's test rows.

    The split is the preprocessing's own draw per line, recomputed with the store's seed and
    ratios; synthetic files have no malformed lines to skip.
    """
    probs = np.load(str(raw) + ".probs.npy")
    options = store.meta["options"]
    rng = np.random.default_rng(options["seed"])
    split = split_assignment(rng, len(probs), np.asarray(options["split"], dtype=np.float64))
    test_probs = probs[split == SPLITS.index("test")]
    labels = store.read_split("test")["label"]
    return auc(labels, test_probs), logloss(labels, test_probs)


def train(name: str, model: str, framework: str, store: Path, out: Path, extra: list[str]) -> dict:
    command = [
        "ctrkit", "train", "--model", model, "--framework", framework, "--data", str(store),
        "--batch_size", "4096", "--optimizer", "Adam", "--loss", "BCE",
        "--model_save_dir", str(out / name), "--overwrite", "--seed", "2018", *extra,
    ]
    print(f"\n$ {shlex.join(command)}", flush=True)
    subprocess.run([sys.executable, "-m", "ctrkit.cli", *command[1:]], check=True)
    return json.loads((out / name / "metrics.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--raw", type=Path, required=True, help="the synthetic TSV the store was built from")
    parser.add_argument("--out", type=Path, required=True, help="directory for the runs")
    args = parser.parse_args()

    store = Store(args.store)
    results = {name: train(name, *run[:2], args.store, args.out, run[2]) for name, run in RUNS.items()}
    oracle_auc, oracle_logloss = oracle_on_test(store, args.raw)

    print(f"\nSynthetic Criteo-format data, {store.splits['test'].rows:,} test rows:")
    print(f"{'model':<10} {'test AUC':>9} {'logloss':>9} {'train rows/s':>13}")
    for model, metrics in results.items():
        test = metrics["test"]
        print(f"{model:<10} {test['auc']:>9.4f} {test['logloss']:>9.4f} {metrics['rows_per_s']:>13,.0f}")
    print(f"{'oracle':<10} {oracle_auc:>9.4f} {oracle_logloss:>9.4f}   (true click probabilities)")
    gain = results["deepfm"]["test"]["auc"] - results["lr"]["test"]["auc"]
    print(f"\nDeepFM - LR: {gain:+.4f} AUC (the planted pairwise and 3-way interactions LR cannot express)")
    gap = results["deepfm-tf"]["test"]["auc"] - results["deepfm"]["test"]["auc"]
    print(f"DeepFM TensorFlow - PyTorch: {gap:+.4f} AUC (same model, same rows, same recipe)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
