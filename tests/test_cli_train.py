"""``ctrkit train``, ``ctrkit evaluate`` and ``ctrkit predict`` from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import build_store, run_cli  # noqa: E402
from _train_helpers import run_in_process as cli

from ctrkit.cli import main  # noqa: E402
from ctrkit.metrics import auc, logloss  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("cli") / "store.lmdb")


def debris(directory: Path) -> list[Path]:
    """Hidden temporary files left in ``directory``; the lock file beside a run directory is no debris.

    (``.RUN.lock`` stays by design: removing a lock file would let a waiting process lock an
    unlinked file; see ``ctrkit.fileio.target_lock``.)
    """
    return [p for p in directory.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


# ---------------------------------------------------------------------------------------------
# bad flags: exit code 2, one line naming the flag, nothing written
# ---------------------------------------------------------------------------------------------
def _incomplete_store(path: Path) -> Path:
    env = lmdb.open(str(path), subdir=True, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"chunk/train/00000000", b"x")
    env.close()
    return path


BAD = [
    (["--lr", "-1"], "--lr must be > 0, got -1"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--hidden_units", "400,x"], "--hidden_units"),
    (["--optimizer", "rmsprop"], "--optimizer must be one of Adam, AdamW, Adagrad, SGD"),
    (["--batch_size", "0"], "--batch_size"),
    (["--epochs", "-2"], "--epochs"),
    (["--embed_size", "0"], "--embed_size must be > 0, got 0"),
    (["--cross_layers", "0"], "--cross_layers must be > 0, got 0"),
    (["--model", "dnn", "--hidden_units", ""], "--hidden_units must list at least one layer size for --model dnn"),
    (["--cin_layer_units", ""], "--cin_layer_units must list at least one layer size"),
    (["--cin_layer_units", "5,4"], "--cin_layer_units must be even except the last"),
    (["--precision", "fp8"], "--precision"),
    (["--loss", "hinge"], "--loss"),
    (["--framework", "tf", "--gpu_ids", "99"], "--gpu_ids 99"),  # TensorFlow's own device check
    (["--gpu_ids", "99"], "--gpu_ids 99"),
    (["--gpu_ids", "x"], "--gpu_ids"),
    (["--cpu_processes", "2", "--batch_size", "3"], "--batch_size 3 must be divisible"),
    (["--model", "nosuchmodel"], "known models: lr, dnn, fm, ffm, deepfm"),
    (["--resume"], "--resume: no checkpoint"),
    (["--model_args", "activation=bogus"], "activation"),
    (["--patience", "-1"], "--patience"),
    (["--max_steps", "ten"], "--max_steps"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flag_exits_2_with_one_line_before_writing(capsys, store, tmp_path, extra, message):
    save_dir = tmp_path / "ckpt"
    code, out, err = cli(capsys, "train", "--model", "deepfm", "--data", str(store.path), "--epochs", "1",
                         "--model_save_dir", str(save_dir), *extra)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ctrkit train: error: ") and message in lines[0]
    assert not save_dir.exists()
    assert list(tmp_path.iterdir()) == []


def test_store_errors_and_missing_required_flags(capsys, tmp_path):
    save_dir = tmp_path / "ckpt"
    cases = [
        (["--model", "deepfm", "--data", str(tmp_path / "absent.lmdb")], "--data: no store at"),
        (["--model", "deepfm", "--data", str(_incomplete_store(tmp_path / "half.lmdb"))], "incomplete store"),
        (["--data", str(tmp_path / "absent.lmdb")], "--model is required"),
        (["--model", "deepfm"], "--data STORE is required"),
    ]
    for argv, message in cases:
        code, _, err = cli(capsys, "train", *argv, "--model_save_dir", str(save_dir))
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
        assert not save_dir.exists()


def test_yaml_unknown_key_is_reported(capsys, store, tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"model: deepfm\ndata: {store.path}\nlearning_speed: 0.1\n")  # neither ctrkit's nor FuxiCTR's
    code, _, err = cli(capsys, "train", "--config", str(run_file), "--model_save_dir", str(tmp_path / "ckpt"))
    assert code == 2 and "unknown option(s) learning_speed" in err and str(run_file) in err
    assert not (tmp_path / "ckpt").exists()


# ---------------------------------------------------------------------------------------------
# end to end: synthetic Criteo -> preprocess -> train -> evaluate -> predict
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
    """A store built from raw synthetic Criteo files (the test split is an explicit labeled file)."""
    from ctrkit.data.synthetic import write_synthetic_criteo

    root = tmp_path_factory.mktemp("criteo")
    write_synthetic_criteo(root / "train.tsv", rows=4000, seed=1)
    write_synthetic_criteo(root / "test.tsv", rows=500, seed=2)
    write_synthetic_criteo(root / "unlabeled.tsv", rows=300, seed=3, unlabeled=True)
    code = main(["preprocess", "criteo", str(root / "train.tsv"), "--test", str(root / "test.tsv"),
                 "--out", str(root / "store.lmdb"), "--min-count", "2", "--chunk-rows", "1000"])
    assert code in (0, None)
    return root


def test_train_evaluate_predict_round_trip(capsys, criteo, tmp_path):
    store, save_dir = criteo / "store.lmdb", tmp_path / "DeepFM"
    result = run_cli("train", "--model", "deepfm", "--data", str(store), "--epochs", "1", "--batch_size", "256",
                     "--optimizer", "adam", "--loss", "BCE", "--gpu_ids", "", "--lr", "0.003", "--embed_size", "4",
                     "--hidden_units", "16", "--threads", "1", "--cross_layers", "2", "--model_save_dir", str(save_dir))
    assert result.returncode == 0, result.stderr
    assert "--cross_layers" in result.stderr and "warning" in result.stderr  # ignored by DeepFM
    assert "epoch 1/1" in result.stdout and "test auc" in result.stdout
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert metrics["model"] == "deepfm" and metrics["test"]["rows"] == 500

    code, out, _ = cli(capsys, "evaluate", str(save_dir), "--data", str(store), "--out", str(tmp_path / "eval.json"))
    assert code == 0 and "auc" in out
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    assert evaluated["logloss"] == pytest.approx(metrics["test"]["logloss"], abs=1e-6)

    # labeled raw test file: the scores reproduce the evaluated metrics
    scores_path = tmp_path / "scores.tsv"
    code, _, err = cli(capsys, "predict", str(save_dir / "best.pt"), str(criteo / "test.tsv"), "--data", str(store),
                       "--out", str(scores_path))
    assert code == 0, err
    scores = np.loadtxt(scores_path)
    labels = np.array([float(line.split("\t", 1)[0]) for line in (criteo / "test.tsv").read_text().splitlines()])
    assert scores.shape == (500,) and ((scores > 0) & (scores < 1)).all()
    assert auc(labels, scores) == pytest.approx(evaluated["auc"], abs=1e-6)
    assert logloss(labels, scores) == pytest.approx(evaluated["logloss"], abs=1e-5)

    # unlabeled (39-field) raw file: one probability per row
    code, _, err = cli(capsys, "predict", str(save_dir), str(criteo / "unlabeled.tsv"), "--data", str(store),
                       "--out", str(tmp_path / "unlabeled_scores.tsv"))
    assert code == 0, err
    assert len((tmp_path / "unlabeled_scores.tsv").read_text().splitlines()) == 300
    assert not debris(tmp_path)


def test_predict_malformed_row_skipped_or_stopped_by_strict(capsys, criteo, tmp_path, store):
    from ctrkit.pytorch.trainer import train_from_config
    from ctrkit.config import TrainConfig

    save_dir = tmp_path / "m"
    train_from_config(TrainConfig(model="lr", data=str(criteo / "store.lmdb"), epochs=1, batch_size=512,
                                  threads=1, model_save_dir=str(save_dir)))
    lines = (criteo / "unlabeled.tsv").read_text().splitlines()
    lines[4] = "\t".join(lines[4].split("\t")[:20])  # a row cut short
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.tsv"
    code, _, err = cli(capsys, "predict", str(save_dir), str(bad), "--data", str(criteo / "store.lmdb"),
                       "--out", str(out))
    assert code == 0 and "1 malformed rows skipped (first: bad.tsv:5" in err, err
    scores = out.read_text().splitlines()
    assert len(scores) == len(lines) and scores[4] == "nan" and "nan" not in scores[:4] + scores[5:]
    out.unlink()
    code, _, err = cli(capsys, "predict", str(save_dir), str(bad), "--data", str(criteo / "store.lmdb"),
                       "--out", str(out), "--strict")
    assert code == 2 and "bad.tsv:5" in err, err
    assert not out.exists() and not debris(tmp_path)

    # a checkpoint evaluated on a store of another schema is refused
    code, _, err = cli(capsys, "evaluate", str(save_dir), "--data", str(store.path))
    assert code == 2 and "different schema" in err


def test_evaluate_and_predict_errors(capsys, store, tmp_path):
    code, _, err = cli(capsys, "evaluate", str(tmp_path / "nothing"), "--data", str(store.path))
    assert code == 2 and "no checkpoint" in err
    code, _, err = cli(capsys, "evaluate", str(tmp_path), "--data", str(tmp_path / "absent.lmdb"))
    assert code == 2 and "--data: no store" in err
    code, _, err = cli(capsys, "predict", str(tmp_path), str(tmp_path / "absent.tsv"), "--data", str(store.path),
                       "--out", str(tmp_path / "s.tsv"))
    assert code == 2 and "absent.tsv" in err
    if not torch.cuda.is_available():
        code, _, err = cli(capsys, "evaluate", str(tmp_path), "--data", str(store.path), "--gpu_ids", "0")
        assert code == 2 and "--gpu_ids 0" in err
