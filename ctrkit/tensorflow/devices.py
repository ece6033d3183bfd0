"""Where a TensorFlow run computes: the ``tf.distribute`` strategy, logical CPU replicas, precision.

The device rules mirror the PyTorch trainer's (``--gpu_ids``, ``--cpu_processes``):

* no ``gpu_ids`` -> the default strategy on the CPU (GPUs hidden from TensorFlow, as torch's
  trainer uses none unless asked: :func:`hide_gpus`);
* one id ``N`` -> ``OneDeviceStrategy("/gpu:N")``;
* several ids -> ``MirroredStrategy`` over those GPUs (all-reduce of the gradients each step,
  the global batch split evenly: :func:`ctrkit.tensorflow.loader.make_distributed_dataset`);
* ``cpu_processes = N > 1`` -> ``MirroredStrategy`` over ``N`` *logical* CPU devices of this one
  process (PyTorch starts ``N`` processes instead); the same replica arithmetic as ``N`` GPUs,
  which is how the multi-replica path is tested without GPUs;
* ``TF_CONFIG`` in the environment -> ``MultiWorkerMirroredStrategy`` (several machines).

Logical CPU devices must be configured before TensorFlow initialises its devices, i.e. before
the first op, tensor, variable, ``tf.config.list_logical_devices`` or strategy of the process.
:func:`split_cpu` therefore runs first thing (the trainer calls it before building the model);
once TensorFlow has started it raises :class:`~ctrkit.errors.ConfigError` (unless the CPU is
already split the same way), since TensorFlow cannot re-create its devices in a running process.

Several machines (``MultiWorkerMirroredStrategy``): start the same ``ctrkit train`` command on
every machine, each with ``TF_CONFIG`` naming all workers and its own index, e.g. on the first::

    export TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                       "task": {"type": "worker", "index": 0}}'
    ctrkit train --framework tf --model deepfm --data criteo.lmdb --model_save_dir runs/d ...

and ``"index": 1`` on ``host2``. A ``"chief"`` job may name the first machine instead (the chief is
then worker 0 and the ``"worker"`` indices follow it); other task types (``ps``, ``evaluator``)
are refused. :func:`worker_rank` gives a task its ``(rank, world_size)``. Every worker reads its
own replicas' shards of the store (each machine needs the store at the same path), gradients are
all-reduced across all replicas of all machines (gRPC between the machines; ring all-reduce on
CPUs, NCCL on GPUs), and worker 0 (the chief) writes the checkpoints and metrics. The ports must be
reachable between the machines. With ``--gpu_ids`` each worker uses those of its own GPUs.

Collectives of the training loop across workers (:func:`all_workers_sum`, :func:`broadcast_bytes`,
:func:`broadcast_value`) are ``strategy.reduce`` sums in which only one local replica of each
worker (or only the chief, for a broadcast) contributes a non-zero value: exact for integers, and
for floats a sum with zeros. Python values cross as a safetensors file (JSON plus numpy arrays:
:func:`encode_value`), so no worker unpickles what another sent.

Example::

    split_cpu(2)                          # before anything else touches TensorFlow
    strategy = make_strategy(cpu_processes=2)
    with precision_policy("bf16"):
        model = build_model(...)          # Keras layers created with mixed_bfloat16
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import PurePath
from typing import Any, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from ctrkit.config import PRECISIONS
from ctrkit.errors import ConfigError, CtrkitError

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}


def check_gpu_ids(gpu_ids: Sequence[int]) -> None:
    """ConfigError unless every id names a GPU TensorFlow can see."""
    if not gpu_ids:
        return
    shown = ",".join(str(i) for i in gpu_ids)
    visible = tf.config.list_physical_devices("GPU")
    if not visible:
        raise ConfigError(
            f"--gpu_ids {shown}: TensorFlow sees no GPU (a CPU-only build, e.g. tensorflow-cpu, or no "
            "CUDA driver; GPUs need tensorflow[and-cuda]); omit --gpu_ids to train on CPU"
        )
    missing = [i for i in gpu_ids if i >= len(visible)]
    if missing:
        names = ", ".join(f"{i} ({device.name})" for i, device in enumerate(visible))
        raise ConfigError(f"--gpu_ids {shown}: no GPU {','.join(map(str, missing))}; visible GPUs: {names}")


def multi_worker_config() -> dict | None:
    """The parsed ``TF_CONFIG`` when it names a cluster, else None (ConfigError when malformed)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or not isinstance(config.get("task"), dict):
        raise ConfigError('TF_CONFIG needs {"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}}')
    return config


#: the ``TF_CONFIG`` jobs that train, in rank order (TensorFlow's ``id_in_cluster``)
TRAINING_JOBS = ("chief", "worker")


def worker_rank(config: dict) -> tuple[int, int]:
    """``(rank, world_size)`` of this task of a ``TF_CONFIG`` cluster: the chief (if any) is rank 0,
    then the workers by index. ConfigError for a task that does not train or is not in the cluster."""
    cluster, task = config["cluster"], config["task"]
    task_type, index = task.get("type"), task.get("index", 0)
    others = sorted(set(cluster) - set(TRAINING_JOBS))
    if others or task_type not in TRAINING_JOBS:
        raise ConfigError(f"TF_CONFIG: ctrkit trains with chief and worker tasks only (task type {task_type!r}"
                          f"{', jobs ' + ', '.join(others) if others else ''}); drop the other jobs")
    sizes = [cluster.get(job, []) for job in TRAINING_JOBS]
    if not all(isinstance(hosts, list) for hosts in sizes) or len(sizes[0]) > 1:
        raise ConfigError('TF_CONFIG: "cluster" needs lists of "host:port" addresses, and at most one chief')
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster.get(task_type, [])):
        raise ConfigError(f"TF_CONFIG: task index {index!r} is not among the {len(cluster.get(task_type, []))} "
                          f"{task_type} address(es) of the cluster")
    rank = index + (len(sizes[0]) if task_type == "worker" else 0)
    return rank, len(sizes[0]) + len(sizes[1])


def split_cpu(n: int) -> list[tf.config.LogicalDevice]:
    """Split the physical CPU into ``n`` logical devices; call it before TensorFlow initialises.

    Returns the logical CPU devices. Raises ConfigError when TensorFlow has already created its
    devices with another split.
    """
    if n < 1:
        raise ConfigError(f"the CPU can be split into n >= 1 logical devices, got {n}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
    current = tf.config.get_logical_device_configuration(cpu)
    if len(current or [None]) == n:
        return tf.config.list_logical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        raise ConfigError(
            f"cannot split the CPU into {n} logical devices: TensorFlow has already started with {have}; "
            "split it before the first TensorFlow op of the process"
        ) from None
    return tf.config.list_logical_devices("CPU")


def make_strategy(gpu_ids: Sequence[int] = (), cpu_processes: int = 0, *,
                  multi_worker: bool = True) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy of the device rules in the module docstring.

    ``multi_worker=False`` ignores ``TF_CONFIG`` (scoring a checkpoint on one machine of a cluster).
    """
    gpu_ids = list(gpu_ids)
    if gpu_ids and cpu_processes > 1:
        raise ConfigError("--cpu_processes cannot be combined with --gpu_ids (pick CPU or GPU training)")
    check_gpu_ids(gpu_ids)
    if multi_worker and multi_worker_config() is not None:
        return _multi_worker_strategy(gpu_ids, cpu_processes)
    if cpu_processes > 1:
        devices = split_cpu(cpu_processes)
        return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    if len(gpu_ids) == 1:
        return tf.distribute.OneDeviceStrategy(f"/gpu:{gpu_ids[0]}")
    if gpu_ids:
        return tf.distribute.MirroredStrategy(devices=[f"/gpu:{i}" for i in gpu_ids])
    if not hide_gpus():
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    return tf.distribute.get_strategy()


def hide_gpus() -> bool:
    """Hide every GPU from TensorFlow (which would otherwise place ops on GPU 0 unasked); whether
    that worked. Too late once TensorFlow has initialised its devices: False, and the caller pins
    the run to the CPU by its strategy instead."""
    if not tf.config.list_physical_devices("GPU"):
        return True
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        return False
    return True


def _multi_worker_strategy(gpu_ids: list[int], cpu_processes: int) -> tf.distribute.Strategy:
    """One worker of a ``TF_CONFIG`` cluster, with its local replicas (selected GPUs or the CPU)."""
    if cpu_processes > 1:
        raise ConfigError("--cpu_processes cannot be combined with TF_CONFIG (one CPU replica per worker)")
    worker_rank(multi_worker_config())  # a task that does not train: one line, before TensorFlow waits for it
    if gpu_ids:
        gpus = tf.config.list_physical_devices("GPU")
        try:
            tf.config.set_visible_devices([gpus[i] for i in gpu_ids], "GPU")
        except RuntimeError:
            raise ConfigError(
                "cannot select --gpu_ids for the multi-worker strategy: TensorFlow has already started"
            ) from None
    elif not hide_gpus():
        raise ConfigError("cannot hide the GPUs for a CPU multi-worker run: TensorFlow has already started")
    return tf.distribute.MultiWorkerMirroredStrategy()


def strategy_rank(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """``(rank, world_size)`` of this process among the workers of ``strategy`` (``(0, 1)`` unless
    it is a ``MultiWorkerMirroredStrategy`` of several workers)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0, 1
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return 0, 1
    cluster = {job: list(resolver.cluster_spec().job_tasks(job)) for job in resolver.cluster_spec().jobs}
    return worker_rank({"cluster": cluster, "task": {"type": resolver.task_type, "index": resolver.task_id}})


# ---------------------------------------------------------------------------------------------
# Collectives across the workers of a MultiWorkerMirroredStrategy (the training loop's)
# ---------------------------------------------------------------------------------------------
def all_workers_sum(strategy: tf.distribute.Strategy, value: Any, dtype: tf.DType = tf.float64) -> np.ndarray:
    """``value`` (a number or an array, the same shape on every worker) summed over the workers.

    Each worker's first local replica contributes ``value``, its other replicas zeros, so the sum
    counts every worker once whatever its number of GPUs. Called by every worker at the same point.
    """
    return _sum_from(strategy, np.asarray(value), dtype, chief_only=False)


#: bytes a broadcast sends per collective: bounds the extra memory of a large checkpoint's broadcast
BROADCAST_CHUNK = 64 << 20


def broadcast_bytes(strategy: tf.distribute.Strategy, data: bytes | None, is_chief: bool,
                    chunk: int = BROADCAST_CHUNK) -> bytes:
    """The chief's ``data`` on every worker (the others pass anything, e.g. None), ``chunk`` bytes
    per collective (a multiple of 8)."""
    length = int(_sum_from(strategy, np.int64(len(data) if is_chief else 0), tf.int64, chief_only=True))
    received = bytearray(length)
    source = np.frombuffer(data, np.uint8) if is_chief else None
    for start in range(0, length, chunk):
        size = min(chunk, length - start)
        words = np.zeros((size + 7) // 8, np.int64)
        if is_chief:
            words.view(np.uint8)[:size] = source[start:start + size]
        words = _sum_from(strategy, words, tf.int64, chief_only=True)  # the others add zeros: exact
        received[start:start + size] = words.view(np.uint8)[:size].tobytes()
    return bytes(received)


def broadcast_value(strategy: tf.distribute.Strategy, value: Any, is_chief: bool) -> Any:
    """The chief's ``value`` on every worker (see :func:`encode_value` for what it may hold)."""
    return decode_value(broadcast_bytes(strategy, encode_value(value) if is_chief else None, is_chief))


def _sum_from(strategy: tf.distribute.Strategy, value: np.ndarray, dtype: tf.DType, *, chief_only: bool) -> np.ndarray:
    local = len(strategy.extended.worker_devices)
    tensor = tf.constant(value, dtype)

    def replica_value(context: tf.distribute.ValueContext) -> tf.Tensor:
        contributes = context.replica_id_in_sync_group == 0 if chief_only else \
            context.replica_id_in_sync_group % local == 0
        return tf.identity(tensor) if contributes else tf.zeros_like(tensor)

    values = strategy.experimental_distribute_values_from_function(replica_value)
    return strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None).numpy()


_TREE_KEY = "tree"


def encode_value(value: Any) -> bytes:
    """``value`` as a safetensors file: its arrays as tensors, the rest as JSON (no pickle).

    ``value`` may nest dicts (string keys), lists, tuples, strings, numbers, booleans, None, paths,
    numpy arrays and scalars, and ctrkit errors (sent as their class name and message).
    """
    from safetensors.numpy import save

    arrays: dict[str, np.ndarray] = {}

    def tree(item: Any) -> Any:
        if isinstance(item, np.ndarray) or hasattr(item, "numpy"):
            key = f"a{len(arrays)}"
            arrays[key] = np.require(np.asarray(item), requirements="C")
            return {"__array__": key}
        if isinstance(item, np.generic):
            return item.item()
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                raise TypeError("only dicts with string keys cross between workers")
            return {"__dict__": {k: tree(v) for k, v in item.items()}}
        if isinstance(item, (list, tuple)):
            return {"__tuple__" if isinstance(item, tuple) else "__list__": [tree(v) for v in item]}
        if isinstance(item, PurePath):
            return {"__path__": str(item)}
        if isinstance(item, CtrkitError):
            return {"__error__": type(item).__name__, "args": [tree(a) for a in item.args]}
        if item is None or isinstance(item, (str, int, float, bool)):
            return item
        raise TypeError(f"a {type(item).__name__} cannot cross between workers")

    skeleton = json.dumps(tree(value))
    return save(arrays, metadata={_TREE_KEY: skeleton})


def decode_value(data: bytes) -> Any:
    """Inverse of :func:`encode_value`."""
    from pathlib import Path

    from safetensors.numpy import load

    arrays = load(data)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])  # safetensors: u64 length, JSON
    errors = ctrkit_error_classes()

    def value(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if "__array__" in node:
            return arrays[node["__array__"]]
        if "__dict__" in node:
            return {k: value(v) for k, v in node["__dict__"].items()}
        if "__list__" in node:
            return [value(v) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(value(v) for v in node["__tuple__"])
        if "__path__" in node:
            return Path(node["__path__"])
        return errors.get(node["__error__"], CtrkitError)(*[value(a) for a in node["args"]])

    return value(json.loads(header["__metadata__"][_TREE_KEY]))


def ctrkit_error_classes() -> dict[str, type]:
    """Every :class:`~ctrkit.errors.CtrkitError` class by name (those imported so far)."""
    found, todo = {}, [CtrkitError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


@contextlib.contextmanager
def precision_policy(precision: str) -> Iterator[keras.DTypePolicy]:
    """Keras's global dtype policy for ``--precision`` inside the block, the previous one after it.

    ``bf16`` -> ``mixed_bfloat16`` (bfloat16 compute, float32 variables), ``fp32`` -> ``float32``.
    Layers take the policy when they are created, so build the model inside the block.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[precision])
    try:
        yield keras.config.dtype_policy()
    finally:
        keras.config.set_dtype_policy(previous)
