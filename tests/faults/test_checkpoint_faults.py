"""Broken checkpoints and checkpoints that must load (issue 7, items 2, 11 and 12).

Each broken checkpoint gives `evaluate`, `predict` and `train --resume` one line naming the file and
the problem, exit code 2: a 0-byte file, a missing entry, weights of the wrong shape, a schema with
an absurd vocabulary, NaN weights. A model built through the Python API and trained with a default
TrainConfig saves a checkpoint that `ctrkit evaluate` loads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import build_store  # noqa: E402

from ctrkit.cli import main  # noqa: E402
from ctrkit.config import TrainConfig  # noqa: E402
from ctrkit.errors import InputError  # noqa: E402
from ctrkit.pytorch.trainer import Trainer, load_checkpoint, train_from_config  # noqa: E402
from ctrkit.registry import build_torch_model  # noqa: E402

SMALL = {"embed_size": 4, "hidden_units": [16]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("ckpt-faults") / "store.lmdb", train=1000, valid=500, test=500)


@pytest.fixture(scope="module")
def run_dir(store, tmp_path_factory):
    """A finished one-epoch run: best.pt and last.pt to break copies of."""
    save_dir = tmp_path_factory.mktemp("run") / "deepfm"
    train_from_config(TrainConfig(model="deepfm", data=str(store.path), epochs=1, batch_size=256, threads=1,
                                  model_save_dir=str(save_dir), **SMALL))
    return save_dir


def cli(capsys, *argv: str) -> tuple[int, str]:
    """``ctrkit ARGV`` in this process: (exit code, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (code, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---------------------------------------------------------------------------------------------
# the damage, one function each: a copy of a good checkpoint, broken one way
# ---------------------------------------------------------------------------------------------
def _payload(source: Path) -> dict:
    return torch.load(source, map_location="cpu", weights_only=True)


def empty(source: Path, target: Path) -> None:
    target.write_bytes(b"")


def without_schema(source: Path, target: Path) -> None:
    payload = _payload(source)
    del payload["schema"]
    torch.save(payload, target)


def wrong_shape(source: Path, target: Path) -> None:
    payload = _payload(source)
    name = next(k for k in payload["model"] if k.startswith("dnn.") and k.endswith("weight"))
    payload["model"][name] = torch.zeros(3, 5)
    torch.save(payload, target)


def absurd_vocabulary(source: Path, target: Path) -> None:
    # 10^13 rows of a 4-wide float table would be 160 TB: the allocator fails (or worse) if built
    payload = _payload(source)
    payload["schema"]["fields"][0]["vocab_size"] = 10**13
    torch.save(payload, target)


def nan_weights(source: Path, target: Path) -> None:
    payload = _payload(source)
    name = next(k for k in payload["model"] if k.endswith("table.weight"))
    payload["model"][name][3, 0] = float("nan")
    torch.save(payload, target)


DAMAGE = {
    "empty": (empty, "empty (0 bytes)"),
    "without_schema": (without_schema, "no 'schema' entry"),
    "wrong_shape": (wrong_shape, "has shape [3, 5]"),
    "absurd_vocabulary": (absurd_vocabulary, "has shape"),
    "nan_weights": (nan_weights, "NaN or infinite"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_evaluate_refuses_a_broken_checkpoint_in_one_line(capsys, store, run_dir, tmp_path, damage):
    breaks, message = DAMAGE[damage]
    broken = tmp_path / "best.pt"
    breaks(run_dir / "best.pt", broken)
    code, err = cli(capsys, "evaluate", str(broken), "--data", str(store.path))
    one_line_error(code, err, str(broken), message)


@pytest.mark.parametrize("damage", DAMAGE)
def test_predict_refuses_a_broken_checkpoint_in_one_line(capsys, store, run_dir, tmp_path, damage):
    breaks, message = DAMAGE[damage]
    broken = tmp_path / "best.pt"
    breaks(run_dir / "best.pt", broken)
    raw = tmp_path / "rows.tsv"
    raw.write_text("0\t1\n")
    out = tmp_path / "scores.tsv"
    code, err = cli(capsys, "predict", str(broken), str(raw), "--data", str(store.path), "--out", str(out))
    one_line_error(code, err, str(broken), message)
    assert not out.exists()


RESUME_DAMAGE = {
    "empty": (empty, "empty (0 bytes)"),
    "without_schema": (without_schema, "no 'schema' entry"),
    "wrong_shape": (wrong_shape, "has shape [3, 5]"),
    "absurd_vocabulary": (absurd_vocabulary, "different schema"),  # the store's schema is the model's
    "nan_weights": (nan_weights, "NaN or infinite"),
}


@pytest.mark.parametrize("damage", RESUME_DAMAGE)
def test_resume_refuses_a_broken_last_checkpoint_in_one_line(capsys, store, run_dir, tmp_path, damage):
    breaks, message = RESUME_DAMAGE[damage]
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    breaks(run_dir / "last.pt", save_dir / "last.pt")
    before = (save_dir / "last.pt").read_bytes()
    code, err = cli(capsys, "train", "--model", "deepfm", "--data", str(store.path), "--epochs", "2",
                    "--batch_size", "256", "--threads", "1", "--embed_size", "4", "--hidden_units", "16",
                    "--model_save_dir", str(save_dir), "--resume")
    one_line_error(code, err, message)
    assert (save_dir / "last.pt").read_bytes() == before  # nothing overwritten
    assert not (save_dir / "best.pt").exists()


def test_resume_refuses_a_last_checkpoint_without_its_training_state(capsys, store, run_dir, tmp_path):
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    payload = _payload(run_dir / "last.pt")
    del payload["progress"]["step"]
    torch.save(payload, save_dir / "last.pt")
    code, err = cli(capsys, "train", "--model", "deepfm", "--data", str(store.path), "--batch_size", "256",
                    "--threads", "1", "--embed_size", "4", "--hidden_units", "16",
                    "--model_save_dir", str(save_dir), "--resume")
    one_line_error(code, err, str(save_dir / "last.pt"), "lacks step")


def test_load_checkpoint_names_the_non_finite_tensor(run_dir, tmp_path):
    broken = tmp_path / "best.pt"
    nan_weights(run_dir / "best.pt", broken)
    with pytest.raises(InputError, match=r"weight \S*table\.weight holds NaN"):
        Trainer.from_checkpoint(broken)


# ---------------------------------------------------------------------------------------------
# item 12: a Python-API model's checkpoint rebuilds the same model
# ---------------------------------------------------------------------------------------------
def test_python_api_model_with_default_config_saves_a_loadable_checkpoint(capsys, store, tmp_path):
    save_dir = tmp_path / "api"
    torch.manual_seed(0)
    model, _ = build_torch_model("deepfm", store.schema, {"embed_size": 8, "hidden_units": [64]})
    # a default TrainConfig: no model name, no hyper-parameters (only where to save and how long)
    trainer = Trainer(model, TrainConfig(model_save_dir=str(save_dir), epochs=1, threads=1), schema=store.schema)
    metrics = trainer.fit(store)

    expected = {"embed_size": 8, "hidden_units": [64], "dropout": 0.0, "batch_norm": False, "activation": "relu"}
    assert metrics["model"] == "deepfm" and metrics["hparams"] == expected
    assert json.loads((save_dir / "metrics.json").read_text())["hparams"] == expected
    for name in ("best.pt", "last.pt"):
        payload = load_checkpoint(save_dir / name)
        assert payload["model_name"] == "deepfm" and payload["hparams"] == expected

    rebuilt = Trainer.from_checkpoint(save_dir)
    again = rebuilt.evaluate(store, "test")
    assert again["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-12)

    code, err = cli(capsys, "evaluate", str(save_dir), "--data", str(store.path), "--out", str(tmp_path / "e.json"))
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-9)


def test_hand_built_model_that_no_checkpoint_could_describe_is_refused_before_training(store, tmp_path):
    from ctrkit.errors import ConfigError
    from ctrkit.pytorch.models.deepfm import DeepFM

    model = DeepFM(store.schema, embed_size=8, hidden_units=[64])  # no record of its hyper-parameters
    trainer = Trainer(model, TrainConfig(model="deepfm", model_save_dir=str(tmp_path / "run"), epochs=1))
    with pytest.raises(ConfigError, match=r"build it with ctrkit\.registry\.build_torch_model"):
        trainer.fit(store)
    assert not (tmp_path / "run").exists()
