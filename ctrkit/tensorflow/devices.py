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
    ctrkit train --framework tf --model deepfm --data criteo.lmdb ...

and ``"index": 1`` on ``host2``. Every worker reads its own replicas' shards of the store (each
machine needs the store at the same path), gradients are all-reduced across all replicas of all
machines, and worker 0 (the chief) writes the checkpoints and metrics. The ports must be
reachable between the machines. With ``--gpu_ids`` each worker uses those of its own GPUs.

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
from typing import Iterator, Sequence

import keras
import tensorflow as tf

from ctrkit.config import PRECISIONS
from ctrkit.errors import ConfigError

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


def make_strategy(gpu_ids: Sequence[int] = (), cpu_processes: int = 0) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy of the device rules in the module docstring."""
    gpu_ids = list(gpu_ids)
    if gpu_ids and cpu_processes > 1:
        raise ConfigError("--cpu_processes cannot be combined with --gpu_ids (pick CPU or GPU training)")
    check_gpu_ids(gpu_ids)
    if multi_worker_config() is not None:
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
    if gpu_ids:
        gpus = tf.config.list_physical_devices("GPU")
        try:
            tf.config.set_visible_devices([gpus[i] for i in gpu_ids], "GPU")
        except RuntimeError:
            raise ConfigError(
                "cannot select --gpu_ids for the multi-worker strategy: TensorFlow has already started"
            ) from None
    return tf.distribute.MultiWorkerMirroredStrategy()


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
