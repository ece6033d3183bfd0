"""The PyTorch trainer: parameter groups, regularisers, learning, determinism, resume, checkpoints."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import build_store, planted_schema  # noqa: E402

from ctrkit.config import TrainConfig  # noqa: E402
from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.errors import ConfigError, InputError, OutputError  # noqa: E402
from ctrkit.metrics import auc  # noqa: E402
from ctrkit.pytorch.layers import Bias, EmbeddingTable  # noqa: E402
from ctrkit.pytorch.loader import to_tensors  # noqa: E402
from ctrkit.pytorch.trainer import (  # noqa: E402
    Trainer,
    build_optimizer,
    initialise_weights,
    load_checkpoint,
    parameter_groups,
    save_checkpoint,
    train_from_config,
)
from ctrkit.registry import build_torch_model  # noqa: E402

SMALL = {"embed_size": 4, "hidden_units": [16, 16]}
TIMING_KEYS = ("seconds", "rows_per_s")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("planted") / "store.lmdb")


def config(store, save_dir, **options) -> TrainConfig:
    base = dict(model="deepfm", data=str(store.path), epochs=2, batch_size=128, lr=3e-3,
                model_save_dir=str(save_dir), log_every=5, threads=1, **SMALL)
    return TrainConfig(**{**base, **options}).validate()


def comparable(metrics: dict) -> dict:
    """Metrics without wall-clock measurements."""
    history = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in metrics["history"]]
    return {"history": history, "test": metrics["test"], "best_epoch": metrics["best_epoch"],
            "best_valid": metrics["best_valid"], "steps": metrics["steps"]}


# ---------------------------------------------------------------------------------------------
# parameter groups
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, hparams", [
    ("deepfm", {"batch_norm": True}),
    ("dcn", {"batch_norm": True, "cross_layers": 2}),
    ("autoint+", {"batch_norm": True, "attention_layers": 2}),
])
def test_parameter_groups_by_module_type(name, hparams):
    model, _ = build_torch_model(name, planted_schema(), {**SMALL, **hparams})
    groups = {g["name"]: g for g in parameter_groups(model, weight_decay=0.01)}
    ids = {k: {id(p) for p in g["params"]} for k, g in groups.items()}
    everything = {id(p) for p in model.parameters()}
    assert sum(len(v) for v in ids.values()) == len(everything)
    assert set().union(*ids.values()) == everything  # a partition of all parameters

    tables = [m for m in model.modules() if isinstance(m, EmbeddingTable)]
    assert tables and ids["embedding"] == {id(m.weight) for m in tables}
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))]
    biases = [m for m in model.modules() if isinstance(m, Bias)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert norms and linears
    assert biases or name == "autoint+"  # AutoInt+ has no first-order term, hence no free Bias
    for m in norms + biases:
        assert {id(p) for p in m.parameters()} <= ids["no_decay"]
    for m in linears:
        assert id(m.weight) in ids["decay"]
        if m.bias is not None:
            assert id(m.bias) in ids["no_decay"]
    assert groups["decay"]["weight_decay"] == 0.01
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["embedding"]["weight_decay"] == 0.0

    cfg = TrainConfig(model=name, optimizer="AdamW", weight_decay=0.01).validate()
    optimizer = build_optimizer(model, cfg)
    decays = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert decays == {"decay": 0.01, "no_decay": 0.0, "embedding": 0.0}


def test_dcn_cross_weights_are_decayed():
    model, _ = build_torch_model("dcn", planted_schema(), {**SMALL, "cross_layers": 2})
    groups = {g["name"]: {id(p) for p in g["params"]} for g in parameter_groups(model, 0.1)}
    cross = [m for n, m in model.named_modules() if type(m).__name__ == "CrossNet"]
    assert cross
    cross_params = list(cross[0].parameters())
    decayed = [p for p in cross_params if id(p) in groups["decay"]]
    assert decayed and all(id(p) in groups["no_decay"] for p in cross_params if id(p) not in groups["decay"])


# ---------------------------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------------------------
def test_torch_default_init_redraws_only_linear_and_conv_layers():
    torch.manual_seed(0)
    model, _ = build_torch_model("xdeepfm", planted_schema(), {"embed_size": 8, "hidden_units": [256, 256],
                                                              "cin_layer_units": [16, 16]})
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    initialise_weights(model, "xavier_normal")
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the models' own init

    initialise_weights(model, "torch_default")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))]
    assert any(isinstance(m, nn.Conv1d) for _, m in layers)  # CIN's filters are covered too
    redrawn = {f"{n}.{k}" for n, m in layers for k, _ in m.named_parameters()}
    for name, param in model.named_parameters():
        assert torch.equal(before[name], param) != (name in redrawn), name
    for _, module in layers:
        fan_in = module.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert module.weight.abs().max() <= bound
        if module.weight.numel() >= 10_000:  # uniform, not Xavier normal: std = bound / sqrt(3)
            assert module.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        if module.bias is not None:
            assert module.bias.abs().max() <= bound and module.bias.abs().max() > 0


def test_fit_applies_the_configured_init(store, tmp_path):
    default = train_from_config(config(store, tmp_path / "xavier", epochs=1, max_steps=3))
    torch_init = train_from_config(config(store, tmp_path / "torch", epochs=1, max_steps=3, init="torch_default"))
    assert torch_init["config"]["init"] == "torch_default"
    state_x = torch.load(tmp_path / "xavier" / "last.pt", weights_only=True)["model"]
    state_t = torch.load(tmp_path / "torch" / "last.pt", weights_only=True)["model"]
    dnn_weights = [k for k in state_x if k.startswith("dnn.") and k.endswith("weight")]
    assert dnn_weights and all(not torch.equal(state_x[k], state_t[k]) for k in dnn_weights)
    assert default["config"]["init"] == "xavier_normal"


@pytest.mark.parametrize("busy, expect_note", [(0.3, False), (1.2, True), (2.0, True)])
def test_busy_machine_note(store, tmp_path, monkeypatch, capsys, busy, expect_note):
    trainer = Trainer(build_torch_model("lr", store.schema, {})[0], config(store, tmp_path, model="lr", threads=0))
    monkeypatch.setattr("ctrkit.runtime.busy_cores_now", lambda: busy)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        trainer._note_busy_cores()
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert ("--threads 1 may train faster" in out) == expect_note, out


# ---------------------------------------------------------------------------------------------
# embedding regulariser
# ---------------------------------------------------------------------------------------------
def test_embedding_regulariser_adds_l2_of_looked_up_rows(store):
    torch.manual_seed(0)
    model, _ = build_torch_model("deepfm", store.schema, SMALL)
    with torch.no_grad():  # rows large enough that the term is well above rounding
        for table in (m for m in model.modules() if isinstance(m, EmbeddingTable)):
            table.weight.normal_(0.0, 0.5)
    batch = to_tensors(next(BatchReader(store, "train", 6).iter_epoch(0)))
    captured = []
    for table in (m for m in model.modules() if isinstance(m, EmbeddingTable)):
        table.register_forward_hook(lambda module, inputs, out: captured.append(out.detach()))

    lam = 0.3
    plain = Trainer(model, TrainConfig(model="deepfm", embedding_l2=0.0).validate(), schema=store.schema)
    objective0, bce0 = plain.compute_loss(batch)
    assert objective0.item() == bce0.item()
    rows_squared = sum(float(t.double().pow(2).sum()) for t in captured)
    assert rows_squared > 0

    captured.clear()
    regularised = Trainer(model, TrainConfig(model="deepfm", embedding_l2=lam).validate(), schema=store.schema)
    objective, bce = regularised.compute_loss(batch)
    assert bce.item() == pytest.approx(bce0.item(), rel=1e-6)
    expected = lam * rows_squared / 6
    assert objective.item() - bce.item() == pytest.approx(expected, rel=1e-5)
    # the penalty reaches the embedding rows through autograd
    objective.backward()
    table = next(m for m in model.modules() if isinstance(m, EmbeddingTable))
    assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# learning, determinism
# ---------------------------------------------------------------------------------------------
def test_loss_falls_and_auc_beats_chance(store, tmp_path):
    metrics = train_from_config(config(store, tmp_path / "run", epochs=3))
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0]
    assert metrics["best_valid"]["auc"] > 0.8  # planted structure is learnable
    assert metrics["test"]["auc"] > 0.75
    assert metrics["stopped"] == "completed"
    for name in ("best.pt", "last.pt", "metrics.json"):
        assert (tmp_path / "run" / name).is_file()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))

    # the best checkpoint alone rebuilds the model: same test metrics, predictions in (0, 1)
    trainer = Trainer.from_checkpoint(tmp_path / "run")
    again = trainer.evaluate(store, "test")
    assert again["auc"] == metrics["test"]["auc"]
    assert again["logloss"] == pytest.approx(metrics["test"]["logloss"], abs=1e-12)
    probs = trainer.predict(BatchReader(store, "test", 300))
    labels = store.read_split("test")["label"]
    assert probs.shape == (1000,) and ((probs > 0) & (probs < 1)).all()
    assert auc(labels, probs) == pytest.approx(metrics["test"]["auc"], abs=1e-12)


def test_two_runs_are_identical(store, tmp_path):
    options = dict(dropout=0.3, batch_norm=True, embedding_l2=1e-3, weight_decay=1e-3)
    first = train_from_config(config(store, tmp_path / "a", **options))
    second = train_from_config(config(store, tmp_path / "b", **options))
    assert comparable(first) == comparable(second)


def test_bf16_autocast_trains(store, tmp_path):
    metrics = train_from_config(config(store, tmp_path / "bf16", epochs=1, precision="bf16"))
    assert math.isfinite(metrics["history"][0]["train_loss"])
    assert metrics["test"]["auc"] > 0.6


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------
RESUME_OPTIONS = dict(epochs=3, dropout=0.2, batch_norm=True, embedding_l2=1e-4, weight_decay=1e-4, patience=5)


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("uninterrupted")
    return comparable(train_from_config(config(store, save_dir, **RESUME_OPTIONS)))


def test_resume_after_max_steps_mid_epoch_is_exact(store, tmp_path, uninterrupted):
    save_dir = tmp_path / "run"
    stopped = train_from_config(config(store, save_dir, max_steps=30, **RESUME_OPTIONS))  # 24 steps/epoch
    assert stopped["stopped"] == "max_steps" and stopped["steps"] == 30
    last = load_checkpoint(save_dir / "last.pt")
    assert (last["progress"]["epoch"], last["progress"]["batch"], last["progress"]["step"]) == (1, 6, 30)
    resumed = train_from_config(config(store, save_dir, resume=True, **RESUME_OPTIONS))
    assert comparable(resumed) == uninterrupted


def test_resume_after_a_crash_with_loader_workers_is_exact(store, tmp_path, uninterrupted):
    """A run dies 3 steps after its last mid-epoch checkpoint; the rerun repeats those steps."""
    save_dir = tmp_path / "run"
    cfg = config(store, save_dir, checkpoint_every=10, num_workers=2, **RESUME_OPTIONS)
    torch.manual_seed(cfg.seed)  # as train_from_config does before building the model
    model, _ = build_torch_model("deepfm", store.schema, cfg.hparams())
    trainer = Trainer(model, cfg, schema=store.schema)

    def crash(step):
        if step == 43:
            raise KeyboardInterrupt("simulated kill")

    trainer.step_hook = crash
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(store)
    assert load_checkpoint(save_dir / "last.pt")["progress"]["step"] == 40  # epoch 2, batch 16
    resumed = train_from_config(config(store, save_dir, resume=True, num_workers=2, **RESUME_OPTIONS))
    assert comparable(resumed) == uninterrupted


def test_resume_refuses_a_different_setup(store, tmp_path):
    save_dir = tmp_path / "run"
    train_from_config(config(store, save_dir, epochs=1, max_steps=5))
    with pytest.raises(ConfigError, match="--batch_size"):
        train_from_config(config(store, save_dir, resume=True, batch_size=64))
    with pytest.raises(ConfigError, match="--resume: no checkpoint"):
        train_from_config(config(store, tmp_path / "empty", resume=True))


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def test_checkpoints_load_with_weights_only(store, tmp_path):
    save_dir = tmp_path / "run"
    train_from_config(config(store, save_dir, epochs=1, checkpoint_every=7))
    for name in ("last.pt", "best.pt"):
        payload = torch.load(save_dir / name, map_location="cpu", weights_only=True)
        assert payload["format"] == "ctrkit-torch-checkpoint" and payload["model_name"] == "deepfm"
        # every constructor keyword the model was built with, defaults included (issue 7, item 12)
        assert payload["hparams"] == {"embed_size": 4, "hidden_units": [16, 16], "dropout": 0.0,
                                      "batch_norm": False, "activation": "relu"}
        assert payload["schema"] == store.schema.to_dict()
        assert payload["config"]["batch_size"] == 128
        assert all(isinstance(v, torch.Tensor) for v in payload["model"].values())
    last = torch.load(save_dir / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "progress", "rng"} <= set(last)
    assert set(last["rng"]) >= {"torch", "numpy", "python"}
    # no temporary files left behind
    assert not [p.name for p in save_dir.iterdir() if p.name.startswith(".")]


def test_atomic_checkpoint_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": "ctrkit-torch-checkpoint", "version": 1, "value": torch.ones(3)})
    before = path.read_bytes()

    def broken_save(obj, handle):
        handle.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OutputError, match="disk full.*unchanged"):  # one line for the user, not an OSError
        save_checkpoint(path, {"value": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable ctrkit checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not a ctrkit PyTorch checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


# ---------------------------------------------------------------------------------------------
# plateau: learning-rate reduction and early stopping
# ---------------------------------------------------------------------------------------------
def test_plateau_reduces_lr_then_stops_early(store, tmp_path):
    # SGD with a vanishing learning rate: weights, hence validation AUC, never change
    metrics = train_from_config(config(store, tmp_path / "run", epochs=10, optimizer="SGD", lr=1e-30, patience=2))
    history = metrics["history"]
    assert metrics["stopped"] == "early_stopping"
    assert len(history) == 3 and metrics["best_epoch"] == 1
    assert [h["improved"] for h in history] == [True, False, False]
    assert history[0]["lr"] == history[1]["lr"] == 1e-30
    assert history[2]["lr"] == pytest.approx(1e-31)
    # resuming a run that stopped early trains no further
    resumed = train_from_config(config(store, tmp_path / "run", epochs=10, optimizer="SGD", lr=1e-30, patience=2,
                                       resume=True))
    assert resumed["epochs_run"] == 3 and resumed["stopped"] == "early_stopping"


def test_lr_patience_delays_the_reduction(store, tmp_path):
    metrics = train_from_config(config(store, tmp_path / "run", epochs=3, optimizer="SGD", lr=1e-30,
                                       patience=5, lr_patience=1))
    assert [h["lr"] for h in metrics["history"]] == [1e-30, 1e-30, 1e-30]
    assert metrics["stopped"] == "completed"


# ---------------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------------
def test_missing_gpu_ids_are_a_config_error(store):
    model, _ = build_torch_model("lr", store.schema, {})
    bad = [torch.cuda.device_count() + 7] if torch.cuda.is_available() else [0]
    with pytest.raises(ConfigError, match=f"--gpu_ids {bad[0]}"):
        Trainer(model, TrainConfig(model="lr", gpu_ids=bad).validate())


# ---------------------------------------------------------------------------------------------
# loader
# ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("start_batch", [0, 5])
def test_loader_order_is_independent_of_workers(store, start_batch):
    from ctrkit.pytorch.loader import make_loader

    reader = BatchReader(store, "train", 100, shuffle=True, seed=3, shuffle_window=2)
    expected = [b["label"].copy() for b in reader.iter_epoch(1, start_batch=start_batch)]
    assert len(expected) == len(reader) - start_batch
    for workers in (0, 3):  # 3 workers: the batches do not divide evenly among them
        got = [b["label"].numpy() for b in make_loader(reader, 1, start_batch, num_workers=workers)]
        assert len(got) == len(expected)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected)), workers
    batch = next(iter(make_loader(reader, 0)))
    assert batch["sparse"].dtype == torch.int32 and batch["label"].dtype == torch.float32
    assert batch["dense"].shape == (100, 2)
