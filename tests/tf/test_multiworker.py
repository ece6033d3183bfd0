"""``ctrkit train --framework tf`` on two workers through ``TF_CONFIG`` (MultiWorkerMirroredStrategy).

Two local worker processes on loopback (free ports, one ``TF_CONFIG`` each) train DeepFM on a tiny
store, are stopped mid-epoch by ``--max_steps`` and resumed from the chief's ``last.tf``; their
final weights are compared with each other (bitwise) and with a single-process MirroredStrategy
run over two logical CPUs with the same global batch (the same rows per replica and step), and
the run directory is checked for what the chief alone wrote.

Each worker runs the real CLI in a child whose only addition is a wrapper around
``Trainer.fit`` that saves the final weights to the ``.npz`` file given as the child's first
argument (nothing in ctrkit reads a test-only setting).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("safetensors")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import PYTHON, ROOT, build_store, free_loopback_ports  # noqa: E402

from ctrkit.config import TrainConfig  # noqa: E402
from ctrkit.errors import ConfigError  # noqa: E402
from ctrkit.training.frameworks import train_from_config  # noqa: E402

TIMEOUT = 150

DUMPING_CLI = """
import sys
import numpy as np
import ctrkit.tensorflow.trainer as trainer_module

dump, argv = sys.argv[1], sys.argv[2:]
fit = trainer_module.Trainer.fit

def fit_and_dump(self, store):
    metrics = fit(self, store)
    weights, _ = trainer_module.model_tensors(self.model)
    np.savez(dump, **{name.replace("/", "|"): value for name, value in weights.items()})
    return metrics

trainer_module.Trainer.fit = fit_and_dump
from ctrkit.cli import main
sys.exit(main(argv))
"""


def child_env(tf_config: dict | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def start(dump: Path, args: list[str], tf_config: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-c", DUMPING_CLI, str(dump), *args], cwd=str(ROOT), env=child_env(tf_config),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> list[tuple[str, str]]:
    """Wait for every process (all killed once one is late); their (stdout, stderr), all exit 0."""
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        errors = "\n---\n".join(p.communicate()[1][-2000:] for p in procs)
        pytest.fail(f"the workers did not finish within {TIMEOUT} s:\n{errors}")
    for i, (p, (_, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} failed (exit {p.returncode}):\n{err[-3000:]}"
    return outs


def run_two_workers(tmp_path: Path, args: list[str], tag: str) -> list[tuple[str, str]]:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_loopback_ports(2)]}
    procs = [start(tmp_path / f"{tag}{i}.npz", args, {"cluster": cluster, "task": {"type": "worker", "index": i}})
             for i in range(2)]
    return finish(procs)


def weights(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def train_args(store: Path, save_dir: Path, *extra: str) -> list[str]:
    return ["train", "--framework", "tf", "--model", "deepfm", "--data", str(store), "--epochs", "2",
            "--batch_size", "200", "--lr", "0.003", "--embed_size", "4", "--hidden_units", "16,16",
            "--threads", "1", "--log_every", "4", "--seed", "11", "--model_save_dir", str(save_dir), *extra]


@pytest.mark.slow
def test_two_workers_train_resume_and_match_one_process_of_two_replicas(tmp_path):
    store = build_store(tmp_path / "s.lmdb", train=2000, valid=600, test=600, chunk_rows=200).path
    run = tmp_path / "run"
    # 2000 rows, global batch 200: 10 steps an epoch; stopped at step 13 (epoch 2, batch 3), then resumed
    first = run_two_workers(tmp_path, train_args(store, run, "--max_steps", "13"), "first")
    assert (run / "last.tf").is_file() and (run / "best.tf").is_file()
    mirrored = start(tmp_path / "mirrored.npz", train_args(store, tmp_path / "mirrored", "--cpu_processes", "2"))
    resumed = run_two_workers(tmp_path, train_args(store, run, "--resume"), "resumed")
    finish([mirrored])

    # the chief alone prints and writes; the run directory holds one run's files
    assert "resumed from" in resumed[0][0] and "epoch 2/2" in resumed[0][0]
    assert first[1][0].strip() == resumed[1][0].strip() == ""
    listing = sorted(p.name for p in run.iterdir())
    assert {"best.tf", "last.tf", "metrics.json"} <= set(listing)
    assert listing == sorted(p.name for p in (tmp_path / "mirrored").iterdir())  # what one process writes
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "first0.npz", "first1.npz", "mirrored", "mirrored.npz", "resumed0.npz", "resumed1.npz", "run", "s.lmdb"]

    # every worker ends with the same weights, bit for bit (the best epoch's, loaded after training)
    chief, other = weights(tmp_path / "resumed0.npz"), weights(tmp_path / "resumed1.npz")
    assert chief.keys() == other.keys() and chief
    assert all(np.array_equal(chief[k], other[k]) for k in chief)

    # the same rows per replica and step as MirroredStrategy over two logical CPUs of one process
    single = weights(tmp_path / "mirrored.npz")
    assert single.keys() == chief.keys()
    moved = max(float(np.abs(single[k] - weights(tmp_path / "first0.npz")[k]).max()) for k in single)
    assert moved > 1e-4  # the second part of the run changed the weights: the comparison can fail
    diff = max(float(np.abs(single[k] - chief[k]).max()) for k in single)
    assert diff < 1e-5, diff
    metrics = json.loads((run / "metrics.json").read_text())
    expected = json.loads((tmp_path / "mirrored" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == expected["steps"] == 20
    assert metrics["best_epoch"] == expected["best_epoch"]
    assert metrics["test"]["rows"] == expected["test"]["rows"] == 600  # the shards gathered: every row once
    for key in ("best_valid", "test"):
        assert metrics[key]["auc"] == pytest.approx(expected[key]["auc"], abs=1e-5)
        assert metrics[key]["logloss"] == pytest.approx(expected[key]["logloss"], abs=1e-5)
    assert metrics["test"]["auc"] > 0.7


TWO_WORKERS = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}


@pytest.mark.parametrize("tf_config, options, message", [
    ({"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "ps", "index": 0}}, {},
     "TF_CONFIG: ctrkit trains with chief and worker tasks only"),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}, {},
     "TF_CONFIG: task index 2 is not among the 2 worker address"),
    (TWO_WORKERS, {"cpu_processes": 2}, "--cpu_processes cannot be combined with TF_CONFIG"),
])
def test_a_cluster_that_cannot_train_is_one_line_and_writes_nothing(tmp_path, monkeypatch, tf_config, options, message):
    """Refused before TensorFlow starts waiting for the other workers (none of these addresses listens)."""
    store = build_store(tmp_path / "s.lmdb", train=200, valid=100, test=0, chunk_rows=100).path
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    config = TrainConfig(model="lr", framework="tf", data=str(store), epochs=1, model_save_dir=str(tmp_path / "run"),
                         **options).validate()
    with pytest.raises(ConfigError, match=message) as info:
        train_from_config(config)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()
