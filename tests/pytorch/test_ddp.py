"""DistributedDataParallel on two CPU processes (gloo): ``--cpu_processes 2`` and ``torchrun``."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import build_store, run_cli  # noqa: E402

from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.metrics import auc, logloss  # noqa: E402
from ctrkit.pytorch.trainer import Trainer  # noqa: E402

TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
TIMING_KEYS = ("seconds", "rows_per_s")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # odd-sized evaluation splits: the two ranks' shards differ in length (gather pads them)
    return build_store(tmp_path_factory.mktemp("ddp") / "store.lmdb", train=3000, valid=999, test=1001)


def train_args(store, save_dir, *extra):
    return ["train", "--model", "deepfm", "--data", str(store.path), "--epochs", "2", "--batch_size", "128",
            "--lr", "3e-3", "--embed_size", "4", "--hidden_units", "16,16", "--dropout", "0.1",
            "--threads", "1", "--log_every", "5", "--model_save_dir", str(save_dir), *extra]


def comparable(metrics):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in metrics["history"]], metrics["test"]


def check_run(result, save_dir: Path, store) -> dict:
    """Common checks of a two-process run; returns its metrics.json."""
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["stopped"] == "completed"
    losses = [h["train_loss"] for h in metrics["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]  # it learns
    assert metrics["best_valid"]["auc"] > 0.8

    # only rank 0 writes and prints: one TensorBoard file, each epoch line once, no temp files
    events = sorted(p.name for p in (save_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 2 and events[1].endswith(".hparams")  # rank 0's scalars and HParams alone
    for epoch in (1, 2):
        assert len(re.findall(rf"^epoch {epoch}/2 ", result.stdout, flags=re.M)) == 1, result.stdout
    assert result.stdout.count("test auc") == 1
    assert sorted(p.name for p in save_dir.iterdir()) == ["best.pt", "last.pt", "metrics.json", "tensorboard",
                                                          "test_predictions.npz"]

    # the gathered sharded evaluation equals a single-process evaluation of the best weights
    trainer = Trainer.from_checkpoint(save_dir / "best.pt")
    single = trainer.evaluate(store, "test")
    assert metrics["test"]["rows"] == single["rows"] == 1001
    assert metrics["test"]["auc"] == pytest.approx(single["auc"], abs=1e-6)
    assert metrics["test"]["logloss"] == pytest.approx(single["logloss"], abs=1e-6)
    probs = trainer.predict(BatchReader(store, "test", 1001))
    labels = store.read_split("test")["label"]
    assert auc(labels, probs) == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    assert logloss(labels, probs) == pytest.approx(metrics["test"]["logloss"], abs=1e-6)
    return metrics


@pytest.fixture(scope="module")
def spawned(store, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("spawned") / "run"
    result = run_cli(*train_args(store, save_dir, "--cpu_processes", "2"))
    return result, save_dir


def test_cpu_processes_ddp(store, spawned):
    result, save_dir = spawned
    check_run(result, save_dir, store)


def test_torchrun_ddp_matches_spawned_run(store, spawned, tmp_path):
    save_dir = tmp_path / "run"
    # torchrun runs `python -m ctrkit.cli train ...` in each of its two processes
    result = run_cli(*train_args(store, save_dir), launcher=TORCHRUN)
    metrics = check_run(result, save_dir, store)
    reference = json.loads((spawned[1] / "metrics.json").read_text())
    (history, test), (ref_history, ref_test) = comparable(metrics), comparable(reference)
    assert len(history) == len(ref_history)
    for mine, theirs in zip(history, ref_history):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12), key
    assert test["auc"] == pytest.approx(ref_test["auc"], abs=1e-9)


def test_ddp_resume_mid_epoch(store, spawned, tmp_path):
    save_dir = tmp_path / "run"
    first = run_cli(*train_args(store, save_dir, "--cpu_processes", "2", "--max_steps", "30"))
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    assert json.loads((save_dir / "metrics.json").read_text())["stopped"] == "max_steps"
    second = run_cli(*train_args(store, save_dir, "--cpu_processes", "2", "--resume"))
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "resumed from" in second.stdout
    resumed = json.loads((save_dir / "metrics.json").read_text())
    reference = json.loads((spawned[1] / "metrics.json").read_text())
    (history, test), (ref_history, ref_test) = comparable(resumed), comparable(reference)
    for mine, theirs in zip(history, ref_history, strict=True):
        for key in mine:  # the epoch loss is summed over ranks in another order: equal to rounding
            assert mine[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12), key
    assert test == ref_test
