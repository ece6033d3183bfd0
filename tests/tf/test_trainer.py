"""The TensorFlow trainer: learning, determinism, exact resume, safetensors checkpoints and their
checks, the embedding regulariser, bf16, MirroredStrategy on two logical CPUs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import ROOT, build_store  # noqa: E402

from ctrkit.config import TrainConfig  # noqa: E402
from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.errors import ConfigError, InputError, OutputError  # noqa: E402
from ctrkit.metrics import auc  # noqa: E402
from ctrkit.registry import build_tf_model  # noqa: E402
from ctrkit.tensorflow.loader import to_tensors  # noqa: E402
from ctrkit.tensorflow.trainer import (  # noqa: E402
    METADATA_KEY,
    Trainer,
    load_checkpoint,
    load_model_checkpoint,
    save_model_checkpoint,
)
from ctrkit.training.frameworks import train_from_config  # noqa: E402

SMALL = {"embed_size": 4, "hidden_units": [16, 16]}
TIMING_KEYS = ("seconds", "rows_per_s")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("planted") / "store.lmdb")


def config(store, save_dir, **options) -> TrainConfig:
    base = dict(model="deepfm", framework="tf", data=str(store.path), epochs=2, batch_size=128, lr=3e-3,
                model_save_dir=str(save_dir), log_every=5, **SMALL)
    return TrainConfig(**{**base, **options}).validate()


def comparable(metrics: dict) -> dict:
    history = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in metrics["history"]]
    return {"history": history, "test": metrics["test"], "best_epoch": metrics["best_epoch"],
            "best_valid": metrics["best_valid"], "steps": metrics["steps"]}


def tensors(path: Path) -> dict[str, np.ndarray]:
    return safetensors_numpy.load_file(str(path))


def metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "np") as handle:
        return json.loads(handle.metadata()[METADATA_KEY])


# ---------------------------------------------------------------------------------------------
# learning, determinism
# ---------------------------------------------------------------------------------------------
def test_loss_falls_and_the_best_checkpoint_scores_the_same(store, tmp_path):
    metrics = train_from_config(config(store, tmp_path / "run", epochs=3))
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0]
    assert metrics["best_valid"]["auc"] > 0.8  # the planted structure is learnable
    assert metrics["test"]["auc"] > 0.75 and metrics["stopped"] == "completed"
    assert metrics["config"]["framework"] == "tf"
    for name in ("best.tf", "last.tf", "metrics.json"):
        assert (tmp_path / "run" / name).is_file()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]

    trainer = Trainer.from_checkpoint(tmp_path / "run")
    again = trainer.evaluate(store, "test")
    assert again["auc"] == metrics["test"]["auc"]
    assert again["logloss"] == pytest.approx(metrics["test"]["logloss"], abs=1e-12)
    probs = trainer.predict(BatchReader(store, "test", 300))
    assert probs.shape == (1000,) and ((probs > 0) & (probs < 1)).all()
    assert auc(store.read_split("test")["label"], probs) == pytest.approx(metrics["test"]["auc"], abs=1e-12)
    # batches that do not come from a reader are checked against the schema
    batch = store.read_split("test")
    bad = {"sparse": batch["sparse"][:4].copy(), "dense": batch["dense"][:4]}
    bad["sparse"][0, 0] = 10_000
    with pytest.raises(Exception, match="batch 0 given to predict"):
        trainer.predict([bad])


def test_two_runs_are_identical(store, tmp_path):
    options = dict(dropout=0.3, batch_norm=True, embedding_l2=1e-3, weight_decay=1e-3, epochs=1)
    first = train_from_config(config(store, tmp_path / "a", **options))
    second = train_from_config(config(store, tmp_path / "b", **options))
    assert comparable(first) == comparable(second)
    a, b = tensors(tmp_path / "a" / "last.tf"), tensors(tmp_path / "b" / "last.tf")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_xla_compiled_step_trains_the_same_function(store, tmp_path):
    """``--xla``: the step compiled with XLA gives the uncompiled step's weights up to float
    rounding (its fusions reorder sums), and runs repeat bit for bit."""
    options = dict(epochs=1, model="xdeepfm", cin_layer_units=[4, 4])
    plain = train_from_config(config(store, tmp_path / "plain", **options))
    compiled = train_from_config(config(store, tmp_path / "xla", xla=True, **options))
    again = train_from_config(config(store, tmp_path / "xla2", xla=True, **options))
    assert compiled["config"]["xla"] is True and comparable(compiled) == comparable(again)
    a, b = tensors(tmp_path / "plain" / "last.tf"), tensors(tmp_path / "xla" / "last.tf")
    moved = max(float(np.abs(v).max()) for k, v in a.items() if k.startswith("model/"))
    assert moved > 0 and a.keys() == b.keys()
    for key in a:
        if key.startswith("model/"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-3, atol=1e-5, err_msg=key)
    assert abs(compiled["test"]["auc"] - plain["test"]["auc"]) < 1e-3


def test_xla_needs_the_tf_framework_and_a_boolean():
    with pytest.raises(ConfigError, match="--xla .*--framework tf"):
        TrainConfig(model="deepfm", framework="torch", data="x", xla=True).validate()
    with pytest.raises(ConfigError, match="--xla must be true or false"):
        TrainConfig(model="deepfm", framework="tf", data="x", xla="sometimes").validate()


def test_bf16_trains(store, tmp_path):
    metrics = train_from_config(config(store, tmp_path / "bf16", epochs=1, precision="bf16"))
    assert math.isfinite(metrics["history"][0]["train_loss"])
    assert metrics["test"]["auc"] > 0.6
    assert all(v.dtype == np.float32 for k, v in tensors(tmp_path / "bf16" / "best.tf").items()
               if k.startswith("model/") and not k.endswith("num_batches_tracked"))


def test_embedding_regulariser_adds_l2_of_looked_up_rows(store):
    """objective - BCE = embedding_l2 * sum(looked-up rows ** 2) / B over both tables of FM
    (sparse ids at their field offsets, one unscaled row per dense field), as torch's hooks count."""
    l2 = 1e-2
    model, _ = build_tf_model("fm", store.schema, {"embed_size": 4})
    for field_embedding in (model.embedding, model.linear.field_weights):  # rows far from ~0
        field_embedding.table.weight.assign(tf.random.normal(field_embedding.table.weight.shape, seed=3))
    trainer = Trainer(model, TrainConfig(model="fm", framework="tf", embedding_l2=l2))
    trainer.prepare(store)
    batch = next(BatchReader(store, "train", 64).iter_epoch(0))
    objective, bce = trainer.compute_loss(to_tensors(batch))
    expected = 0.0
    for field_embedding in (model.embedding, model.linear.field_weights):
        ids = np.concatenate([batch["sparse"] + np.asarray(field_embedding.offsets),
                              np.tile(field_embedding.dense_rows, (64, 1))], axis=1)
        expected += float(np.sum(field_embedding.table.weight.numpy()[ids].astype(np.float64) ** 2))
    expected *= l2 / 64
    assert expected > 0.1
    assert float(objective - bce) == pytest.approx(expected, rel=1e-5)
    plain = Trainer(model, TrainConfig(model="fm", framework="tf"))
    plain.prepare(store)  # embedding_l2 0 switches the tables' term off
    objective, bce = plain.compute_loss(to_tensors(batch))
    assert float(objective) == float(bce)


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------
RESUME_OPTIONS = dict(epochs=3, dropout=0.2, batch_norm=True, embedding_l2=1e-4, weight_decay=1e-4, patience=5)


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("uninterrupted")
    metrics = comparable(train_from_config(config(store, save_dir, **RESUME_OPTIONS)))
    return metrics, tensors(save_dir / "last.tf")


def assert_same_weights(got: dict, expected: dict) -> None:
    weights = [k for k in expected if not k.startswith("rng/")]
    assert [k for k in weights if k.startswith("model/")] and [k for k in weights if k.startswith("optimizer/")]
    for key in weights:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


@pytest.mark.slow
def test_resume_after_max_steps_mid_epoch_is_exact(store, tmp_path, uninterrupted):
    save_dir = tmp_path / "run"
    stopped = train_from_config(config(store, save_dir, max_steps=30, **RESUME_OPTIONS))  # 24 steps/epoch
    assert stopped["stopped"] == "max_steps" and stopped["steps"] == 30
    progress = metadata(save_dir / "last.tf")["progress"]
    assert (progress["epoch"], progress["batch"], progress["step"]) == (1, 6, 30)
    resumed = train_from_config(config(store, save_dir, resume=True, **RESUME_OPTIONS))
    assert comparable(resumed) == uninterrupted[0]
    assert_same_weights(tensors(save_dir / "last.tf"), uninterrupted[1])


def test_killed_then_resumed_run_ends_with_the_same_weights(store, tmp_path, uninterrupted):
    """A run dies 3 steps after its last mid-epoch checkpoint; the rerun repeats those steps."""
    save_dir = tmp_path / "run"
    cfg = config(store, save_dir, checkpoint_every=10, **RESUME_OPTIONS)
    from ctrkit.tensorflow.trainer import set_seed

    set_seed(cfg.seed)  # as fit_from_config does before building the model
    model, _ = build_tf_model("deepfm", store.schema, cfg.hparams())
    trainer = Trainer(model, cfg, schema=store.schema)

    def crash(step):
        if step == 43:
            raise KeyboardInterrupt("simulated kill")

    trainer.step_hook = crash
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(store)
    assert metadata(save_dir / "last.tf")["progress"]["step"] == 40
    resumed = train_from_config(config(store, save_dir, resume=True, **RESUME_OPTIONS))
    assert comparable(resumed) == uninterrupted[0]
    assert_same_weights(tensors(save_dir / "last.tf"), uninterrupted[1])


def test_resume_refuses_a_different_setup_and_a_torch_checkpoint(store, tmp_path):
    save_dir = tmp_path / "run"
    train_from_config(config(store, save_dir, epochs=1, max_steps=5))
    with pytest.raises(ConfigError, match="--batch_size"):
        train_from_config(config(store, save_dir, resume=True, batch_size=64))
    with pytest.raises(ConfigError, match="--resume: no checkpoint"):
        train_from_config(config(store, tmp_path / "empty", resume=True))
    pytest.importorskip("torch")
    torch_dir = tmp_path / "torch_run"
    train_from_config(config(store, torch_dir, framework="torch", epochs=1, max_steps=5, threads=1))
    with pytest.raises(ConfigError, match=r"is a PyTorch checkpoint .*ctrkit convert .*last\.pt --to tf"):
        train_from_config(config(store, torch_dir, resume=True))


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def test_checkpoints_are_safetensors_under_torch_names(store, tmp_path):
    torch = pytest.importorskip("torch")
    from ctrkit.registry import build_torch_model

    save_dir = tmp_path / "run"
    train_from_config(config(store, save_dir, epochs=1, checkpoint_every=7, dropout=0.1))
    for name in ("best.tf", "last.tf"):
        meta = metadata(save_dir / name)
        assert meta["format"] == "ctrkit-tf-checkpoint" and meta["model_name"] == "deepfm"
        assert meta["hparams"] == {"embed_size": 4, "hidden_units": [16, 16], "dropout": 0.1,
                                   "batch_norm": False, "activation": "relu"}
        assert meta["schema"] == store.schema.to_dict() and meta["config"]["batch_size"] == 128
    # the weights of best.tf are the torch model's state_dict: it loads as it is
    torch_model, _ = build_torch_model("deepfm", store.schema, metadata(save_dir / "best.tf")["hparams"])
    weights = {k[len("model/"):]: torch.from_numpy(v) for k, v in tensors(save_dir / "best.tf").items()
               if k.startswith("model/")}
    torch_model.load_state_dict(weights)  # strict: same names and shapes
    last = tensors(save_dir / "last.tf")
    assert {k.split("/")[1] for k in last if k.startswith("optimizer/")} == {"exp_avg", "exp_avg_sq"}
    assert "rng/numpy_keys" in last and [k for k in last if k.startswith("extra/")]  # dropout seed state
    assert {"optimizer", "scheduler", "progress", "rng"} <= set(metadata(save_dir / "last.tf"))


def test_save_and_load_model_checkpoint_round_trip(store, tmp_path):
    model, _ = build_tf_model("dcn", store.schema, {"embed_size": 4, "hidden_units": [8], "cross_layers": 2})
    from ctrkit.registry import HPARAMS_ATTRIBUTE

    entries = {"kind": "best", "model_name": "dcn", "hparams": getattr(model, HPARAMS_ATTRIBUTE),
               "schema": store.schema.to_dict(), "config": {"precision": "fp32"}}
    for variable in model.trainable_variables:  # not the initial values: the comparison can fail
        variable.assign(tf.random.normal(variable.shape, stddev=0.3, seed=1))
    save_model_checkpoint(tmp_path / "m.tf", model, entries)
    loaded, payload = load_model_checkpoint(tmp_path / "m.tf")
    batch = to_tensors({k: v for k, v in next(BatchReader(store, "test", 64).iter_epoch(0)).items()})
    expected = model(batch).numpy()
    assert expected.std() > 1e-3
    np.testing.assert_array_equal(loaded(batch).numpy(), expected)
    assert payload["model_name"] == "dcn" and payload["kind"] == "best"


def _checkpoint(store, tmp_path) -> Path:
    path = tmp_path / "ok.tf"
    model, _ = build_tf_model("lr", store.schema, {})
    from ctrkit.registry import HPARAMS_ATTRIBUTE

    save_model_checkpoint(path, model, {"kind": "best", "model_name": "lr", "hparams": getattr(model, HPARAMS_ATTRIBUTE),
                                        "schema": store.schema.to_dict(), "config": {}})
    return path


def _rewrite(path: Path, out: Path, change) -> Path:
    from safetensors import safe_open

    with safe_open(str(path), "np") as handle:
        meta = handle.metadata()
        data = {k: handle.get_tensor(k) for k in handle.keys()}
    change(data)
    out.write_bytes(safetensors_numpy.save(data, metadata=meta))
    return out


def test_load_checkpoint_errors_are_one_line(store, tmp_path):
    good = _checkpoint(store, tmp_path)
    load_checkpoint(good)  # the checks below can pass
    cases = []
    cases.append((tmp_path / "absent.tf", "no checkpoint at"))
    (tmp_path / "empty.tf").write_bytes(b"")
    cases.append((tmp_path / "empty.tf", r"is empty \(0 bytes\)"))
    (tmp_path / "cut.tf").write_bytes(good.read_bytes()[:-10])
    cases.append((tmp_path / "cut.tf", "not a readable ctrkit checkpoint \\(truncated"))
    (tmp_path / "junk.tf").write_bytes(b"not a checkpoint at all")
    cases.append((tmp_path / "junk.tf", "not a readable ctrkit checkpoint"))
    (tmp_path / "foreign.tf").write_bytes(safetensors_numpy.save({"w": np.ones(2, np.float32)}))
    cases.append((tmp_path / "foreign.tf", "not a ctrkit TensorFlow checkpoint"))
    key = "model/linear.bias.bias"

    def poison(data):
        data[key] = np.full_like(data[key], np.nan)

    cases.append((_rewrite(good, tmp_path / "nan.tf", poison), f"weight {key[6:]} holds NaN"))

    def reshape(data):
        name = next(k for k in data if k.startswith("model/") and "table" in k)
        data[name] = data[name][:-1]

    for path, message in cases:
        with pytest.raises(InputError, match=message) as info:
            load_model_checkpoint(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    wrong = _rewrite(good, tmp_path / "shape.tf", reshape)
    with pytest.raises(InputError, match=r"shape.tf: weights do not match LR: .*table.weight has shape") as info:
        load_model_checkpoint(wrong)
    assert "\n" not in str(info.value)


def test_atomic_checkpoint_write_keeps_the_old_file_on_failure(store, tmp_path, monkeypatch):
    path = _checkpoint(store, tmp_path)
    before = path.read_bytes()
    import ctrkit.tensorflow.trainer as trainer_module

    real_output = trainer_module.atomic_output

    def failing_output(*args, **kwargs):
        import contextlib

        @contextlib.contextmanager
        def broken():
            with real_output(*args, **kwargs) as handle:
                handle.write(b"partial garbage")
                raise OSError(28, "No space left on device")
                yield handle  # pragma: no cover
        return broken()

    monkeypatch.setattr(trainer_module, "atomic_output", failing_output)
    model, _ = build_tf_model("lr", store.schema, {})
    with pytest.raises(OutputError, match="(?i)no space left on device.*unchanged"):
        save_model_checkpoint(path, model, {"kind": "best", "model_name": "lr", "hparams": {}, "schema": {}, "config": {}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ok.tf"]


# ---------------------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------------------
MIRRORED_STEP = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, "tests")
import numpy as np
from ctrkit.tensorflow.devices import split_cpu
split_cpu(2)  # before anything starts TensorFlow's devices
import tensorflow as tf
from pathlib import Path
from ctrkit.config import TrainConfig
from ctrkit.errors import ConfigError
from ctrkit.data.store import Store
from ctrkit.data.batches import BatchReader
from ctrkit.registry import build_tf_model
from ctrkit.tensorflow.devices import make_strategy
from ctrkit.tensorflow.trainer import Trainer, set_seed
from ctrkit.training.frameworks import train_from_config
from ctrkit.training.loop import train_reader

store = Store(sys.argv[1])
cfg = TrainConfig(model="dnn", framework="tf", batch_size=128, lr=0.01, embed_size=4, hidden_units=[16],
                  weight_decay=1e-3, embedding_l2=1e-3).validate()
mirrored = make_strategy(cpu_processes=2)
trainers = []
for strategy in (mirrored, tf.distribute.get_strategy()):
    set_seed(cfg.seed)
    with strategy.scope():
        model, _ = build_tf_model("dnn", store.schema, cfg.hparams())
    trainer = Trainer(model, cfg, schema=store.schema, strategy=strategy)
    trainer.prepare(store)
    trainers.append(trainer)
reader = BatchReader(store, "train", 128, shuffle=True, seed=cfg.seed)
# the mirrored trainer's first global batch, as the union of its replicas' shards
batches = iter(trainers[0].train_batches(reader, 0, 0, ignore_signals=False))
losses = []
for _ in range(3):
    per_replica = next(batches)
    losses.append(float(trainers[0].train_step(per_replica)))
    parts = mirrored.experimental_local_results(per_replica)
    whole = {k: tf.concat([p[k] for p in parts], 0) for k in parts[0]}
    next(trainers[1].train_batches(BatchReader(store, "train", 128), 0, 0, ignore_signals=False))  # compiles its step
    losses.append(float(trainers[1].train_step(whole)))
    rows = trainers[0].batch_rows(per_replica)
diff = max(float(np.abs(a.numpy() - b.numpy()).max())
           for a, b in zip(trainers[0].model.weights, trainers[1].model.weights))
moved = max(float(np.abs(a.numpy()).max()) for a in trainers[0].optimizer.slots["exp_avg"])
metrics = train_from_config(cfg.replace(data=sys.argv[1], cpu_processes=2, epochs=1, model_save_dir=sys.argv[2],
                                        log_every=5))
# --xla compiles one device's step: refused for the replicas before the run directory is made
xla_dir = Path(sys.argv[2]).parent / "xla-run"
try:
    Trainer(trainers[0].model, cfg.replace(xla=True, model_save_dir=str(xla_dir)), schema=store.schema,
            strategy=mirrored).fit(store)
    xla_refused = ""
except ConfigError as error:
    xla_refused = str(error) if not xla_dir.exists() else "run directory made"
# 23 global batches and 1 row: one reader of the global batch has 24 batches, each replica's shard 23
odd_reader = train_reader(Store(sys.argv[3]), cfg, trainers[0])
odd_steps = sum(1 for _ in trainers[0].train_batches(odd_reader, 0, 0, ignore_signals=False))
print(json.dumps({"diff": diff, "moved": moved, "losses": losses, "rows": rows,
                  "odd_steps": odd_steps, "odd_loop_steps": len(odd_reader), "xla_refused": xla_refused,
                  "replicas": trainers[0].replicas, "device": metrics["device"], "auc": metrics["test"]["auc"]}))
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(store, tmp_path):
    """Two replicas, each half of the global batch, take the step one device takes on the whole batch."""
    odd = build_store(tmp_path / "odd.lmdb", train=23 * 128 + 1, valid=0, test=0)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(MIRRORED_STEP), str(store.path), str(tmp_path / "run"),
                           str(odd.path)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["rows"] == 128
    assert result["odd_steps"] == result["odd_loop_steps"] == 23  # the loop counts the steps the replicas run
    assert "--xla compiles the step of one device" in result["xla_refused"], result["xla_refused"]
    assert result["moved"] > 1e-4  # the steps changed the weights: the comparison can fail
    assert result["diff"] < 1e-6, result
    losses = result["losses"]
    assert all(abs(a - b) < 1e-6 for a, b in zip(losses[::2], losses[1::2])), losses
    assert result["device"] == "cpu:0,cpu:1" and result["auc"] > 0.7
    assert (tmp_path / "run" / "best.tf").is_file()


# ---------------------------------------------------------------------------------------------
# initialisation, divergence
# ---------------------------------------------------------------------------------------------
def test_torch_default_init_redraws_only_the_dense_layers(store):
    model, _ = build_tf_model("deepfm", store.schema, SMALL)
    before = {name: v.numpy().copy() for name, (v, _) in model.torch_parameters().items()}
    trainer = Trainer(model, TrainConfig(model="deepfm", framework="tf", init="torch_default", **SMALL))
    trainer.prepare(store)
    after = {name: v.numpy() for name, (v, _) in model.torch_parameters().items()}
    redrawn = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert redrawn == sorted(k for k in before if k.startswith("dnn.layers.") and k.endswith(("weight", "bias")))
    kernel = after["dnn.layers.0.weight"]  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not Xavier normal
    bound = 1 / math.sqrt(kernel.shape[0])
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound


def test_a_diverging_run_stops_with_one_line_and_keeps_finite_checkpoints(store, tmp_path):
    from ctrkit.training.errors import TrainingDivergedError

    cfg = config(store, tmp_path / "run", epochs=2, checkpoint_every=4)
    model, _ = build_tf_model("deepfm", store.schema, cfg.hparams())
    trainer = Trainer(model, cfg, schema=store.schema)

    def poison(step):
        if step == 6:
            kernel = model.dnn.layers[0].kernel
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    trainer.step_hook = poison
    with pytest.raises(TrainingDivergedError, match=r"training diverged: .* by epoch 1, step (7|8|10)") as info:
        trainer.fit(store)
    assert "\n" not in str(info.value) and "last.tf (epoch 1, step 4)" in str(info.value)
    last = load_checkpoint(tmp_path / "run" / "last.tf")
    assert last["progress"]["step"] == 4  # the last finite weights
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped"] == "diverged"


# ---------------------------------------------------------------------------------------------
# group ids: gAUC
# ---------------------------------------------------------------------------------------------
def test_a_store_with_group_ids_reports_gauc(tmp_path):
    """Rows carrying the optional ``group`` column (users) train in TF and report gAUC, which
    ``--monitor gauc`` can follow; the groups reach evaluation unchanged."""
    from _train_helpers import planted_columns, planted_schema

    from ctrkit.data.store import StoreWriter
    from ctrkit.metrics import evaluation_metrics

    with StoreWriter(tmp_path / "grouped.lmdb", planted_schema(), chunk_rows=500) as writer:
        for split, rows, seed in (("train", 2000, 1), ("valid", 800, 2), ("test", 800, 3)):
            columns = planted_columns(rows, seed)
            columns["group"] = (columns["sparse"][:, 0] // 4).astype(np.int64)  # 5 "users"
            writer.append(split, columns)
        store = writer.commit({"options": {"source": "planted rows with groups"}})
    metrics = train_from_config(config(store, tmp_path / "run", epochs=1, monitor="gauc"))
    assert 0.5 < metrics["history"][0]["valid_gauc"] <= 1 and 0.5 < metrics["test"]["gauc"] <= 1
    trainer = Trainer.from_checkpoint(tmp_path / "run")
    probs, labels, groups = trainer.predict_split(store, "test")
    test = store.read_split("test")
    np.testing.assert_array_equal(groups, test["group"])
    np.testing.assert_array_equal(labels, test["label"])
    assert evaluation_metrics(labels, probs, groups)["gauc"] == pytest.approx(metrics["test"]["gauc"], abs=1e-12)
