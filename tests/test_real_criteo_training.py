"""Every model trained with ``ctrkit train`` on the real Kaggle Criteo sample, then ``predict`` on
the real unlabeled Kaggle test rows (the "done when" commands of the PyTorch issue)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctrkit.cli import main
from ctrkit.registry import MODELS

@pytest.fixture(scope="module")
def kaggle_store(tmp_path_factory):
    from conftest import shared_file

    raw = shared_file("criteo/kaggle_train_head10k.tsv")
    store = tmp_path_factory.mktemp("kaggle") / "kaggle.lmdb"
    assert main(["preprocess", "criteo", str(raw), "--out", str(store)]) in (0, None)
    return store


@pytest.mark.parametrize("name", [name for name, info in MODELS.items() if info.needs_sequence])
def test_sequence_models_refuse_criteo_rows_in_one_line(name, kaggle_store, tmp_path, capsys):
    """DIN and DIEN need a behaviour sequence; a Criteo store has none: exit 2, one line, no run directory."""
    code = main(["train", "--model", name, "--data", str(kaggle_store), "--epochs", "1",
                 "--model_save_dir", str(tmp_path / name)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "needs a store with at least one sequence field" in err
    assert not (tmp_path / name / "metrics.json").exists()


@pytest.mark.parametrize("name", [name for name, info in MODELS.items() if not info.needs_sequence])
def test_ctrkit_train_on_real_criteo_rows(name, kaggle_store, kaggle_test_unlabeled, tmp_path, capsys):
    save_dir = tmp_path / name
    code = main(["train", "--model", name, "--data", str(kaggle_store), "--epochs", "2", "--batch_size", "1024",
                 "--embed_size", "8", "--hidden_units", "64,64", "--threads", "1", "--model_save_dir", str(save_dir)])
    assert code in (0, None), capsys.readouterr().err
    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert metrics["model"] == name and len(metrics["history"]) >= 1
    assert np.isfinite(metrics["history"][-1]["train_loss"])
    # 8,000 real training rows, 2 epochs: every model learns something
    assert 850 <= metrics["test"]["rows"] <= 1150  # the store's random 8:1:1 test split of 10,000 rows
    assert metrics["test"]["auc"] > 0.58, metrics["test"]  # 0.61-0.69 measured; chance 0.5 (+-0.02)
    assert (save_dir / "best.pt").is_file() and (save_dir / "last.pt").is_file()

    scores = tmp_path / "scores.tsv"
    code = main(["predict", str(save_dir), str(kaggle_test_unlabeled), "--data", str(kaggle_store),
                 "--out", str(scores)])
    assert code in (0, None), capsys.readouterr().err
    probs = np.loadtxt(scores)
    assert probs.shape == (10_000,) and ((probs > 0) & (probs < 1)).all()
    assert probs.std() > 1e-3  # not a constant: the rows' features move the scores
