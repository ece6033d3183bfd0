"""``ctrkit predict CKPT RAW`` on any dataset, from the checkpoint's run directory alone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_file
from ctrkit.cli import main
from ctrkit.data.encoder import ENCODER_FILE, copy_encoder_to_run_dir, load_encoder, run_dir_encoder
from ctrkit.data.store import Store
from ctrkit.metrics import auc


def train_lr(store, save_dir):
    from ctrkit.config import TrainConfig
    from ctrkit.pytorch.trainer import train_from_config

    train_from_config(TrainConfig(model="lr", data=str(store), epochs=1, batch_size=256, threads=1, model_save_dir=str(save_dir)))


@pytest.mark.parametrize("dataset, train_file, test_file, label_column", [
    ("avazu", "avazu/wide_resdnn/avazu_train.csv", "avazu/wide_resdnn/avazu_test.csv", 1),
    ("movielens", "movielens/deepctr_movielens_sample.csv", "movielens/torchrechub_ml-1m_sample.csv", None),
    ("taobao-joined", "taobao/paddlerec_dmr_alimama_sampled_train.csv", "taobao/deepctr_alimama_sample.csv", None),
])
def test_predict_raw_rows_from_the_checkpoint_alone(tmp_path, capsys, dataset, train_file, test_file, label_column):
    train_raw, test_raw = shared_file(train_file), shared_file(test_file)
    store = tmp_path / "store.lmdb"
    assert main(["preprocess", dataset, str(train_raw), "--test", str(test_raw), "--out", str(store)]) == 0
    save_dir = tmp_path / "run"
    train_lr(store, save_dir)
    assert run_dir_encoder(save_dir / "best.pt") == save_dir / ENCODER_FILE
    capsys.readouterr()

    alone, with_data = tmp_path / "alone.csv", tmp_path / "with_data.csv"
    assert main(["predict", str(save_dir / "best.pt"), str(test_raw), "--out", str(alone)]) == 0
    assert main(["predict", str(save_dir), str(test_raw), "--out", str(with_data), "--data", str(store)]) == 0
    scores = np.loadtxt(alone)
    np.testing.assert_array_equal(scores, np.loadtxt(with_data))
    test_rows = Store(store).split("test").rows
    assert scores.shape == (test_rows,) and ((scores > 0) & (scores < 1)).all()

    # the same rows through the store give the same AUC as the scores of the raw rows
    eval_json = tmp_path / "eval.json"
    assert main(["evaluate", str(save_dir), "--data", str(store), "--out", str(eval_json)]) == 0
    labels = Store(store).read_split("test")["label"]
    assert auc(labels, scores) == pytest.approx(json.loads(eval_json.read_text())["auc"], abs=1e-6)


def test_encoder_file_round_trip_and_missing_encoder(tmp_path, capsys):
    raw = shared_file("avazu/deepctr_avazu_sample.csv")
    store = tmp_path / "s.lmdb"
    assert main(["preprocess", "avazu", str(raw), "--out", str(store)]) == 0
    written = copy_encoder_to_run_dir(store, tmp_path / "run")
    a, b = load_encoder(store), load_encoder(written)
    assert a.spec == b.spec.__class__(**{**b.spec.__dict__, "origin": a.spec.origin})
    assert all(np.array_equal(a.vocabularies[k], b.vocabularies[k]) for k in a.vocabularies)
    assert a.schema.to_dict() == b.schema.to_dict() == Store(store).schema.to_dict()
    # a run directory without encoder.npz (trained before encoders were saved) and no --data:
    # one line saying what to give
    old_run = tmp_path / "old_run"
    assert main(["train", "--model", "lr", "--data", str(store), "--epochs", "1", "--model_save_dir", str(old_run)]) == 0
    (old_run / ENCODER_FILE).unlink()
    capsys.readouterr()
    assert main(["predict", str(old_run / "last.pt"), str(raw), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no encoder.npz" in err[0] and "--data" in err[0]
