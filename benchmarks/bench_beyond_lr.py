#!/usr/bin/env python
"""Does every model learn beyond LR? Valid AUC per epoch and test AUC of every Criteo-style model of the
registry with its defaults, against logistic regression, on the synthetic 500k-row store.

Protocol (issue 10, target 5): the store of ``bench_models.py`` (``write_synthetic_criteo`` rows,
``preprocess_criteo`` with the default options: 39 sparse fields, 8:1:1 split; built once and cached
in ``--workdir``). Every model -- LR, DNN, FM, FFM, DeepFM, DCN, AFM, xDeepFM, AutoInt, AutoInt+, ONN,
FiBiNET, DCN-V2 (DIN and DIEN need sequences) -- trains ``--epochs`` epochs (default 2) through
``ctrkit.pytorch.trainer.fit_from_config``, the call ``ctrkit train --framework torch`` makes, with
the registry's defaults and the trainer's default recipe (Adam lr 1e-3, batch 4096, BCE, Xavier
normal, seed 2018; no early stop within the epochs asked for), each in its own process with
``--threads`` intra-op threads. The trainer evaluates the valid split after every epoch and the test
split with the best epoch's weights.

The verdict: a model learns beyond LR when its test AUC exceeds LR's by at least ``--margin``
(default 0.01).

Usage::

    .venv/bin/python benchmarks/bench_beyond_lr.py                     # all 13 models, ~1 h on 1 thread
    .venv/bin/python benchmarks/bench_beyond_lr.py --models lr,afm,fm  # a few
    .venv/bin/python benchmarks/bench_beyond_lr.py --quick             # smoke run (< 2 min)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
#: LR first (the baseline), the slow ones (ONN, FiBiNET) last
MODELS = ("lr", "fm", "ffm", "afm", "dnn", "deepfm", "dcn", "dcnv2", "autoint", "autoint+", "xdeepfm", "onn",
          "fibinet")


# ---------------------------------------------------------------------------------------------
# One model (child process)
# ---------------------------------------------------------------------------------------------
def run_one(model: str, store_path: str, epochs: int, batch_size: int, threads: int, out: Path,
            model_args: dict[str, Any]) -> None:
    """Train ``model`` as ``ctrkit train`` does and write its metrics to ``out`` (JSON)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    from ctrkit.config import TrainConfig
    from ctrkit.data.store import Store
    from ctrkit.pytorch.trainer import fit_from_config

    torch.set_num_interop_threads(1)
    store = Store(store_path)
    with tempfile.TemporaryDirectory(prefix="ctrkit-beyond-lr-") as scratch:
        config = TrainConfig(model=model, framework="torch", data=store_path, epochs=epochs, batch_size=batch_size,
                             model_save_dir=os.path.join(scratch, "run"), threads=threads, patience=epochs,
                             log_every=10**9, model_args=model_args).validate()
        start = time.perf_counter()
        metrics = fit_from_config(config, store)
        wall = time.perf_counter() - start
    result = {
        "model": model,
        "valid_auc": [h.get("valid_auc") for h in metrics["history"]],
        "valid_logloss": [h.get("valid_logloss") for h in metrics["history"]],
        "rows_per_s": [h.get("rows_per_s") for h in metrics["history"]],
        "test_auc": (metrics.get("test") or {}).get("auc"),
        "test_logloss": (metrics.get("test") or {}).get("logloss"),
        "best_epoch": metrics.get("best_epoch"),
        "hparams": config.hparams(),
        "model_args": model_args,
        "wall_s": wall,
    }
    out.write_text(json.dumps(result, default=str))


def run_model(args: argparse.Namespace, model: str, store: Path, scratch: Path) -> dict[str, Any]:
    out = scratch / f"{model.replace('+', 'plus')}.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-u", __file__, "--_one", model, "--_store", str(store), "--_out", str(out),
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--_args", json.dumps(args.model_args.get(model, {}))]
    load = common.loadavg()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        tail = " | ".join((proc.stderr.strip().splitlines() or ["(no output)"])[-3:])
        return {"model": model, "error": f"exit {proc.returncode}: {tail}", "loadavg_before": load}
    return {**json.loads(out.read_text()), "loadavg_before": load}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def verdicts(results: list[dict[str, Any]], margin: float) -> list[dict[str, Any]]:
    """Adds ``margin_over_lr`` and ``verdict`` to every result (LR's own: ``baseline``)."""
    lr = next((r for r in results if r["model"] == "lr" and r.get("test_auc") is not None), None)
    for r in results:
        if r.get("test_auc") is None or lr is None:
            r["margin_over_lr"], r["verdict"] = None, "error" if "error" in r else "no LR"
        elif r["model"] == "lr":
            r["margin_over_lr"], r["verdict"] = 0.0, "baseline"
        else:
            r["margin_over_lr"] = r["test_auc"] - lr["test_auc"]
            r["verdict"] = "beyond LR" if r["margin_over_lr"] >= margin else "NOT beyond LR"
    return results


def format_report(results: list[dict[str, Any]], epochs: int) -> str:
    headers = ["model"] + [f"valid AUC e{e + 1}" for e in range(epochs)] + ["test AUC", "test logloss", "- LR",
                                                                             "verdict", "rows/s", "min"]

    def f(value: Any, digits: int = 4) -> str:
        return "-" if value is None else f"{value:+.{digits}f}" if digits < 0 else f"{value:.{digits}f}"

    table = []
    for r in results:
        if "error" in r:
            table.append([r["model"]] + ["-"] * (epochs + 3) + ["error", "-", "-"])
            continue
        valid = list(r["valid_auc"]) + [None] * (epochs - len(r["valid_auc"]))
        rate = common.median(x for x in r["rows_per_s"] if x) if any(r["rows_per_s"]) else None
        table.append([r["model"]] + [f(v) for v in valid] + [
            f(r["test_auc"]), f(r["test_logloss"]),
            "-" if r["margin_over_lr"] is None else f"{r['margin_over_lr']:+.4f}",
            r["verdict"], common.format_count(rate), f"{r['wall_s'] / 60:.1f}",
        ])
    text = common.format_table(headers, table, align="l" + "r" * (epochs + 3) + "lrr")
    errors = [f"  {r['model']}: {r['error']}" for r in results if "error" in r]
    return text + ("\nerrors:\n" + "\n".join(errors) if errors else "")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default {','.join(MODELS)}); "
                                                                   "LR is added when missing (the baseline)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rows", type=int, default=500_000,
                        help="synthetic rows before the 8:1:1 split (default 500,000); the same for every model")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per model (default 1)")
    parser.add_argument("--margin", type=float, default=0.01, help="test AUC over LR's that counts as clear")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic rows")
    parser.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR / "models",
                        help="where the synthetic TSV and store are cached (shared with bench_models.py)")
    parser.add_argument("--json", type=Path, default=common.DEFAULT_WORKDIR / "beyond_lr.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: 60k rows, 1 epoch, lr,fm,afm")
    parser.add_argument("--model-args", default="",
                        help="MODEL.KEY=VALUE,...: a model's hyper-parameter other than its default (VALUE as JSON), "
                             "e.g. afm.embed_init_std=1e-4; recorded in the JSON")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    parser.add_argument("--_args", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--_store", help=argparse.SUPPRESS)
    parser.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model_args = parse_model_args(args.model_args)
    if args.quick:
        args.rows, args.epochs = 60_000, 1
        if not any(a == "--models" or a.startswith("--models=") for a in (argv if argv is not None else sys.argv[1:])):
            args.models = "lr,fm,afm"
    return args


def parse_model_args(text: str) -> dict[str, dict[str, Any]]:
    """``afm.embed_init_std=1e-4,fm.embed_size=8`` -> ``{"afm": {"embed_init_std": 1e-4}, "fm": {...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        model, dot, name = key.partition(".")
        if not (sep and dot and model and name):
            raise SystemExit(f"--model-args: expected MODEL.KEY=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(model.strip().lower(), {})[name.strip()] = parsed
    return out


def build_store(workdir: Path, rows: int, seed: int) -> Path:
    """The store of ``bench_models.py`` (same files, same cache)."""
    import bench_models

    store, _, _ = bench_models.prepare_data(workdir, rows, seed, train_seed=2018)
    return store


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._one:
        run_one(args._one, args._store, args.epochs, args.batch_size, args.threads, args._out, json.loads(args._args))
        return 0
    from ctrkit.registry import get_model_info

    models = [get_model_info(m.strip().lower()).name for m in args.models.split(",") if m.strip()]
    if "lr" not in models:
        models.insert(0, "lr")
    info = common.machine_info()
    print(common.describe_machine(info), flush=True)
    store = build_store(args.workdir, args.rows, args.seed)
    print(f"store: {store} ({args.rows:,} synthetic rows); {args.epochs} epochs, batch {args.batch_size}, "
          f"{args.threads} thread(s)", flush=True)
    scratch = common.make_scratch(args.workdir, "beyond-lr-")
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    for model in models:
        r = run_model(args, model, store, scratch)
        results.append(r)
        if "error" in r:
            print(f"  {model:9s} ERROR {r['error']}", flush=True)
        else:
            valid = " ".join(f"{v:.4f}" for v in r["valid_auc"] if v is not None)
            print(f"  {model:9s} valid {valid}  test {r['test_auc']:.4f}  ({r['wall_s'] / 60:.1f} min, "
                  f"load {r['loadavg_before'][0]:.1f})", flush=True)
        common.write_json(args.json, {"benchmark": "beyond_lr", "partial": True, "results": results})
    verdicts(results, args.margin)
    print()
    print(format_report(results, args.epochs))
    print(f"verdict: 'beyond LR' = test AUC >= LR's + {args.margin}")
    payload = {
        "benchmark": "beyond_lr",
        "machine": info,
        "loadavg_at_end": common.loadavg(),
        "settings": {"rows": args.rows, "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
                     "threads": args.threads, "margin": args.margin, "store": str(store),
                     "model_args": args.model_args},
        "results": results,
        "wall_seconds": time.perf_counter() - started,
    }
    path = common.write_json(args.json, payload)
    print(f"\nwrote {path}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
