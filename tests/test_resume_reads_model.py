"""``ctrkit train --resume --model_save_dir DIR``: the model, framework, options and store come from
the run's ``last`` checkpoint (ctrkit.config.resume_options)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import build_store  # noqa: E402
from _train_helpers import run_in_process as cli


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("resume") / "store.lmdb", train=2000, valid=500, test=500)


def first_run(capsys, store, save_dir: Path, framework: str, *extra: str) -> dict:
    code, _, err = cli(capsys, "train", "--model", "deepfm", "--framework", framework, "--data", str(store.path),
                       "--epochs", "1", "--batch_size", "250", "--embed_size", "4", "--hidden_units", "8",
                       "--lr", "0.003", "--seed", "7", "--threads", "1", "--model_save_dir", str(save_dir), *extra)
    assert code == 0, err
    return json.loads((save_dir / "metrics.json").read_text())


@pytest.mark.parametrize("framework", ["torch", pytest.param("tf", marks=pytest.mark.slow)])
def test_resume_without_model_or_data_continues_the_run(capsys, store, tmp_path, framework):
    if framework == "tf":
        pytest.importorskip("tensorflow")
    save_dir = tmp_path / "run"
    first = first_run(capsys, store, save_dir, framework)
    assert len(first["history"]) == 1
    code, out, err = cli(capsys, "train", "--resume", "--model_save_dir", str(save_dir), "--epochs", "2")
    assert code == 0, err
    last = "last.tf" if framework == "tf" else "last.pt"
    note = next(line for line in err.splitlines() if line.startswith("note: --resume"))
    assert f"{save_dir / last}: model deepfm, --framework {framework}" in note and f"--data {store.path}" in note
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["history"][0] == first["history"][0]  # the first epoch is the first run's
    assert metrics["hparams"] == first["hparams"] and metrics["hparams"]["embed_size"] == 4
    other = "last.pt" if framework == "tf" else "last.tf"
    assert (save_dir / last).exists() and not (save_dir / other).exists()  # continued in its own framework
    assert "test auc" in out


def test_resume_after_max_steps_does_not_inherit_the_limit(capsys, store, tmp_path):
    save_dir = tmp_path / "run"
    first_run(capsys, store, save_dir, "torch", "--max_steps", "3")
    code, _, err = cli(capsys, "train", "--resume", "--model_save_dir", str(save_dir))
    assert code == 0, err
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert metrics["stopped"] != "max_steps" and len(metrics["history"]) == 1  # the epoch was finished


def test_contradictions_and_missing_pieces_are_one_line_errors(capsys, store, tmp_path):
    save_dir = tmp_path / "run"
    first_run(capsys, store, save_dir, "torch")
    cases = [
        (["--model", "dcn"], f"--resume: {save_dir / 'last.pt'} holds a deepfm model, not --model dcn"),
        (["--framework", "tf"], f"--resume: {save_dir / 'last.pt'} is a PyTorch checkpoint and this is a "
                                "--framework tf run"),
        (["--embed_size", "8"], "was trained with embed_size 4"),  # a flag given still overrides, and is checked
    ]
    for extra, message in cases:
        if extra[:2] == ["--framework", "tf"]:
            pytest.importorskip("tensorflow")
        code, _, err = cli(capsys, "train", "--resume", "--model_save_dir", str(save_dir), *extra)
        lines = [line for line in err.splitlines() if line.startswith("ctrkit train: error:")]
        assert code == 2 and len(lines) == 1 and message in lines[0], err

    # the store the run was trained on is gone: say so, and that --data STORE fixes it
    moved = tmp_path / "moved.lmdb"
    shutil.copytree(store.path, moved)
    other = tmp_path / "other"
    code, _, err = cli(capsys, "train", "--model", "lr", "--data", str(moved), "--epochs", "1", "--batch_size", "500",
                       "--threads", "1", "--model_save_dir", str(other))
    assert code == 0, err
    shutil.rmtree(moved)
    code, _, err = cli(capsys, "train", "--resume", "--model_save_dir", str(other), "--epochs", "2")
    assert code == 2 and f"--data not given, and the store {other / 'last.pt'} was trained on, {moved}, is gone; " \
                          "pass --data STORE" in err, err
    code, _, err = cli(capsys, "train", "--resume", "--model_save_dir", str(other), "--epochs", "2",
                       "--data", str(store.path))
    assert code == 0, err

    # no checkpoint at all, and no directory named
    code, _, err = cli(capsys, "train", "--resume", "--model_save_dir", str(tmp_path / "empty"))
    assert code == 2 and f"--resume: no checkpoint to resume from at {tmp_path / 'empty' / 'last.pt'}" in err
    code, _, err = cli(capsys, "train", "--resume", "--data", str(store.path))
    assert code == 2 and "--resume needs --model_save_dir DIR" in err


def test_python_api_resume_takes_the_runs_options(store, tmp_path):
    import ctrkit
    from ctrkit.errors import ConfigError

    save_dir = tmp_path / "run"
    first = ctrkit.train("fm", store, epochs=1, batch_size=500, embed_size=3, lr=0.01, threads=1,
                         model_save_dir=str(save_dir))
    run = ctrkit.train("fm", store, resume=True, epochs=2, threads=1, model_save_dir=str(save_dir))
    assert (run.config.embed_size, run.config.batch_size, run.config.lr) == (3, 500, 0.01)
    assert [h["epoch"] for h in run.metrics["history"]] == [1, 2]
    assert run.metrics["history"][0] == first.metrics["history"][0]
    with pytest.raises(ConfigError, match="holds a fm model, not --model deepfm"):
        ctrkit.train("deepfm", store, resume=True, epochs=3, model_save_dir=str(save_dir))
