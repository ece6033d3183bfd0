"""``ctrkit train/evaluate/predict --framework tf`` from the command line, and every registry model
trained for an epoch in TensorFlow on real Criteo rows."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

pytest.importorskip("tensorflow")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import run_cli  # noqa: E402
from conftest import shared_file  # noqa: E402

from ctrkit.metrics import auc, logloss  # noqa: E402
from ctrkit.registry import MODELS  # noqa: E402


@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
    """A store built from raw synthetic Criteo files (the test split is an explicit labeled file)."""
    from ctrkit.cli import main
    from ctrkit.data.synthetic import write_synthetic_criteo

    root = tmp_path_factory.mktemp("criteo")
    write_synthetic_criteo(root / "train.tsv", rows=3000, seed=1)
    write_synthetic_criteo(root / "test.tsv", rows=400, seed=2)
    code = main(["preprocess", "criteo", str(root / "train.tsv"), "--test", str(root / "test.tsv"),
                 "--out", str(root / "store.lmdb"), "--min-count", "2", "--chunk-rows", "1000"])
    assert code in (0, None)
    return root


def one_line_error(result, command: str = "train") -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip() and not _tf_log(line)]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"ctrkit {command}: error: ")
    return lines[0]


def _tf_log(line: str) -> bool:
    """TensorFlow's own start-up lines on stderr (absl/oneDNN notes), not ctrkit's output."""
    return line.startswith(("WARNING: All log messages", "I0000", "W0000", "E0000")) or "oneDNN" in line \
        or "cpu_feature_guard" in line or line.startswith("To enable the following instructions")


@pytest.mark.slow
def test_train_evaluate_predict_round_trip(criteo, tmp_path):
    store, save_dir = criteo / "store.lmdb", tmp_path / "DeepFM"
    result = run_cli("train", "--framework", "tf", "--model", "deepfm", "--data", str(store), "--epochs", "1",
                     "--batch_size", "256", "--lr", "0.003", "--embed_size", "4", "--hidden_units", "16",
                     "--threads", "1", "--cross_layers", "2", "--model_save_dir", str(save_dir))
    assert result.returncode == 0, result.stderr
    assert "--cross_layers" in result.stderr and "warning" in result.stderr  # ignored by DeepFM
    assert "epoch 1/1" in result.stdout and "test auc" in result.stdout
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert metrics["model"] == "deepfm" and metrics["test"]["rows"] == 400 and metrics["config"]["framework"] == "tf"
    assert {"best.tf", "last.tf", "metrics.json", "tensorboard"} <= {p.name for p in save_dir.iterdir()}
    assert not [p.name for p in save_dir.iterdir() if p.suffix == ".pt" or p.name.startswith(".")]

    result = run_cli("evaluate", str(save_dir), "--data", str(store), "--out", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    assert evaluated["logloss"] == pytest.approx(metrics["test"]["logloss"], abs=1e-6)

    scores_path = tmp_path / "scores.tsv"
    result = run_cli("predict", str(save_dir / "best.tf"), str(criteo / "test.tsv"), "--data", str(store),
                     "--out", str(scores_path))
    assert result.returncode == 0, result.stderr
    scores = np.loadtxt(scores_path)
    labels = np.array([float(line.split("\t", 1)[0]) for line in (criteo / "test.tsv").read_text().splitlines()])
    assert scores.shape == (400,) and ((scores > 0) & (scores < 1)).all()
    assert auc(labels, scores) == pytest.approx(evaluated["auc"], abs=1e-6)
    assert logloss(labels, scores) == pytest.approx(evaluated["logloss"], abs=1e-5)

    # served in PyTorch: the converted run directory scores the raw rows alike, without the store
    result = run_cli("convert", str(save_dir), "--to", "torch", "--out", str(tmp_path / "served"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "served").iterdir()) == ["best.pt", "encoder.npz"]
    result = run_cli("predict", str(tmp_path / "served"), str(criteo / "test.tsv"), "--out", str(tmp_path / "torch.tsv"))
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.loadtxt(tmp_path / "torch.tsv"), scores, rtol=1e-5, atol=1e-6)

    # --resume of this run with the other framework: one line pointing to ctrkit convert
    result = run_cli("train", "--framework", "torch", "--model", "deepfm", "--data", str(store), "--epochs", "2",
                     "--batch_size", "256", "--embed_size", "4", "--hidden_units", "16", "--resume",
                     "--model_save_dir", str(save_dir))
    line = one_line_error(result)
    assert "is a TensorFlow checkpoint" in line and f"ctrkit convert {save_dir / 'last.tf'} --to torch" in line


def test_damaged_tf_checkpoint_is_one_line(criteo, tmp_path, capsys):
    from ctrkit.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "best.tf").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")  # a cut safetensors header
    code = main(["evaluate", str(run), "--data", str(criteo / "store.lmdb")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("ctrkit evaluate: error: ") and "best.tf is not a readable ctrkit checkpoint" in lines[0]


# ---------------------------------------------------------------------------------------------
# every registry model, one epoch, on a store built from the real Kaggle sample
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kaggle_store(tmp_path_factory):
    from ctrkit.cli import main

    raw = shared_file("criteo/kaggle_train_head10k.tsv")
    store = tmp_path_factory.mktemp("kaggle") / "kaggle.lmdb"
    assert main(["preprocess", "criteo", str(raw), "--out", str(store)]) in (0, None)
    return store


#: models that need behaviour sequences: a Criteo store has none, in either framework
SEQUENCE_MODELS = sorted(name for name, info in MODELS.items() if info.needs_sequence)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(MODELS) - set(SEQUENCE_MODELS)))
def test_every_model_trains_an_epoch_on_real_criteo_rows(kaggle_store, tmp_path, capsys, name):
    """The issue's "done when": ``ctrkit train --framework tf --model X`` on the Kaggle sample."""
    from ctrkit.cli import main

    save_dir = tmp_path / name
    code = main(["train", "--framework", "tf", "--model", name, "--data", str(kaggle_store), "--epochs", "1",
                 "--batch_size", "512", "--embed_size", "8", "--hidden_units", "64,64", "--lr", "0.003",
                 "--model_save_dir", str(save_dir)])
    assert code in (0, None), capsys.readouterr().err
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert metrics["model"] == name and metrics["stopped"] == "completed"
    assert np.isfinite(metrics["history"][-1]["train_loss"])
    assert 850 <= metrics["test"]["rows"] <= 1150  # the store's random 8:1:1 test split of 10,000 rows
    assert metrics["test"]["auc"] > 0.58, metrics["test"]  # 0.67-0.72 measured; chance 0.5 (+-0.02)
    assert (save_dir / "best.tf").is_file() and (save_dir / "last.tf").is_file()


# ---------------------------------------------------------------------------------------------
# ctrkit convert: train in one framework, serve in the other
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from _train_helpers import build_store

    return build_store(tmp_path_factory.mktemp("planted") / "store.lmdb")


def trained(planted, save_dir: Path, framework: str, model: str = "xdeepfm", **options):
    """A short run of ``model`` in ``framework`` (BatchNorm and dropout included: statistics and
    seed states must survive the conversion, or be ignored by it, correctly)."""
    from ctrkit.config import TrainConfig
    from ctrkit.training.frameworks import train_from_config

    config = TrainConfig(model=model, framework=framework, data=str(planted.path), epochs=1, batch_size=256,
                         lr=3e-3, embed_size=4, hidden_units=[16, 16], cin_layer_units=[4, 4], batch_norm=True,
                         dropout=0.1, model_save_dir=str(save_dir), log_every=5, **options).validate()
    return train_from_config(config)


def scores(checkpoint: Path, store) -> np.ndarray:
    from ctrkit.data.batches import BatchReader
    from ctrkit.training.frameworks import load_for_inference

    trainer = load_for_inference(checkpoint, eval_batch_size=500, num_workers=0, threads=0, gpu_ids=[])
    return trainer.predict(BatchReader(store, "test", 500))


@pytest.mark.parametrize("source, target", [("torch", "tf"), ("tf", "torch")])
def test_a_converted_checkpoint_scores_the_same_rows_the_same(planted, tmp_path, capsys, source, target):
    pytest.importorskip("torch")
    from ctrkit.cli import main

    trained(planted, tmp_path / "run", source)
    expected = scores(tmp_path / "run", planted)
    assert expected.std() > 1e-3  # the rows get different scores: the comparison can fail
    code = main(["convert", str(tmp_path / "run"), "--to", target, "--out", str(tmp_path / "converted")])
    out, err = capsys.readouterr()
    assert code == 0, err
    ext = {"tf": "tf", "torch": "pt"}[target]
    assert sorted(p.name for p in (tmp_path / "converted").iterdir()) == [f"best.{ext}"]
    assert "wrote" in out and "xdeepfm" in out
    np.testing.assert_allclose(scores(tmp_path / "converted", planted), expected, rtol=1e-5, atol=1e-5)
    # the way back gives the very same weights
    code = main(["convert", str(tmp_path / "converted"), "--to", source, "--out", str(tmp_path / "back")])
    assert code == 0, capsys.readouterr().err
    np.testing.assert_allclose(scores(tmp_path / "back", planted), expected, rtol=1e-6, atol=1e-7)


def test_convert_bad_input_is_one_line_and_writes_nothing(planted, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from ctrkit.cli import main

    trained(planted, tmp_path / "run", "torch", model="dnn")
    best = tmp_path / "run" / "best.pt"
    damaged = torch.load(best, weights_only=True)
    name = next(k for k in damaged["model"] if k.endswith("weight") and damaged["model"][k].ndim == 2 and "dnn" in k)
    damaged["model"][name] = damaged["model"][name][:, :-1]
    torch.save(damaged, tmp_path / "damaged.pt")
    (tmp_path / "cut.tf").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")
    out = tmp_path / "out"
    cases = [
        ([str(best), "--to", "torch"], "is already a PyTorch checkpoint"),
        ([str(best), "--to", "jax"], "--to must be one of tf, torch"),
        ([str(tmp_path / "damaged.pt"), "--to", "tf"], f"damaged.pt: weights do not match DNN: {name} has shape"),
        ([str(tmp_path / "cut.tf"), "--to", "torch"], "cut.tf is not a readable ctrkit checkpoint"),
        ([str(tmp_path / "absent.pt"), "--to", "tf"], "no checkpoint at"),
    ]
    for argv, message in cases:
        code = main(["convert", *argv, "--out", str(out)])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip() and not _tf_log(line)]
        assert code == 2 and len(lines) == 1 and message in lines[0], err
        assert not out.exists()
    out.mkdir()
    (out / "best.tf").write_bytes(b"x")
    assert main(["convert", str(best), "--to", "tf", "--out", str(out)]) == 2
    assert "already holds best.tf" in capsys.readouterr().err
    assert (out / "best.tf").read_bytes() == b"x"


# ---------------------------------------------------------------------------------------------
# a real SIGTERM, then --resume: the weights of a run that was never interrupted
# ---------------------------------------------------------------------------------------------
#: `ctrkit train ARGS` whose TF trainer sends itself SIGTERM after step AT
SIGTERM_DRIVER = """
import os, signal, sys
from ctrkit.tensorflow import trainer as trainer_module
at, argv = int(sys.argv[1]), sys.argv[2:]
original_init = trainer_module.Trainer.__init__

def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    self.step_hook = lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == at else None

trainer_module.Trainer.__init__ = init
from ctrkit.cli import main
sys.exit(main(argv))
"""


@pytest.mark.slow
def test_sigterm_then_resume_ends_with_the_weights_of_an_uninterrupted_run(planted, tmp_path):
    import subprocess

    from _train_helpers import PYTHON, ROOT
    from safetensors.numpy import load_file

    def train_args(save_dir: Path, *extra: str) -> list[str]:
        return ["train", "--framework", "tf", "--model", "deepfm", "--data", str(planted.path), "--epochs", "1",
                "--batch_size", "256", "--lr", "0.003", "--embed_size", "4", "--hidden_units", "16,16",
                "--dropout", "0.2", "--batch_norm", "--threads", "1", "--log_every", "3",
                "--model_save_dir", str(save_dir), *extra]

    assert run_cli(*train_args(tmp_path / "whole")).returncode == 0
    killed = subprocess.run([PYTHON, "-c", SIGTERM_DRIVER, "5", *train_args(tmp_path / "run")], capture_output=True,
                            text=True, timeout=300, cwd=str(ROOT), start_new_session=True)
    assert killed.returncode == 143, killed.stderr
    lines = [line for line in killed.stderr.splitlines() if line.strip() and not _tf_log(line)]
    assert lines[-1] == ("ctrkit train: interrupted by SIGTERM at epoch 1, step 5; last.tf saved; "
                         "continue with --resume")
    resumed = run_cli(*train_args(tmp_path / "run", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    for name in ("last.tf", "best.tf"):
        expected, got = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "run" / name))
        weights = [k for k in expected if k.startswith(("model/", "optimizer/", "extra/"))]
        assert weights and set(weights) <= set(got)
        assert all(np.array_equal(got[k], expected[k]) for k in weights), name
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert again["test"] == whole["test"] and again["best_valid"] == whole["best_valid"]


def test_a_damaged_chunk_read_in_the_tf_data_thread_is_one_line(planted, tmp_path, capsys):
    """A checksum mismatch found while tf.data reads the store ends ``ctrkit train --framework tf``
    with the store's one-line error, not TensorFlow's wrapped traceback."""
    import shutil

    import lmdb

    from ctrkit.cli import main

    damaged = tmp_path / "damaged.lmdb"
    shutil.copytree(planted.path, damaged)
    env = lmdb.open(str(damaged), max_dbs=0)
    with env.begin(write=True) as txn:
        value = bytearray(txn.get(b"chunk/train/00000002"))
        value[len(value) // 2] ^= 0xFF
        txn.put(b"chunk/train/00000002", bytes(value))
    env.close()
    code = main(["train", "--framework", "tf", "--model", "lr", "--data", str(damaged), "--epochs", "1",
                 "--batch_size", "256", "--model_save_dir", str(tmp_path / "run")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"ctrkit train: error: store {damaged}: chunk 2 of split 'train' "
                               "(key chunk/train/00000002) is damaged: checksum mismatch")
