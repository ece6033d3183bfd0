"""Dispatch on the framework, run-directory checks across frameworks, the regularisation spec."""

from __future__ import annotations

import importlib.util

import pytest

from ctrkit.config import TrainConfig
from ctrkit.errors import ConfigError
from ctrkit.training import frameworks
from ctrkit.training.frameworks import check_framework_available, checkpoint_framework
from ctrkit.training.regularization import RegularizationSpec
from ctrkit.training.rundir import RUN_FILES, check_previous_run, check_resume_source


def test_tf_without_tensorflow_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(frameworks.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^--framework tf: TensorFlow is not installed; "
                                          r"install it with pip install 'ctrkit\[tf\]'$"):
        TrainConfig(model="lr", framework="tf").validate()


def test_tf_without_its_trainer_is_not_available_yet(monkeypatch, tmp_path):
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed")
    monkeypatch.setattr(frameworks, "TRAINER_MODULES", {**frameworks.TRAINER_MODULES,
                                                        "tf": "ctrkit.tensorflow.no_such_trainer"})
    with pytest.raises(ConfigError, match="TensorFlow training is not available yet"):
        check_framework_available("tf")
    check_framework_available("torch")  # this environment has torch


def test_checkpoint_framework_by_name(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert checkpoint_framework(run) == "torch"  # neither: the torch loader names the missing best.pt
    (run / "best.tf").mkdir()
    assert checkpoint_framework(run) == "tf"
    (run / "best.pt").write_bytes(b"")
    assert checkpoint_framework(run) == "torch"
    assert checkpoint_framework(run / "best.tf") == "tf"
    assert checkpoint_framework(tmp_path / "model.tf") == "tf"
    assert checkpoint_framework(tmp_path / "weights.pt") == "torch"


def test_a_tf_run_is_a_previous_run_and_its_resume_points_at_convert(tmp_path):
    run = tmp_path / "run"
    (run / "last.tf").mkdir(parents=True)
    (run / "last.tf" / "weights").write_bytes(b"x")
    assert "last.tf" in RUN_FILES and "best.pt" in RUN_FILES
    with pytest.raises(ConfigError, match=r"holds an unfinished run \(last\.tf\)"):
        check_previous_run(run, resume=False, overwrite=False)
    with pytest.raises(ConfigError, match=r"^--resume: .*last\.tf is a TensorFlow checkpoint and this is a "
                                          r"--framework torch run; .*ctrkit convert .*--to torch --out DIR$"):
        check_resume_source(run, "torch")
    with pytest.raises(ConfigError, match=r"--resume: no checkpoint to resume from at .*last\.pt"):
        check_resume_source(tmp_path, "torch")
    (run / "last.pt").write_bytes(b"x")
    assert check_resume_source(run, "torch") == run / "last.pt"


def test_regularization_spec():
    spec = RegularizationSpec(weight_decay=0.01, embedding_l2=0.5)
    assert [spec.group_of(role) for role in ("weight", "bias", "norm", "embedding")] == [
        "decay", "no_decay", "no_decay", "embedding"]
    assert [spec.weight_decay_of(g) for g in ("decay", "no_decay", "embedding")] == [0.01, 0.0, 0.0]
    assert spec.embedding_penalty(8.0, 4) == 0.5 * 8.0 / 4
    assert spec.penalises_embeddings and not RegularizationSpec().penalises_embeddings
    with pytest.raises(ValueError, match="unknown parameter role"):
        spec.group_of("gamma")
    config = TrainConfig(model="lr", weight_decay=1e-3, embedding_l2=2e-4).validate()
    assert RegularizationSpec.from_config(config) == RegularizationSpec(1e-3, 2e-4)


def test_train_refuses_a_model_whose_embedding_tables_do_not_fit_in_memory(tmp_path, monkeypatch, capsys):
    """ONN's field-aware tables hold vocabulary x fields x dim floats: refused in one line before any work."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _train_helpers import build_store

    from ctrkit import registry
    from ctrkit.cli import main

    store = build_store(tmp_path / "s.lmdb", train=600, valid=200, test=200)
    rows = store.schema.total_vocab + len(store.schema.dense)
    fields = len(store.schema.sparse) + len(store.schema.dense)
    onn_bytes = registry.embedding_bytes("onn", store.schema, {"embed_size": 16})
    assert onn_bytes == rows * fields * 16 * 4  # (V + n_dense) x F x D float32
    monkeypatch.setattr(registry, "available_memory_bytes", lambda: 100_000)  # between DeepFM's and ONN's need
    common = ["train", "--data", str(store.path), "--epochs", "1", "--embed_size", "16"]
    assert main([*common, "--model", "onn", "--model_save_dir", str(tmp_path / "onn")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctrkit train: error: model onn does not fit in memory: its embedding tables need about")
    assert "lower --embed_size" in err and "\n" not in err
    assert not (tmp_path / "onn").exists()  # nothing written
    assert main([*common, "--model", "deepfm", "--model_save_dir", str(tmp_path / "deepfm")]) == 0


def test_train_with_monitor_gauc_on_a_store_without_user_ids_fails_before_any_work(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from _train_helpers import build_store

    from ctrkit.cli import main

    store = build_store(tmp_path / "s.lmdb", train=600, valid=200, test=200)
    assert not store.carries_groups("valid")
    run = tmp_path / "run"
    assert main(["train", "--model", "lr", "--data", str(store.path), "--monitor", "gauc",
                 "--model_save_dir", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"ctrkit train: error: --monitor gauc: the validation rows of store {store.path} carry no user (group) "
        "column, so gAUC cannot be computed; use a store with one, or --monitor auc")
    assert not run.exists()  # nothing trained, nothing written
