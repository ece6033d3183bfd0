"""Faults of a training run (issue 7): divergence (item 2), the wrong run overwritten (item 6),
debris of killed runs (item 8), disk full and bad paths (item 13), out-of-range ids given to
``Trainer.predict`` (smaller defects)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import PYTHON, ROOT, build_store  # noqa: E402
from _train_helpers import run_in_process as cli

from ctrkit.config import TrainConfig  # noqa: E402
from ctrkit.errors import ConfigError, InputError  # noqa: E402
from ctrkit import metrics as metrics_module  # noqa: E402
from ctrkit.pytorch.trainer import (  # noqa: E402
    Trainer,
    TrainingDivergedError,
    is_improvement,
    load_checkpoint,
    train_from_config,
)
from ctrkit.registry import build_torch_model  # noqa: E402

SMALL = {"embed_size": 4, "hidden_units": [16]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("train-faults") / "store.lmdb", train=1024, valid=512, test=512)


def config(store, save_dir, **options) -> TrainConfig:
    base = dict(model="deepfm", data=str(store.path), epochs=1, batch_size=128, lr=3e-3, threads=1, log_every=5,
                model_save_dir=str(save_dir), **SMALL)
    return TrainConfig(**{**base, **options}).validate()


def train_args(store, save_dir, *extra: str) -> list[str]:
    return ["train", "--model", "deepfm", "--data", str(store.path), "--epochs", "1", "--batch_size", "128",
            "--threads", "1", "--embed_size", "4", "--hidden_units", "16", "--model_save_dir", str(save_dir), *extra]


def error_line(code: int, err: str) -> str:
    """The one error line of a failed command (exit code 2, no traceback)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


def all_finite(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------------------------
# item 2: divergence
# ---------------------------------------------------------------------------------------------
def test_exploding_sgd_stops_with_one_line_and_writes_no_nan_checkpoint(capsys, store, tmp_path):
    save_dir = tmp_path / "run"
    code, _, err = cli(capsys, *train_args(store, save_dir, "--optimizer", "SGD", "--lr", "10000"))
    line = error_line(code, err)
    assert "training diverged" in line and "epoch 1, step" in line and "--lr 10000" in line
    for name in ("best.pt", "last.pt"):
        assert not (save_dir / name).exists() or all_finite(save_dir / name)
    assert json.loads((save_dir / "metrics.json").read_text())["stopped"] == "diverged"


def test_divergence_mid_run_keeps_the_last_finite_checkpoint(store, tmp_path):
    """Weights turn infinite at step 4 (a stand-in for an exploding update); last.pt of step 3 survives."""
    save_dir = tmp_path / "run"
    cfg = config(store, save_dir, checkpoint_every=3, log_every=100)
    torch.manual_seed(cfg.seed)
    model, _ = build_torch_model("deepfm", store.schema, cfg.hparams())
    trainer = Trainer(model, cfg, schema=store.schema)

    def explode(step):
        if step == 4:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))

    trainer.step_hook = explode
    with pytest.raises(TrainingDivergedError, match=r"loss became nan by epoch 1, step 6 .*last\.pt \(epoch 1, step 3\)"):
        trainer.fit(store)
    assert load_checkpoint(save_dir / "last.pt")["progress"]["step"] == 3  # it loads: finite weights
    assert not (save_dir / "best.pt").exists()


def test_non_finite_weights_at_an_epoch_end_are_never_saved(store, tmp_path):
    """NaN weights after the epoch's last step: the loss so far is finite, the checkpoint check catches them."""
    save_dir = tmp_path / "run"
    cfg = config(store, save_dir, log_every=100)
    torch.manual_seed(cfg.seed)
    model, _ = build_torch_model("deepfm", store.schema, cfg.hparams())
    trainer = Trainer(model, cfg, schema=store.schema)
    steps = math.ceil(1024 / 128)

    def poison(step):
        if step == steps:
            with torch.no_grad():
                next(model.parameters())[0] = float("nan")

    trainer.step_hook = poison
    with pytest.raises(TrainingDivergedError, match="became NaN or infinite by the end of epoch 1, step 8 .*"
                                                    "no checkpoint was written"):
        trainer.fit(store)
    assert not (save_dir / "best.pt").exists() and not (save_dir / "last.pt").exists()


def test_non_finite_validation_scores_never_count_as_an_improvement(store, tmp_path, monkeypatch):
    real = metrics_module.binary_metrics
    scores = iter([(0.60, 0.60), (0.70, float("nan")), (float("nan"), 0.5)])

    def fake(labels, probs):  # validation of epochs 1-3; the test split keeps its real metrics
        metrics = real(labels, probs)
        if len(labels) == 512 and not getattr(fake, "done", False):
            try:
                metrics["auc"], metrics["logloss"] = next(scores)
            except StopIteration:
                fake.done = True
        return metrics

    monkeypatch.setattr(metrics_module, "binary_metrics", fake)  # what the training loop's evaluation calls
    metrics = train_from_config(config(store, tmp_path / "run", epochs=3, patience=5))
    assert [h["improved"] for h in metrics["history"]] == [True, False, False]
    assert metrics["best_epoch"] == 1
    assert not is_improvement({"auc": math.inf, "logloss": 0.1}, 0.5)
    assert is_improvement({"auc": 0.51, "logloss": 0.7}, 0.5)


def test_a_loss_far_above_the_base_rate_gets_a_warning_not_a_failure(capsys, store, tmp_path):
    code, out, err = cli(capsys, *train_args(store, tmp_path / "run", "--lr", "10"))
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning: epoch 1 train_loss")]
    assert warning and "probably too high" in warning[0] and "--lr 10" in warning[0]
    calm_code, _, calm_err = cli(capsys, *train_args(store, tmp_path / "calm"))
    assert calm_code == 0 and "train_loss" not in calm_err


# ---------------------------------------------------------------------------------------------
# item 6: a run directory that holds a previous run
# ---------------------------------------------------------------------------------------------
def test_a_previous_run_needs_resume_or_overwrite(capsys, store, tmp_path):
    save_dir = tmp_path / "run"
    code, _, err = cli(capsys, *train_args(store, save_dir))
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in save_dir.iterdir() if p.is_file()}
    events = sorted((save_dir / "tensorboard").iterdir())
    old_events = {p.read_bytes() for p in events}

    code, _, err = cli(capsys, *train_args(store, save_dir, "--model", "lr"))
    line = error_line(code, err)
    assert f"{save_dir} holds a finished deepfm run (" in line
    assert "last.pt, metrics.json, tensorboard, test_predictions.npz)" in line
    assert "pass --resume to continue it or --overwrite to replace it" in line
    assert {p.name: p.read_bytes() for p in save_dir.iterdir() if p.is_file()} == before
    assert sorted((save_dir / "tensorboard").iterdir()) == events

    code, out, err = cli(capsys, *train_args(store, save_dir, "--model", "lr", "--overwrite"))
    assert code == 0, err
    assert "--overwrite: removed the previous run's best.pt, last.pt, metrics.json, tensorboard, test_predictions.npz" in out
    assert json.loads((save_dir / "metrics.json").read_text())["model"] == "lr"
    assert load_checkpoint(save_dir / "best.pt")["model_name"] == "lr"
    renewed = sorted((save_dir / "tensorboard").iterdir())
    assert len(renewed) == 2 and not {p.read_bytes() for p in renewed} & old_events  # the new run's scalars and HParams alone

    code, _, err = cli(capsys, *train_args(store, save_dir, "--model", "lr", "--overwrite", "--resume"))
    assert "--resume and --overwrite exclude each other" in error_line(code, err)


def test_overwrite_is_a_yaml_key_too(capsys, store, tmp_path):
    save_dir = tmp_path / "run"
    assert cli(capsys, *train_args(store, save_dir))[0] == 0
    run_file = tmp_path / "run.yaml"
    run_file.write_text("overwrite: true\n")
    code, _, err = cli(capsys, *train_args(store, save_dir, "--config", str(run_file)))
    assert code == 0, err


def test_python_api_refuses_to_train_over_a_previous_run(store, tmp_path):
    save_dir = tmp_path / "run"
    train_from_config(config(store, save_dir))
    model, _ = build_torch_model("lr", store.schema)
    with pytest.raises(ConfigError, match="holds a finished deepfm run"):
        Trainer(model, config(store, save_dir, model="lr")).fit(store)
    assert load_checkpoint(save_dir / "best.pt")["model_name"] == "deepfm"


def test_an_empty_or_unrelated_directory_is_fine(capsys, store, tmp_path):
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    (save_dir / "notes.txt").write_text("mine\n")
    code, _, err = cli(capsys, *train_args(store, save_dir))
    assert code == 0, err
    assert (save_dir / "notes.txt").read_text() == "mine\n"


def test_two_trainings_into_one_directory_fail_clearly(capsys, store, tmp_path):
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    holder = subprocess.Popen(
        [PYTHON, "-c", "import sys, time; from ctrkit.fileio import target_lock\n"
                       f"with target_lock({str(save_dir)!r}, 'training'):\n"
                       "    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = cli(capsys, *train_args(store, save_dir))
        line = error_line(code, err)
        assert f"is being written by ctrkit pid {holder.pid} (training)" in line
        assert list(save_dir.iterdir()) == []
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------------------------
# item 8: debris of killed runs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resume", [False, True])
def test_debris_of_a_killed_run_is_removed_at_the_start(capsys, store, tmp_path, resume):
    save_dir = tmp_path / "run"
    if resume:
        assert cli(capsys, *train_args(store, save_dir, "--max_steps", "3"))[0] == 0
    save_dir.mkdir(exist_ok=True)
    pid = dead_pid()
    debris = save_dir / f".last.pt.tmp-{pid}"
    debris.write_bytes(b"half a checkpoint" * 1000)
    live = save_dir / f".best.pt.tmp-{os.getppid()}"  # a live writer's file is not debris
    live.write_bytes(b"still being written")
    code, out, err = cli(capsys, *train_args(store, save_dir, *(["--resume"] if resume else [])))
    assert code == 0, err
    assert not debris.exists() and live.exists()
    assert f"removed {debris} (0.0 MB), left by a killed run" in out


# ---------------------------------------------------------------------------------------------
# item 13: disk full, bad paths, bad run files
# ---------------------------------------------------------------------------------------------
def _fill(directory: Path, leave_bytes: int = 0) -> None:
    """Fill ``directory``'s file system until at most ``leave_bytes`` are free."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize - leave_bytes
    if free > 0:
        with open(directory / ".ballast", "wb") as handle:
            try:
                handle.write(b"\0" * free)
            except OSError:
                pass


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoints(capsys, store, full_disk):
    save_dir = full_disk(4096) / "run"
    big = ["--embed_size", "16", "--hidden_units", "256,256"]  # last.pt about 1 MB with Adam's state
    code, _, err = cli(capsys, *train_args(store, save_dir, "--epochs", "2", "--max_steps", "10", *big))
    assert code == 0, err
    before = {name: (save_dir / name).read_bytes() for name in ("best.pt", "last.pt")}
    _fill(save_dir.parent, leave_bytes=64 * 1024)

    code, _, err = cli(capsys, *train_args(store, save_dir, "--epochs", "2", "--resume", *big))
    line = error_line(code, err)
    assert "no space left on device" in line
    assert "the previous last.pt (epoch 2, step 10) and best.pt (epoch 1) are intact" in line
    assert {name: (save_dir / name).read_bytes() for name in before} == before
    assert not [p for p in save_dir.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("where", ["file", "file/sub", "/proc/ctrkit-run"])
def test_bad_model_save_dir_is_one_line_before_training(capsys, store, tmp_path, where):
    (tmp_path / "file").write_text("a file\n")
    save_dir = where if where.startswith("/") else str(tmp_path / where)
    code, out, err = cli(capsys, *train_args(store, Path(save_dir)))
    line = error_line(code, err)
    assert f"--model_save_dir {save_dir}" in line
    assert "epoch 1/1" not in out


@pytest.mark.parametrize("content, message", [
    (b"\x7fELF\x02\x01\x01\x00\x00\x00", "is a binary file"),
    (b"model: deepfm\nlr: 0.1 \xe9\n", "is not UTF-8 text (byte 0xe9 on line 2)"),
    (b"- deepfm\n- 0.1\n", "expected a mapping"),
])
def test_a_config_file_that_is_not_a_yaml_mapping_is_one_line(capsys, store, tmp_path, content, message):
    run_file = tmp_path / "run.bin"
    run_file.write_bytes(content)
    code, _, err = cli(capsys, *train_args(store, tmp_path / "run", "--config", str(run_file)))
    line = error_line(code, err)
    assert f"--config {run_file}" in line and message in line


# ---------------------------------------------------------------------------------------------
# smaller defect: FieldEmbedding reads another field's rows for an out-of-range id
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("as_tensors", [False, True])
def test_predict_refuses_an_id_outside_its_fields_vocabulary(store, as_tensors):
    model, _ = build_torch_model("deepfm", store.schema, SMALL)
    trainer = Trainer(model, TrainConfig(model="deepfm").validate(), schema=store.schema)
    batch = {"sparse": np.zeros((4, 5), dtype=np.int32), "dense": np.zeros((4, 2), dtype=np.float32)}
    good = trainer.predict([batch])
    assert good.shape == (4,)
    batch["sparse"][2, 1] = store.schema.vocab_sizes[1]  # one past C2's last id: C3's first row
    if as_tensors:
        batch = {k: torch.from_numpy(v) for k, v in batch.items()}
    with pytest.raises(InputError, match=r"batch 1 given to predict: field C2 has id 30 in row 2"):
        trainer.predict([{k: v[:2] for k, v in batch.items()}, batch])
