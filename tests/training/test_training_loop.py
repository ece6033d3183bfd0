"""The neutral epoch loop, driven through a numpy backend (no framework): history, gAUC, early stop,
divergence, exact resume, checkpoints of the other framework."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import VOCAB, build_store  # noqa: E402

from ctrkit.config import TrainConfig  # noqa: E402
from ctrkit.errors import ConfigError, InputError  # noqa: E402
from ctrkit.metrics import auc, gauc  # noqa: E402
from ctrkit.training.backend import Backend  # noqa: E402
from ctrkit.training.errors import TrainingDivergedError  # noqa: E402
from ctrkit.training.loop import TrainingLoop  # noqa: E402
from ctrkit.training.progress import Progress  # noqa: E402
from training.numpy_backend import NumpyBackend, NumpyLogReg  # noqa: E402

TIMING_KEYS = ("seconds", "rows_per_s")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("loop") / "store.lmdb", train=1024, valid=512, test=512)


def config(store, save_dir, **options) -> TrainConfig:
    base = dict(model="lr", data=str(store.path), epochs=3, batch_size=128, lr=0.5, optimizer="SGD",
                model_save_dir=str(save_dir), log_every=4, patience=5)
    return TrainConfig(**{**base, **options}).validate()


def train(store, cfg, **backend_options):
    model = NumpyLogReg(sum(VOCAB), 2, aux_weight=backend_options.pop("aux_weight", 0.0))
    backend = NumpyBackend(model, cfg, **backend_options)
    loop = TrainingLoop(backend, cfg, backend.meta(store), step_hook=backend_options.get("step_hook"))
    return loop, backend, loop.run(store)


def history(metrics):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in metrics["history"]]


def test_numpy_backend_satisfies_the_protocol(store, tmp_path):
    backend = NumpyBackend(NumpyLogReg(sum(VOCAB), 2), config(store, tmp_path))
    assert isinstance(backend, Backend)


def test_a_run_learns_and_reports(store, tmp_path, capsys):
    loop, backend, metrics = train(store, config(store, tmp_path / "run"))
    out = capsys.readouterr().out
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert metrics["test"]["auc"] > 0.65 and metrics["stopped"] == "completed"
    assert metrics["device"] == "numpy" and metrics["steps"] == backend.steps == 24
    assert "valid_gauc" not in metrics["history"][0] and "gauc" not in metrics["test"]
    assert "epoch 3/3  train_loss" in out and "valid_gauc" not in out
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert history(saved) == history(metrics)
    # the test metrics are those of the best checkpoint's weights, reloaded
    probs, labels, _ = backend.predict_split(store, "test")
    assert metrics["test"]["auc"] == auc(labels, probs)


def test_a_group_column_adds_gauc_to_the_epoch_line_history_and_metrics(store, tmp_path, capsys):
    cfg = config(store, tmp_path / "run", epochs=2)
    loop, backend, metrics = train(store, cfg, groups_from_field=0)
    out = capsys.readouterr().out
    for record in metrics["history"]:
        assert 0.0 < record["valid_gauc"] < 1.0
    assert list(metrics["best_valid"]) == ["auc", "logloss", "gauc"]
    probs, labels, groups = backend.predict_split(store, "test")
    assert groups is not None and len(np.unique(groups)) == VOCAB[0]
    assert metrics["test"]["gauc"] == pytest.approx(gauc(labels, probs, groups), abs=1e-12)
    assert metrics["test"]["gauc"] != metrics["test"]["auc"]
    assert "valid_gauc" in [line for line in out.splitlines() if line.startswith("epoch 2/2")][0]
    assert "  gauc " in [line for line in out.splitlines() if line.startswith("test (best epoch")][0]


def test_monitoring_gauc_picks_the_best_epoch_by_gauc(store, tmp_path):
    cfg = config(store, tmp_path / "run", epochs=4)
    model = NumpyLogReg(sum(VOCAB), 2)
    backend = NumpyBackend(model, cfg, groups_from_field=0)
    from ctrkit.training.policy import EpochPolicy

    loop = TrainingLoop(backend, cfg, backend.meta(store), policy=EpochPolicy(monitor="gauc", patience=5))
    metrics = loop.run(store)
    best = max(metrics["history"], key=lambda h: h["valid_gauc"])
    assert metrics["best_epoch"] == best["epoch"]
    assert loop.progress.best_score == best["valid_gauc"]


def test_the_monitor_flag_chooses_the_best_epoch_logloss_by_its_minimum(store, tmp_path):
    # a learning rate that overshoots: epoch 2 has the best AUC and a worse logloss, so the monitors disagree
    cfg = config(store, tmp_path / "run", epochs=6, monitor="logloss", lr=5)
    loop, _, metrics = train(store, cfg)
    best = min(metrics["history"], key=lambda h: h["valid_logloss"])
    assert loop.policy.monitor == "logloss"
    assert metrics["best_epoch"] == best["epoch"] and loop.progress.best_score == best["valid_logloss"]
    assert best["epoch"] != max(metrics["history"], key=lambda h: h["valid_auc"])["epoch"]  # the monitor decided


def test_monitoring_gauc_without_user_ids_is_a_config_error_naming_the_fix(store, tmp_path):
    cfg = config(store, tmp_path / "run", epochs=1, monitor="gauc")
    with pytest.raises(ConfigError, match=r"^--monitor gauc: the validation split reports auc, logloss but not gauc; "
                                          r"gAUC needs a store with a user \(group\) column, or use --monitor auc$"):
        train(store, cfg)


def test_the_monitor_flag_is_validated():
    with pytest.raises(ConfigError, match="--monitor must be one of auc, gauc, logloss, got 'f1'"):
        TrainConfig(model="lr", monitor="f1").validate()
    assert TrainConfig(model="lr", monitor="GAUC").validate().monitor == "gauc"


def test_aux_loss_is_added_to_the_objective_not_to_the_reported_loss(store, tmp_path):
    _, plain, plain_metrics = train(store, config(store, tmp_path / "a", epochs=1))
    loop, aux, aux_metrics = train(store, config(store, tmp_path / "b", epochs=1), aux_weight=50.0)
    # step 1 starts from the same zero weights: same BCE, objective = BCE + aux (zero table: aux 0)
    assert aux.objectives[0] == plain.objectives[0]
    # later steps: the objective is larger by exactly the model's weighted auxiliary term
    differences = [o - bce for o, bce in zip(aux.objectives[1:], plain.objectives[1:])]
    assert all(d != 0 for d in differences)
    assert aux_metrics["history"][0]["train_loss"] != plain_metrics["history"][0]["train_loss"]
    assert np.abs(aux.model.table).sum() < np.abs(plain.model.table).sum()  # the aux term shrinks the table


def test_plateau_lowers_the_backends_learning_rate_and_early_stopping_ends_the_run(store, tmp_path):
    cfg = config(store, tmp_path / "run", epochs=10, lr=0.5, patience=3, lr_patience=0, lr_factor=0.5)
    loop, backend, metrics = train(store, cfg, frozen=True)  # the weights never change: a plateau
    assert metrics["stopped"] == "early_stopping" and metrics["epochs_run"] <= 4
    # the first epoch is the best; each later one is a plateau epoch and halves the rate
    assert [h["lr"] for h in metrics["history"]] == [0.5, 0.5, 0.25, 0.125]
    assert backend.lr_history == [0.25, 0.125, 0.0625] and backend.lr == loop.schedule.lr


def test_a_non_finite_loss_stops_the_run_with_metrics_and_a_clean_checkpoint(store, tmp_path):
    cfg = config(store, tmp_path / "run", checkpoint_every=3)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan by epoch 1, step 8 .*last\.pt \(epoch 1, step 6\)"):
        train(store, cfg, poison_at_step=7)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped"] == "diverged"


def test_resume_after_max_steps_is_exact(store, tmp_path):
    _, _, whole = train(store, config(store, tmp_path / "whole"))
    _, _, stopped = train(store, config(store, tmp_path / "run", max_steps=11))
    assert stopped["stopped"] == "max_steps" and stopped["steps"] == 11
    loop, _, resumed = train(store, config(store, tmp_path / "run", resume=True))
    assert history(resumed) == history(whole) and resumed["test"] == whole["test"]
    assert loop.progress.step == 24


def test_resume_of_another_frameworks_checkpoint_points_at_convert(store, tmp_path):
    import pickle

    train(store, config(store, tmp_path / "run", max_steps=3))
    path = tmp_path / "run" / "last.pt"
    payload = pickle.loads(path.read_bytes())
    payload["config"]["framework"] = "tf"  # as if a TF run had written it
    path.write_bytes(pickle.dumps(payload))
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"is a TensorFlow checkpoint .*ctrkit convert .* --to torch"):
        train(store, config(store, tmp_path / "run", resume=True))
    assert path.read_bytes() == before


def test_a_damaged_progress_entry_is_one_input_error(store, tmp_path):
    import pickle

    train(store, config(store, tmp_path / "run", max_steps=3))
    path = tmp_path / "run" / "last.pt"
    payload = pickle.loads(path.read_bytes())
    payload["progress"]["unknown_counter"] = 1
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(InputError, match=r"last\.pt: its training state .* is damaged"):
        train(store, config(store, tmp_path / "run", resume=True))


def test_progress_state_round_trip_and_older_names():
    progress = Progress(epoch=2, batch=3, step=19, best_score=0.8, best_epoch=2, bad_epochs=0,
                        epoch_loss_rows=384, history=[{"epoch": 1}])
    state = progress.to_state(epoch_loss_sum=12.5, epoch_loss_rows=384, world_size=2)
    assert state["epoch_loss_sum"] == 12.5 and state["world_size"] == 2
    assert Progress.missing(state) == [] and Progress.from_state(state) == progress
    older = {("best_auc" if k == "best_score" else k): v for k, v in state.items()}
    assert Progress.missing(older) == [] and Progress.from_state(older) == progress
    del older["step"]
    assert Progress.missing(older) == ["step"]
    assert progress.position() == "epoch 3, step 19"
    assert Progress(epoch=1, batch=0, step=8).position() == "the end of epoch 1, step 8"
    assert math.isinf(Progress().best_score)
