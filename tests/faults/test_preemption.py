"""Preemption (issue 7, item 14): SIGTERM or Ctrl-C during training, then ``--resume``.

The signal finishes the current step, writes ``last.pt`` and exits with 143 (SIGTERM) or 130
(SIGINT) and one line; the resumed run ends with exactly the weights and metrics of a run that was
never interrupted. The training runs in a subprocess (``ctrkit train`` through a small driver whose
step hook sends the signal at a chosen step), so the signal is real and a failure cannot kill pytest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import PYTHON, ROOT, build_store  # noqa: E402

from ctrkit.config import TrainConfig  # noqa: E402
from ctrkit.pytorch.trainer import load_checkpoint, train_from_config  # noqa: E402

STEPS_PER_EPOCH = 8  # 1024 rows, batches of 128
OPTIONS = dict(model="deepfm", epochs=2, batch_size=128, lr=3e-3, threads=1, log_every=3, embed_size=4,
               hidden_units=[16, 16], dropout=0.2, batch_norm=True, patience=5)
TIMING_KEYS = ("seconds", "rows_per_s")

# `ctrkit train ARGS` whose trainer sends the signals NAMES (comma-separated) after step AT, to
# itself, or (GROUP=1) from another process to its whole process group, loader workers included,
# as a scheduler does (torch's workers take a SIGTERM from their own parent as a request to exit)
DRIVER = """
import os, signal, subprocess, sys
from ctrkit.pytorch import trainer as trainer_module
at, names, group, argv = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3] == "1", sys.argv[4:]
original_init = trainer_module.Trainer.__init__

def send_at_step(step):
    if step == at:
        for name in names:
            signum = int(getattr(signal, name))
            if group:
                kill = f"import os; os.killpg({os.getpgid(0)}, {signum})"
                subprocess.run([sys.executable, "-c", kill], check=True, start_new_session=True)
            else:
                os.kill(os.getpid(), signum)

def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    self.step_hook = send_at_step

trainer_module.Trainer.__init__ = init
from ctrkit.cli import main
sys.exit(main(argv))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("preempt") / "store.lmdb", train=1024, valid=512, test=512)


def cli_args(store, save_dir: Path, *extra: str) -> list[str]:
    flags = {**OPTIONS, "hidden_units": "16,16", "batch_norm": None, "data": str(store.path),
             "model_save_dir": str(save_dir)}
    args = ["train"]
    for key, value in flags.items():
        args += [f"--{key}"] + ([] if value is None else [str(value)])
    return args + list(extra)


def run_interrupted(store, save_dir: Path, at: int, *names: str, group: bool = False,
                    extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [PYTHON, "-c", DRIVER, str(at), ",".join(names), "1" if group else "0",
               *cli_args(store, save_dir, *extra)]
    # a session of its own: a signal to its process group never reaches pytest
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=str(ROOT), env=env,
                          start_new_session=True)


def config(store, save_dir: Path, **changes) -> TrainConfig:
    return TrainConfig(**{**OPTIONS, "data": str(store.path), "model_save_dir": str(save_dir), **changes}).validate()


def comparable(metrics: dict) -> dict:
    history = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in metrics["history"]]
    return {"history": history, "test": metrics["test"], "best_epoch": metrics["best_epoch"],
            "best_valid": metrics["best_valid"], "steps": metrics["steps"], "stopped": metrics["stopped"]}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    metrics = train_from_config(config(store, save_dir))
    return comparable(metrics), weights(save_dir / "last.pt"), weights(save_dir / "best.pt")


def assert_same_run(store, save_dir: Path, uninterrupted, **changes) -> None:
    """``--resume`` from ``save_dir`` ends exactly as the uninterrupted run did."""
    metrics = train_from_config(config(store, save_dir, resume=True, **changes))
    expected_metrics, expected_last, expected_best = uninterrupted
    assert comparable(metrics) == expected_metrics
    for expected, path in ((expected_last, save_dir / "last.pt"), (expected_best, save_dir / "best.pt")):
        got = weights(path)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), path.name


@pytest.mark.parametrize("name, at, code, where", [
    ("SIGTERM", 5, 143, "epoch 1, step 5"),  # mid-epoch
    ("SIGINT", STEPS_PER_EPOCH, 130, "epoch 1, step 8"),  # the epoch's last step, before its validation
    ("SIGTERM", STEPS_PER_EPOCH + 2, 143, "epoch 2, step 10"),
])
def test_signal_saves_last_and_resume_is_exact(store, tmp_path, uninterrupted, name, at, code, where):
    save_dir = tmp_path / "run"
    result = run_interrupted(store, save_dir, at, name)
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"ctrkit train: interrupted by {name} at {where}; last.pt saved; continue with --resume")
    assert "Traceback" not in result.stderr
    assert load_checkpoint(save_dir / "last.pt")["progress"]["step"] == at
    assert json.loads((save_dir / "metrics.json").read_text())["stopped"] == "interrupted"
    assert not [p for p in save_dir.iterdir() if ".tmp-" in p.name]
    assert_same_run(store, save_dir, uninterrupted)


def test_a_second_signal_stops_at_once_and_damages_nothing(store, tmp_path, uninterrupted):
    """SIGTERM then SIGINT at step 11: no save at step 11; the epoch-end last.pt (step 8) is intact."""
    save_dir = tmp_path / "run"
    result = run_interrupted(store, save_dir, STEPS_PER_EPOCH + 3, "SIGTERM", "SIGINT")
    assert result.returncode == 128 + signal.SIGINT, result.stderr
    assert "interrupted again by SIGINT while stopping" in result.stderr.splitlines()[-1]
    assert load_checkpoint(save_dir / "last.pt")["progress"]["step"] == STEPS_PER_EPOCH
    assert not [p for p in save_dir.iterdir() if ".tmp-" in p.name]
    assert_same_run(store, save_dir, uninterrupted)


def test_sigterm_to_the_whole_process_group_with_loader_workers(store, tmp_path, uninterrupted):
    """A scheduler signals every process of the job: the loader workers must not die of it first
    (torch would then raise "DataLoader worker is killed by signal" in the middle of a step)."""
    save_dir = tmp_path / "run"
    result = run_interrupted(store, save_dir, 6, "SIGTERM", group=True, extra=("--num_workers", "2"))
    assert result.returncode == 143, result.stderr
    assert result.stderr.splitlines()[-1] == ("ctrkit train: interrupted by SIGTERM at epoch 1, step 6; "
                                              "last.pt saved; continue with --resume")
    assert load_checkpoint(save_dir / "last.pt")["progress"]["step"] == 6
    assert_same_run(store, save_dir, uninterrupted, num_workers=2)
