"""ctrkit.tensorflow.devices: strategy choice, two logical CPU replicas, two workers on loopback.

Logical devices can only be configured before TensorFlow starts, and a multi-worker cluster
needs one process per worker, so those tests run fresh Python processes; their checks are
asserted inside the child and its findings printed as one JSON line for the parent to check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import PYTHON, ROOT, build_store, free_loopback_ports  # noqa: E402

from ctrkit.errors import ConfigError  # noqa: E402
from ctrkit.tensorflow import devices  # noqa: E402

CHILD_TIMEOUT = 120


def run_child(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    full_env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}, **(env or {}))
    return subprocess.Popen([PYTHON, "-c", textwrap.dedent(code), *args], cwd=str(ROOT), env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_result(proc: subprocess.Popen) -> dict:
    try:
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child did not finish within {CHILD_TIMEOUT} s:\n{err[-3000:]}")
    assert proc.returncode == 0, f"child failed (exit {proc.returncode}):\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# In this process
# ---------------------------------------------------------------------------------------------
def test_no_gpu_ids_is_the_default_strategy(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = devices.make_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


def test_no_gpu_ids_hides_the_gpus_or_pins_the_cpu(monkeypatch):
    """On a GPU build, TensorFlow would place the run on GPU 0 unasked; torch's trainer uses none."""
    fake = [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
    hidden, made = [], []
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: fake if kind == "GPU" else [])
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda devs, kind=None: hidden.append((devs, kind)))
    assert devices.make_strategy() is tf.distribute.get_strategy()
    assert hidden == [([], "GPU")]

    def too_late(devs, kind=None):
        raise RuntimeError("Visible devices cannot be modified after being initialized")

    monkeypatch.setattr(tf.config, "set_visible_devices", too_late)
    monkeypatch.setattr(tf.distribute, "OneDeviceStrategy", lambda device: made.append(device) or "one")
    assert devices.make_strategy() == "one" and made == ["/cpu:0"]


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="checks the messages of a GPU-less machine")
@pytest.mark.parametrize("gpu_ids", [[0], [0, 1]])
def test_missing_gpus_are_one_line_config_errors(gpu_ids):
    with pytest.raises(ConfigError, match=r"--gpu_ids [0-9,]+: TensorFlow sees no GPU") as info:
        devices.make_strategy(gpu_ids)
    assert "\n" not in str(info.value)


def test_gpu_ids_beyond_the_visible_ones(monkeypatch):
    fake = [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: fake if kind == "GPU" else [])
    devices.check_gpu_ids([0])
    with pytest.raises(ConfigError, match=r"--gpu_ids 0,2: no GPU 2; visible GPUs: 0 "):
        devices.check_gpu_ids([0, 2])


def test_one_and_several_gpu_ids_pick_their_strategies(monkeypatch):
    """The choice itself, with the GPU check and the strategies' constructors stubbed."""
    made = []
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setattr(devices, "check_gpu_ids", lambda ids: None)
    monkeypatch.setattr(tf.distribute, "OneDeviceStrategy", lambda device: made.append(("one", device)) or "one")
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", lambda devices: made.append(("mirrored", devices)) or "mirrored")
    assert devices.make_strategy([1]) == "one"
    assert devices.make_strategy([0, 2]) == "mirrored"
    assert made == [("one", "/gpu:1"), ("mirrored", ["/gpu:0", "/gpu:2"])]
    with pytest.raises(ConfigError, match="cannot be combined"):
        devices.make_strategy([0], cpu_processes=2)


def test_tf_config_selects_the_multi_worker_strategy(monkeypatch):
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", lambda: "multi-worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}))
    assert devices.make_strategy() == "multi-worker"
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG is not valid JSON"):
        devices.make_strategy()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": ["a:1"]}))
    with pytest.raises(ConfigError, match="TF_CONFIG needs"):
        devices.make_strategy()


def test_tf_config_is_ignored_when_asked(monkeypatch):
    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", lambda: "multi-worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}))
    strategy = devices.make_strategy(multi_worker=False)  # the one-machine rule: default (or CPU-pinned) strategy
    assert strategy != "multi-worker" and strategy.num_replicas_in_sync == 1


@pytest.mark.parametrize("cluster, task, rank", [
    ({"worker": ["a:1", "b:1", "c:1"]}, {"type": "worker", "index": 2}, (2, 3)),
    ({"worker": ["a:1"]}, {"type": "worker", "index": 0}, (0, 1)),
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, {"type": "chief", "index": 0}, (0, 3)),
    ({"chief": ["a:1"], "worker": ["b:1", "c:1"]}, {"type": "worker", "index": 0}, (1, 3)),
])
def test_worker_rank_orders_the_chief_first(cluster, task, rank):
    assert devices.worker_rank({"cluster": cluster, "task": task}) == rank


@pytest.mark.parametrize("cluster, task, message", [
    ({"worker": ["a:1"], "ps": ["b:1"]}, {"type": "worker", "index": 0}, "chief and worker tasks only"),
    ({"worker": ["a:1"], "evaluator": ["b:1"]}, {"type": "evaluator", "index": 0}, "chief and worker tasks only"),
    ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 2}, "task index 2 is not among the 2 worker"),
    ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": "1"}, "task index '1' is not among"),
    ({"chief": ["a:1", "b:1"]}, {"type": "chief", "index": 0}, "at most one chief"),
    ({"worker": "a:1,b:1"}, {"type": "worker", "index": 0}, "lists of"),
])
def test_worker_rank_refuses_what_does_not_train(cluster, task, message):
    with pytest.raises(ConfigError, match=message) as info:
        devices.worker_rank({"cluster": cluster, "task": task})
    assert "\n" not in str(info.value)


def test_values_cross_workers_as_safetensors_and_json():
    from ctrkit.errors import InputError
    from ctrkit.training.errors import TrainingDivergedError

    value = ({"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.float64(2.5)},
              "extra": [np.zeros(0, np.int64), np.array(3, np.int32)], "path": Path("runs/a"),
              "best": float("-inf"), "none": None, "flag": True, "name": "x"},
             InputError("last.tf: damaged"), TrainingDivergedError("diverged"))
    data = devices.encode_value(value)
    assert data[8:].lstrip().startswith(b"{")  # a safetensors file: a length, then its JSON header
    got, error, diverged = devices.decode_value(data)
    assert got["model"]["w"].dtype == np.float32 and np.array_equal(got["model"]["w"], value[0]["model"]["w"])
    assert got["model"]["s"] == 2.5 and got["extra"][1].shape == () and int(got["extra"][1]) == 3
    assert got["extra"][0].shape == (0,) and got["path"] == Path("runs/a") and got["best"] == float("-inf")
    assert (got["none"], got["flag"], got["name"]) == (None, True, "x")
    assert type(error) is InputError and str(error) == "last.tf: damaged"
    assert type(diverged) is TrainingDivergedError
    with pytest.raises(TypeError, match="cannot cross"):
        devices.encode_value({"f": object()})


def test_splitting_the_cpu_after_tensorflow_started_is_a_clear_error():
    tf.constant(1.0)  # TensorFlow has started in this process
    have = len(tf.config.list_logical_devices("CPU"))
    assert len(devices.split_cpu(have)) == have  # the split it already has: nothing to do
    with pytest.raises(ConfigError, match=f"TensorFlow has already started with {have}"):
        devices.split_cpu(have + 1)


@pytest.mark.parametrize("precision, compute", [("bf16", "bfloat16"), ("fp32", "float32")])
def test_precision_policy_is_scoped(precision, compute):
    before = keras.config.dtype_policy().name
    with devices.precision_policy(precision) as policy:
        assert policy.compute_dtype == compute
        layer = keras.layers.Dense(2)
        assert layer.compute_dtype == compute and layer.variable_dtype == "float32"
    assert keras.config.dtype_policy().name == before
    with pytest.raises(ConfigError, match="--precision must be one of"):
        with devices.precision_policy("fp16"):
            pass
    assert keras.config.dtype_policy().name == before


def test_precision_policy_restores_after_an_error():
    before = keras.config.dtype_policy().name
    with pytest.raises(ValueError):
        with devices.precision_policy("bf16"):
            raise ValueError("inside")
    assert keras.config.dtype_policy().name == before


# ---------------------------------------------------------------------------------------------
# Two logical CPU devices: MirroredStrategy and the distributed dataset
# ---------------------------------------------------------------------------------------------
MIRRORED_CHILD = """
import json, sys
import numpy as np
from ctrkit.tensorflow.devices import make_strategy
strategy = make_strategy(cpu_processes=2)      # before any other TensorFlow use
import tensorflow as tf
from ctrkit.data.batches import BatchReader
from ctrkit.data.store import Store
from ctrkit.tensorflow.loader import make_distributed_dataset

store, G = Store(sys.argv[1]), 200
assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
assert [d.split("/")[-1] for d in strategy.extended.worker_devices] == ["device:CPU:0", "device:CPU:1"]
with strategy.scope():
    w = tf.Variable([0.5, -2.0])

@tf.function
def step(batch):
    def replica(b):   # a tiny replicated computation, all-reduced
        return tf.reduce_sum(b["dense"] * w) + tf.reduce_sum(b["label"])
    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica, args=(batch,)), axis=None)

global_reader = BatchReader(store, "train", G, shuffle=True, seed=5, shuffle_window=2)
shards = [BatchReader(store, "train", G // 2, shuffle=True, seed=5, shuffle_window=2, rank=r, world_size=2,
                      even_shards=True) for r in range(2)]
report = {}
for epoch, start in ((1, 0), (2, 7)):
    expected = [list(s.iter_epoch(epoch, start_batch=start)) for s in shards]
    rows, steps = [], 0
    for s, element in enumerate(make_distributed_dataset(strategy, global_reader, epoch, start_batch=start)):
        local = strategy.experimental_local_results(element)
        assert len(local) == 2
        for r in range(2):
            for key, array in expected[r][s].items():
                np.testing.assert_array_equal(local[r][key].numpy(), array, err_msg=f"epoch {epoch} step {s} replica {r} {key}")
            rows.append(np.concatenate([local[r]["sparse"].numpy(), local[r]["dense"].numpy().view(np.int32),
                                        local[r]["label"].numpy()[:, None].view(np.int32)], axis=1))
        both = [expected[r][s] for r in range(2)]
        want = sum(float((b["dense"] * np.array([0.5, -2.0], np.float32)).sum() + b["label"].sum()) for b in both)
        np.testing.assert_allclose(float(step(element)), want, rtol=1e-5, err_msg=f"all-reduce at step {s}")
        steps += 1
    assert steps == len(expected[0]) == len(expected[1]), (steps, len(expected[0]))
    report[f"epoch{epoch}"] = {"steps": steps, "rows": int(sum(len(r) for r in rows))}
    if start == 0:   # every row of the split exactly once over the two replicas
        split = store.read_split("train")
        everything = np.concatenate([split["sparse"], split["dense"].view(np.int32), split["label"][:, None].view(np.int32)], axis=1)
        seen = np.concatenate(rows)
        order = lambda a: a[np.lexsort(a.T[::-1])]
        np.testing.assert_array_equal(order(seen), order(everything))
print(json.dumps(report))
"""


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    build_store(tmp_path / "s.lmdb", train=3000, valid=0, test=0, chunk_rows=256)
    report = child_result(run_child(MIRRORED_CHILD, str(tmp_path / "s.lmdb")))
    # 3000 rows, 100 per replica and step: 15 steps; resumed at step 7: 8 steps
    assert report == {"epoch1": {"steps": 15, "rows": 3000}, "epoch2": {"steps": 8, "rows": 1600}}


# ---------------------------------------------------------------------------------------------
# Two workers on loopback: MultiWorkerMirroredStrategy through TF_CONFIG
# ---------------------------------------------------------------------------------------------
WORKER_CHILD = """
import json, os, sys
import numpy as np
from ctrkit.tensorflow.devices import make_strategy
strategy = make_strategy()
import tensorflow as tf
from ctrkit.data.batches import BatchReader
from ctrkit.errors import ConfigError
from ctrkit.tensorflow import devices
from ctrkit.tensorflow.loader import make_distributed_dataset

index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), type(strategy)

@tf.function
def all_reduce(value):
    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: value), axis=None)

total = float(all_reduce(tf.constant(float(10 ** index))))
summed = devices.all_workers_sum(strategy, [index + 1, 10], tf.int64).tolist()
sent = {"w": np.arange(5, dtype=np.float32) * 1.5, "why": ConfigError("x")} if index == 0 else None
got = devices.broadcast_value(strategy, sent, index == 0)
payload = bytes(range(256)) * 5 + b"xyz"   # several chunks of 64 bytes and a short one
assert devices.broadcast_bytes(strategy, payload if index == 0 else None, index == 0, chunk=64) == payload
assert np.array_equal(got["w"], np.arange(5, dtype=np.float32) * 1.5) and type(got["why"]) is ConfigError
label_sum = 0.0
sparse_sum = 0
steps = 0
reader = BatchReader(sys.argv[1], "train", 64, shuffle=True, seed=1)
for element in make_distributed_dataset(strategy, reader, epoch=0):
    (batch,) = strategy.experimental_local_results(element)
    label_sum += float(batch["label"].numpy().sum())
    sparse_sum += int(batch["sparse"].numpy().astype(np.int64).sum())
    steps += 1
print(json.dumps({"index": index, "replicas": strategy.num_replicas_in_sync, "sum": total, "summed": summed,
                  "rank": devices.strategy_rank(strategy),
                  "steps": steps, "label_sum": label_sum, "sparse_sum": sparse_sum}))
"""


def test_two_workers_on_loopback(tmp_path):
    store = build_store(tmp_path / "s.lmdb", train=640, valid=0, test=0, chunk_rows=100)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_loopback_ports(2)]}
    procs = [
        run_child(WORKER_CHILD, str(tmp_path / "s.lmdb"),
                  env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=CHILD_TIMEOUT) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        errors = "\n".join(p.communicate()[1][-1500:] for p in procs)
        if "Started server" not in errors and "grpc" in errors.lower():
            pytest.skip(f"the collective could not start on 127.0.0.1 within {CHILD_TIMEOUT} s:\n{errors}")
        pytest.fail(f"the two workers did not finish within {CHILD_TIMEOUT} s:\n{errors}")
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, f"worker failed (exit {p.returncode}):\n{err[-3000:]}"
    reports = sorted((json.loads(out.strip().splitlines()[-1]) for out, _ in outs), key=lambda r: r["index"])
    assert [r["replicas"] for r in reports] == [2, 2]
    assert [r["sum"] for r in reports] == [11.0, 11.0]  # 10**0 + 10**1 on both workers
    assert [r["summed"] for r in reports] == [[3, 20], [3, 20]]  # the loop's sums: each worker counted once
    assert [r["rank"] for r in reports] == [[0, 2], [1, 2]]
    # each worker read its own shard: 320 rows, 10 steps of 32 rows; together, the split
    assert [r["steps"] for r in reports] == [10, 10]
    split = store.read_split("train")
    assert sum(r["label_sum"] for r in reports) == pytest.approx(float(split["label"].sum()))
    assert sum(r["sparse_sum"] for r in reports) == int(split["sparse"].astype(np.int64).sum())
    assert reports[0]["sparse_sum"] != reports[1]["sparse_sum"]
