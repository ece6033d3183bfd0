"""The TensorFlow side of training: the TF :class:`~ctrkit.training.backend.Backend`.

Mirror of :mod:`ctrkit.pytorch.trainer`. ``Trainer(model, config).fit(store)`` runs the whole
recipe through the framework-neutral core (:class:`ctrkit.training.loop.TrainingLoop`: epochs,
validation, plateau, early stopping, best and resumable checkpoints, test metrics,
``metrics.json``, TensorBoard, progress bars, divergence, signals, the run directory). What is
TensorFlow's own lives here:

* the optimiser: torch's exact update rules over torch's parameter groups
  (:mod:`ctrkit.tensorflow.optimizers`; Keras' own Adam is a different optimiser);
* one compiled training step (``tf.function``): BCE of the logits in float32, plus the embedding
  term (each :class:`~ctrkit.tensorflow.layers.EmbeddingTable` adds
  ``embedding_l2 * sum(rows ** 2) / B`` of the rows it looked up as a Keras ``add_loss``:
  :func:`~ctrkit.tensorflow.layers.set_embedding_l2`) and a model's auxiliary loss
  (:mod:`ctrkit.training.objective`); predictions; ``--precision bf16`` through Keras'
  ``mixed_bfloat16`` policy (:func:`~ctrkit.tensorflow.devices.precision_policy`: bf16 compute,
  float32 variables, float32 loss);
* devices (:func:`~ctrkit.tensorflow.devices.make_strategy`): no ``gpu_ids`` -> the default
  strategy on CPU; one id -> that GPU; several ids, or ``cpu_processes = N > 1`` (``N`` logical
  CPU devices of this one process) -> ``MirroredStrategy``: each global batch is split into even
  per-replica shards (:func:`~ctrkit.tensorflow.loader.make_distributed_dataset`, the rows that
  the ranks of a torch DDP run of the same global batch read), gradients are summed across the
  replicas and every replica applies the same update. It is one process (``world_size`` 1 for the
  loop);
* several machines: ``TF_CONFIG`` in the environment -> ``MultiWorkerMirroredStrategy``, one
  process (worker) per machine, each started with the same ``ctrkit train`` command::

      # on host1 (the chief: rank 0, writes the run directory)
      export TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                         "task": {"type": "worker", "index": 0}}'
      ctrkit train --framework tf --model deepfm --data /data/criteo.lmdb --batch_size 4096 \\
          --model_save_dir /shared/runs/deepfm [--gpu_ids 0,1]
      # on host2: the same command with "index": 1

  (a ``"chief"`` job may name the first machine instead; :func:`~ctrkit.tensorflow.devices.worker_rank`).
  Each worker is a rank of the loop (``rank``, ``world_size`` = workers): it reads the even shard
  of its own replicas (:func:`~ctrkit.tensorflow.loader.global_reader`; with one replica per
  worker, the rows rank ``w`` of a torch DDP run reads), ``--batch_size`` stays the *global*
  batch, gradients are all-reduced over every replica of every worker (ring all-reduce over gRPC
  on CPUs, NCCL on GPUs) and every worker applies the same update, so the weights stay equal.
  The loop's collectives (:meth:`Trainer.reduce_sum`, :meth:`~Trainer.barrier`,
  :meth:`~Trainer.broadcast_object`) are sums over the workers through the strategy
  (:func:`~ctrkit.tensorflow.devices.all_workers_sum`); objects cross as safetensors + JSON, never
  pickled. Validation and test predictions are sharded over the workers and gathered to every
  worker (:meth:`Trainer.predict_split`): each computes the same exact AUC/logloss over the whole
  split, so best/plateau/early-stop decisions agree without a broadcast. The chief alone writes
  ``last.tf``/``best.tf``, ``metrics.json``, ``encoder.npz`` and TensorBoard; the others write
  nothing. ``--resume``: the chief reads ``last.tf`` and broadcasts it, so only the chief needs the
  run directory. Each machine needs the store at the ``--data`` path. A worker that dies makes
  the others fail within TensorFlow's peer health check rather than wait forever;
* checkpoint files, their checks and the RNG states.

**Checkpoints** ``best.tf`` and ``last.tf`` are each ONE safetensors file (tensors and a JSON
string; nothing is unpickled), written atomically (:func:`ctrkit.fileio.atomic_output`)::

    model/<name>             every weight under its torch state_dict name, in torch's layout
                             (ctrkit.parity: Dense kernels transposed back to [out, in], ...):
                             the tensors of a best.tf ARE the torch model's state_dict
    extra/<i>                model variables without a torch counterpart (Keras dropout seed
                             states), in model.variables order; their paths in the metadata
    optimizer/<slot>/<name>  last.tf: the optimiser's slots (exp_avg, exp_avg_sq, sum), torch layout
    rng/numpy_keys           last.tf: numpy's MT19937 keys
    metadata["ctrkit"]       JSON: format="ctrkit-tf-checkpoint", version, kind, ctrkit/tensorflow/
                             keras versions, model_name, hparams, schema, config, the extra
                             variables' paths; best: epoch, valid; last: progress, scheduler,
                             optimizer (name, step), rng (python, numpy position), replicas

Every loaded checkpoint is checked: a missing, empty (0 bytes), truncated or foreign file, its
entries and their types, the model its schema and hyper-parameters describe (refused before it is
allocated when its tables could not fit in memory), every weight's name and shape against that
model, finite weights. Each problem is one :class:`~ctrkit.errors.InputError` naming the file.
:func:`save_model_checkpoint` and :func:`load_model_checkpoint` are the same format for any
model (``ctrkit convert`` uses them).

Determinism: ``--seed`` seeds python, numpy, TensorFlow and Keras; on CPU the trainer also calls
``tf.config.experimental.enable_op_determinism()`` (process-wide). Two CPU runs with the same seed
give identical metrics, and a resumed run reproduces the uninterrupted one exactly: the data order
is a function of ``(seed, epoch)``, and ``last.tf`` holds the optimiser state, the dropout seed
states and the python/numpy RNG states of the step where it was written.

Example::

    store = Store("s.lmdb")
    config = TrainConfig(model="deepfm", framework="tf", epochs=3, model_save_dir="runs/deepfm").validate()
    metrics = fit_from_config(config, store)
    Trainer.from_checkpoint("runs/deepfm").evaluate(store, "test")
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from ctrkit import __version__
from ctrkit.config import TrainConfig
from ctrkit.data.batches import BatchReader
from ctrkit.data.contract import check_batch
from ctrkit.data.store import Store
from ctrkit.errors import ConfigError, CtrkitError, InputError, StoreError
from ctrkit.fileio import atomic_output
from ctrkit.parity import LAYOUTS
from ctrkit.runtime import keep_freed_memory
from ctrkit.schema import Schema
from ctrkit.tensorflow.devices import (
    all_workers_sum,
    broadcast_value,
    check_gpu_ids,
    ctrkit_error_classes,
    make_strategy,
    multi_worker_config,
    precision_policy,
    strategy_rank,
    worker_rank,
)
from ctrkit.tensorflow.layers import set_embedding_l2
from ctrkit.tensorflow.layers.mlp import torch_default_initialise
from ctrkit.tensorflow.loader import global_reader, make_dataset, make_distributed_dataset, to_tensors
from ctrkit.tensorflow.optimizers import TorchRuleOptimizer, build_optimizer, parameter_groups  # noqa: F401
from ctrkit.training.backend import RunMeta
from ctrkit.training.facade import TrainerFacade, open_store
from ctrkit.training.loop import TrainingLoop
from ctrkit.training.objective import GROUP, LABEL, split_output, training_objective
from ctrkit.training.progress import Progress
from ctrkit.training.regularization import RegularizationSpec
from ctrkit.training.reporting import open_scalar_writer
from ctrkit.training.rundir import check_checkpoint_entries, checkpoint_name

CHECKPOINT_FORMAT = "ctrkit-tf-checkpoint"
CHECKPOINT_VERSION = 1
FRAMEWORK = "tf"
LAST = checkpoint_name(FRAMEWORK, "last")
BEST = checkpoint_name(FRAMEWORK, "best")
#: the safetensors metadata key holding the JSON entries
METADATA_KEY = "ctrkit"
MODEL, EXTRA, OPTIMIZER, NUMPY_KEYS = "model/", "extra/", "optimizer/", "rng/numpy_keys"


# ---------------------------------------------------------------------------------------------
# Process settings: threads, seeds, determinism, initialisation
# ---------------------------------------------------------------------------------------------
def set_threads(threads: int) -> str | None:
    """TensorFlow's intra- and inter-op thread pools of ``threads`` threads (0: TensorFlow's default).

    The pools are fixed when TensorFlow starts its runtime; afterwards a different number cannot
    be set, and the returned warning says so (None when the setting holds).
    """
    if not threads:
        return None
    threading = tf.config.threading
    if threading.get_intra_op_parallelism_threads() == threads:
        return None
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        have = threading.get_intra_op_parallelism_threads() or "its default number of"
        return f"warning: --threads {threads} ignored: TensorFlow has already started with {have} threads in this process"
    return None


def set_seed(seed: int) -> None:
    """Seed python, numpy, TensorFlow and Keras (``keras.utils.set_random_seed``)."""
    keras.utils.set_random_seed(seed % 2**32)


def set_determinism(on_cpu: bool) -> None:
    """Deterministic TensorFlow ops on CPU (process-wide; GPU kernels keep their speed)."""
    if on_cpu:
        tf.config.experimental.enable_op_determinism()


def initialise_weights(model: keras.Model, scheme: str) -> None:
    """Apply ``TrainConfig.init``: ``xavier_normal`` keeps the models' own, ``torch_default`` re-draws
    the Dense/Conv1d counterparts of torch's ``nn.Linear``/``nn.Conv1d`` with torch's default
    (:func:`~ctrkit.tensorflow.layers.mlp.torch_default_initialise`; Keras' global seed)."""
    if scheme == "xavier_normal":
        return
    if scheme != "torch_default":
        raise ConfigError(f"unknown initialisation {scheme!r}")
    torch_default_initialise(model)


def rng_state() -> tuple[dict[str, Any], np.ndarray]:
    """Python's and numpy's RNG states: ``(plain values, numpy's MT19937 keys as int64)``."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
             "numpy": {"pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    return state, keys.astype(np.int64)


def set_rng_state(state: Mapping[str, Any], numpy_keys: np.ndarray) -> None:
    """Inverse of :func:`rng_state`."""
    n = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(numpy_keys).astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


# ---------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------
#: Entries every checkpoint's metadata has, with their types; ``last.tf`` adds :data:`_RESUME_ENTRIES`.
_CHECKPOINT_ENTRIES = {"format": str, "version": int, "kind": str, "model_name": str, "hparams": dict,
                       "schema": dict, "config": dict, "extra": list}
_RESUME_ENTRIES = {"optimizer": dict, "scheduler": dict, "progress": dict, "rng": dict}


def model_tensors(model: keras.Model) -> tuple[dict[str, np.ndarray], list[str]]:
    """The checkpoint tensors of a model's variables, and the paths of its extra variables.

    ``model/<torch name>`` in torch's layout for every :meth:`torch_parameters` entry;
    ``extra/<i>`` for the variables without a torch counterpart (dropout seed states).
    """
    params = model.torch_parameters()
    tensors = {MODEL + name: LAYOUTS[layout].to_torch(np.asarray(variable.numpy()))
               for name, (variable, layout) in params.items()}
    extras = _extra_variables(model)
    tensors.update({f"{EXTRA}{i}": np.asarray(v.numpy()) for i, v in enumerate(extras)})
    return tensors, [v.path for v in extras]


def _extra_variables(model: keras.Model) -> list[Any]:
    mapped = {id(variable) for variable, _ in model.torch_parameters().values()}
    return [v for v in model.variables if id(v) not in mapped]


def save_model_checkpoint(path: str | os.PathLike, model: keras.Model, entries: Mapping[str, Any], *,
                          kept: str | None = None, tensors: Mapping[str, np.ndarray] | None = None) -> None:
    """Write ``model``'s weights and ``entries`` (plain values) as one safetensors file, atomically.

    ``entries`` holds at least ``kind``, ``model_name``, ``hparams``, ``schema`` and ``config``;
    the format tag, versions and the extra variables' paths are added. ``tensors``: more tensors
    (a ``last`` checkpoint's optimiser slots and RNG keys). A full disk is an ``OutputError``
    ending with ``kept`` (default: the previous file is unchanged).
    """
    weights, extra_paths = model_tensors(model)
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "ctrkit_version": __version__,
            "tensorflow_version": tf.__version__, "keras_version": keras.__version__, "layout": "torch",
            **dict(entries), "extra": extra_paths}
    write_checkpoint(path, {**weights, **(tensors or {})}, meta, kept=kept)


def write_checkpoint(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any], *,
                     kept: str | None = None) -> None:
    """``tensors`` and ``meta`` (JSON under :data:`METADATA_KEY`) as a safetensors file, atomically."""
    from safetensors.numpy import save

    arrays = {name: np.require(value, requirements="C") for name, value in tensors.items()}  # keeps 0-d shapes
    data = save(arrays, metadata={METADATA_KEY: json.dumps(dict(meta))})
    with atomic_output(path, "wb", flag="--model_save_dir", kept=kept) as handle:
        handle.write(data)


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or ``best.tf`` inside a ``model_save_dir``."""
    path = Path(path)
    return path / BEST if path.is_dir() else path


def read_checkpoint_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(metadata entries, tensors)`` of a safetensors checkpoint; InputError for a missing,
    empty, truncated or foreign file (not yet checked for its entries: :func:`load_checkpoint`)."""
    from safetensors import safe_open

    path = checkpoint_path(path)
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): it is not a checkpoint, or it was never completely written")
    try:
        with safe_open(str(path), framework="np") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # SafetensorError and OSError: truncated, foreign or unreadable
        raise InputError(f"{path} is not a readable ctrkit checkpoint (truncated or not a safetensors file): "
                         f"{_first_line(exc)}") from None
    if raw is None:
        raise InputError(f"{path} is not a ctrkit TensorFlow checkpoint (a safetensors file without ctrkit's entries)")
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise InputError(f"{path}: its ctrkit entries are not valid JSON ({exc}); the checkpoint is damaged") from None
    return meta, tensors


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checked checkpoint as a payload: its metadata entries plus ``model`` (torch name -> array),
    ``extra`` values (list, in order), ``optimizer_slots`` (slot -> name -> array) and ``numpy_keys``.

    Raises:
        InputError: one line naming the file and what is wrong with it.
    """
    path = checkpoint_path(path)
    meta, tensors = read_checkpoint_file(path)
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a ctrkit TensorFlow checkpoint")
    check_checkpoint_entries(meta, _CHECKPOINT_ENTRIES, path)
    if meta["version"] > CHECKPOINT_VERSION:
        raise InputError(f"{path} has checkpoint version {meta['version']}, newer than this ctrkit reads")
    payload = dict(meta)
    payload["model"] = {k[len(MODEL):]: v for k, v in tensors.items() if k.startswith(MODEL)}
    payload["extra_paths"] = meta["extra"]
    try:
        payload["extra"] = [tensors[f"{EXTRA}{i}"] for i in range(len(meta["extra"]))]
    except KeyError as exc:
        raise InputError(f"{path}: the extra variable {exc.args[0]} is missing; the checkpoint is damaged") from None
    slots: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER):
            slot, _, name = key[len(OPTIMIZER):].partition("/")
            slots.setdefault(slot, {})[name] = value
    payload["optimizer_slots"] = slots
    payload["numpy_keys"] = tensors.get(NUMPY_KEYS)
    if not payload["model"]:
        raise InputError(f"{path}: the checkpoint holds no weights; it is damaged")
    bad = first_non_finite(payload["model"])
    if bad is not None:
        raise InputError(f"{path}: weight {bad} holds NaN or infinite values (the run that wrote it diverged); "
                         "use a checkpoint written before that")
    return payload


def check_resume_entries(payload: Mapping[str, Any], path: str | os.PathLike) -> None:
    """InputError unless a ``last.tf`` holds what ``--resume`` needs (optimiser, scheduler, progress, RNG)."""
    check_checkpoint_entries(payload, _RESUME_ENTRIES, path)
    missing = Progress.missing(payload["progress"])
    if missing:
        raise InputError(f"{path}: its 'progress' entry lacks {', '.join(missing)}; the checkpoint is damaged")
    if payload["numpy_keys"] is None:
        raise InputError(f"{path}: the checkpoint has no numpy RNG state; it is damaged")


def first_non_finite(state: Mapping[str, np.ndarray]) -> str | None:
    """Name of the first floating-point array holding NaN or an infinity, or None."""
    for name, value in state.items():
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return name
    return None


def assign_weights(model: keras.Model, state: Mapping[str, np.ndarray], path: str | os.PathLike,
                   extra: list | None = None) -> None:
    """Load a torch-named, torch-layout state (and the extra variables) into ``model``.

    Every name and shape is checked before anything is assigned (:func:`ctrkit.parity.torch_state_to_tf`);
    a mismatch is one InputError naming ``path`` and the first weight that does not fit.
    """
    from ctrkit import parity

    try:
        parity.torch_state_to_tf(model, state)
    except InputError as exc:
        raise InputError(f"{path}: {exc}; the checkpoint is damaged or was written for another model") from None
    if extra is not None:
        variables = _extra_variables(model)
        if len(extra) != len(variables) or any(tuple(np.shape(a)) != tuple(v.shape) for a, v in zip(extra, variables)):
            raise InputError(f"{path}: its extra variables (dropout seed states) do not fit the model; it is damaged")
        for array, variable in zip(extra, variables):
            variable.assign(np.asarray(array).astype(variable.dtype))


def _checkpoint_schema(payload: Mapping[str, Any], path: Path) -> Schema:
    try:
        return Schema.from_dict(payload["schema"])
    except StoreError as exc:
        raise InputError(f"{path}: the checkpoint's schema is damaged: {exc}") from None


def build_from_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike, *,
                          strategy: tf.distribute.Strategy | None = None,
                          precision: str | None = None) -> tuple[keras.Model, Schema]:
    """The model a checked checkpoint describes, with its weights; InputError naming the problem.

    A model whose embedding tables would not fit in memory is refused before it is allocated
    (:func:`ctrkit.registry.check_fits_in_memory`). Built under ``precision`` (default: the
    checkpoint's ``--precision``).
    """
    from ctrkit.registry import build_tf_model, check_fits_in_memory

    path = Path(path)
    schema = _checkpoint_schema(payload, path)
    name, hparams = payload["model_name"], dict(payload["hparams"])
    precision = precision or payload["config"].get("precision", "fp32")
    try:
        check_fits_in_memory(name, schema, hparams, copies=1)
        with (strategy or tf.distribute.get_strategy()).scope(), precision_policy(precision):
            model, _ = build_tf_model(name, schema, hparams)
    except ConfigError as exc:
        raise InputError(f"{path}: cannot rebuild the checkpoint's model: {exc}") from None
    assign_weights(model, payload["model"], path, payload.get("extra"))
    return model, schema


def load_model_checkpoint(path: str | os.PathLike) -> tuple[keras.Model, dict[str, Any]]:
    """``(model with its weights, payload)`` of a TF checkpoint file or run directory (see :func:`load_checkpoint`)."""
    payload = load_checkpoint(path)
    model, _ = build_from_checkpoint(payload, checkpoint_path(path))
    return model, payload


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Errors raised in the tf.data thread
# ---------------------------------------------------------------------------------------------
#: ``{{function_node ...}} StoreError: store s.lmdb: chunk 1 ... is damaged`` (then TF's traceback)
_TF_DATA_ERROR = re.compile(r"^(?:\{\{[^}]*\}\}\s*)?(\w+): (.+)$")


def ctrkit_error_of(exc: Exception) -> CtrkitError | None:
    """The ctrkit error (``StoreError``, ``ContractError``...) that a TensorFlow op error carries from
    the tf.data thread where the store was read, with its one-line message; None for any other error."""
    message = getattr(exc, "message", None) or str(exc)
    match = _TF_DATA_ERROR.match(message.splitlines()[0].strip()) if message else None
    cls = ctrkit_error_classes().get(match.group(1)) if match else None
    return cls(match.group(2)) if cls is not None else None


def raising_ctrkit_errors(batches: Iterable[Any]) -> Iterator[Any]:
    """``batches`` (a tf.data iteration) with a ctrkit error of the reading thread raised as itself, one line."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as exc:
            error = ctrkit_error_of(exc)
            if error is None:
                raise
            raise error from None
        yield batch


# ---------------------------------------------------------------------------------------------
# The trainer: the TF Backend of ctrkit.training.loop.TrainingLoop, and the public API
# ---------------------------------------------------------------------------------------------
class Trainer(TrainerFacade):
    """Fit, evaluate and predict with one Keras model.

    Args:
        model: a pure model, ``model(batch, training) -> logits [B]`` (or ``{"logits", "aux_loss"}``),
            built inside ``strategy.scope()`` (and :func:`precision_policy` for bf16).
        config: the training options (validated here); ``config.model`` may be left empty for a
            registry model.
        schema: the schema the model was built for (taken from the store by :meth:`fit`).
        strategy: the ``tf.distribute`` strategy whose scope holds the model's variables
            (default: the current one).

    Example::

        model, _ = build_tf_model("deepfm", store.schema, {"embed_size": 8})
        trainer = Trainer(model, TrainConfig(model="deepfm", framework="tf", model_save_dir="runs/d"))
        trainer.fit(store)
        trainer.predict(BatchReader(store, "test", 4096))
    """

    framework = FRAMEWORK
    # one process, also with several replicas (MirroredStrategy splits each batch); the workers of
    # a MultiWorkerMirroredStrategy are the ranks (set in __init__ from the strategy)
    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, model: keras.Model, config: TrainConfig, *, schema: Schema | None = None,
                 strategy: tf.distribute.Strategy | None = None):
        from ctrkit.registry import HPARAMS_ATTRIBUTE, model_name_of, resolved_hparams

        name = model_name_of(model)
        if not config.model and name:
            config = dataclasses.replace(config, model=name)
        if config.framework != FRAMEWORK:
            config = dataclasses.replace(config, framework=FRAMEWORK)
        self.config = config.validate()
        if name and name != self.config.model:
            raise ConfigError(f"TrainConfig.model is {self.config.model!r}, but the model is a {name}")
        self.model = model
        self.schema = schema
        recorded = getattr(model, HPARAMS_ATTRIBUTE, None)
        self.hparams = dict(recorded) if recorded is not None else resolved_hparams(
            self.config.model, self.config.hparams(), FRAMEWORK)
        self.regularization = RegularizationSpec.from_config(self.config)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.rank, self.world_size = strategy_rank(self.strategy)
        self.is_main = self.rank == 0
        self.optimizer: TorchRuleOptimizer | None = None
        self.loop: TrainingLoop | None = None
        self.step_hook: Callable[[int], None] | None = None  # called after every step (tests)
        self._train_fn: Any = None
        self._predict_fn: Any = None

    # -- construction from a checkpoint ------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **overrides: Any) -> "Trainer":
        """Rebuild model and trainer from a checkpoint file (or a dir holding ``best.tf``).

        ``overrides`` replace training options (``gpu_ids``, ``eval_batch_size``, ...); the device
        options default to CPU.
        """
        payload = load_checkpoint(path)
        options = {**payload["config"], "model": payload["model_name"], "framework": FRAMEWORK, "gpu_ids": [],
                   "cpu_processes": 0, "resume": False, "overwrite": False, **overrides}
        try:
            config = TrainConfig.from_dict(options, strict=False)
        except ConfigError as exc:
            raise InputError(f"{checkpoint_path(path)}: the checkpoint's training options are damaged: {exc}") from None
        strategy = make_strategy(config.gpu_ids[:1], multi_worker=False)
        model, schema = build_from_checkpoint(payload, checkpoint_path(path), strategy=strategy, precision=config.precision)
        return cls(model, config, schema=schema, strategy=strategy)

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def replicated(self) -> bool:
        """Whether steps run per replica (``strategy.run``): several replicas, or any multi-worker
        strategy (its variables are mirrored even with a single replica)."""
        return self.replicas > 1 or isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)

    @property
    def device_name(self) -> str:
        """``cpu``, ``gpu:0``, or the replicas' devices (``cpu:0,cpu:1``) for ``metrics.json``."""
        if not tf.distribute.has_strategy() and self.strategy is tf.distribute.get_strategy():
            return "cpu"  # the default strategy (has no worker_devices)
        try:
            devices = self.strategy.extended.worker_devices
        except RuntimeError:
            return "cpu"
        return ",".join(d.lower().split("device:")[-1] for d in devices)

    # -- public API --------------------------------------------------------------------------
    def fit(self, store: Store | str | os.PathLike) -> dict[str, Any]:
        """Train on ``store`` (splits ``train``, ``valid``, optional ``test``); returns the metrics."""
        store = open_store(store)
        self.check_schema(store)
        if self.config.batch_size % self.replicas:
            raise ConfigError(f"--batch_size {self.config.batch_size} must be divisible by the number of "
                              f"replicas ({self.replicas})")
        if self.config.xla and self.replicated:  # before the run directory is touched
            raise ConfigError("--xla compiles the step of one device; it cannot be combined with several "
                              "replicas (--gpu_ids, --cpu_processes, TF_CONFIG)")
        meta = RunMeta(self.config.model, self.hparams, self.schema.to_dict(), self.config.to_dict())
        self.loop = TrainingLoop(self, self.config, meta, step_hook=self.step_hook)
        return self.loop.run(store)

    def predict(self, batches: BatchReader | Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Click probabilities (float64 ``[N]``) for a reader's epoch 0 or any iterable of batches
        (checked against the schema first: :func:`ctrkit.data.contract.check_batch`)."""
        if isinstance(batches, BatchReader):
            iterable: Iterable[Mapping[str, Any]] = raising_ctrkit_errors(make_dataset(batches))
        else:
            iterable = (to_tensors(self._checked_batch(b, i)) for i, b in enumerate(batches))
        probs = [self._predict_batch(batch).numpy() for batch in iterable]
        return np.concatenate(probs).astype(np.float64) if probs else np.zeros(0)

    def compute_loss(self, batch: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """``(objective, bce)`` of one batch in training mode, float32 (call inside a GradientTape)."""
        logits, aux_loss = split_output(self.model(batch, training=True))
        labels = tf.cast(batch[LABEL], tf.float32)
        bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32)))
        penalty = tf.add_n([tf.cast(x, tf.float32) for x in self.model.losses]) if self.model.losses else None
        if aux_loss is not None:
            aux_loss = tf.cast(aux_loss, tf.float32)
        return training_objective(bce, aux_loss=aux_loss, embedding_penalty=penalty), bce

    def _checked_batch(self, batch: Mapping[str, Any], index: int) -> dict[str, np.ndarray]:
        features = {k: np.asarray(v) for k, v in batch.items() if k not in (LABEL, GROUP)}
        if self.schema is not None:
            check_batch(features, self.schema, where=f"batch {index} given to predict")
        return features

    # -- Backend: collectives (over the workers of a multi-worker strategy) --------------------
    def barrier(self) -> None:
        if self.world_size > 1:
            all_workers_sum(self.strategy, 0.0)

    def broadcast_object(self, obj: Any) -> Any:
        """The chief's ``obj`` on every worker (plain values, numpy arrays, ctrkit errors; no pickle:
        :func:`~ctrkit.tensorflow.devices.encode_value`)."""
        if self.world_size == 1:
            return obj
        return broadcast_value(self.strategy, obj, self.is_main)

    def reduce_sum(self, value: Any) -> float:
        value = value.numpy() if hasattr(value, "numpy") else value
        if self.world_size > 1:
            return float(all_workers_sum(self.strategy, value))
        return float(value)

    # -- Backend: the run ----------------------------------------------------------------------
    def prepare(self, store: Store) -> None:
        cfg = self.config
        warning = set_threads(cfg.threads)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        keep_freed_memory()  # tf.data's per-window and per-batch buffers are reused, not faulted in anew
        set_determinism(on_cpu=not cfg.gpu_ids)
        set_seed(cfg.seed)
        self.check_schema(store)
        for split in ("train", "valid"):
            store.split(split)
        initialise_weights(self.model, cfg.init)  # before a resume restores the saved weights
        set_embedding_l2(self.model, self.regularization.embedding_l2)  # read when the step is traced
        with self.strategy.scope():
            self.optimizer = build_optimizer(self.model, cfg)
        self._train_fn = None

    def start(self, store: Store) -> None:
        pass

    def stop(self) -> None:
        pass

    # -- Backend: steps ------------------------------------------------------------------------
    def train_batches(self, reader: BatchReader, epoch: int, start_batch: int, *,
                      ignore_signals: bool) -> Iterator[Any]:
        """The reader's batches as tensors (per-replica shards under several replicas); a tf.data
        thread of this process reads them, so signals stay with the loop. Several workers: the
        loop's reader is this worker's shard; each worker reads its own replicas' shards of the
        global batch (:func:`~ctrkit.tensorflow.loader.global_reader`)."""
        if self.replicated:
            dataset = make_distributed_dataset(self.strategy, global_reader(reader), epoch, start_batch)
        else:
            dataset = make_dataset(reader, epoch, start_batch)
        if self._train_fn is None:
            self._train_fn = tf.function(self._step, input_signature=[dataset.element_spec],
                                         jit_compile=bool(self.config.xla))
            # traced here, before the loop starts the epoch's clock: rows/s is the steps' rate
            self._train_fn.get_concrete_function()
        return raising_ctrkit_errors(dataset)

    def train_shard(self) -> tuple[int, int]:
        """``(first replica of this worker, replicas)``: each replica reads its own even shard
        (:func:`~ctrkit.tensorflow.loader.make_distributed_dataset`), so the loop counts the
        steps of one replica's shard."""
        per_worker = self.replicas // self.world_size
        return self.rank * per_worker, self.replicas

    def begin_epoch(self) -> None:
        pass  # Keras takes the mode per call (training=True in the step)

    def train_step(self, batch: Any) -> tf.Tensor:
        """One optimiser step (compiled); returns the batch's mean BCE as a device scalar."""
        return self._train_fn(batch)

    def _replica_gradients(self, batch: Mapping[str, tf.Tensor]) -> tuple[list[Any], tf.Tensor]:
        """Dense gradients of the objective (divided by the number of replicas) and the BCE."""
        variables = self.optimizer.variables
        with tf.GradientTape() as tape:
            objective, bce = self.compute_loss(batch)
            scaled = objective / self.replicas if self.replicas > 1 else objective
        grads = tape.gradient(scaled, variables)
        return [None if g is None else tf.convert_to_tensor(g) for g in grads], bce

    def _step(self, batch: Any) -> tf.Tensor:
        variables = self.optimizer.variables
        if not self.replicated:
            with self.strategy.scope():
                grads, bce = self._replica_gradients(batch)
                self.optimizer.apply_gradients(zip(grads, variables))
            return bce
        grads, bce = self.strategy.run(self._replica_gradients, args=(batch,))
        # summed across the replicas (all-reduce), then one update assigned to every replica's copy
        summed = [None if g is None else self.strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]
        self.optimizer.apply_gradients(zip(summed, variables))
        return self.strategy.reduce(tf.distribute.ReduceOp.MEAN, bce, axis=None)

    def batch_rows(self, batch: Mapping[str, Any]) -> int:
        labels = batch[LABEL]
        if self.replicated:
            return sum(int(part.shape[0]) for part in self.strategy.experimental_local_results(labels))
        return int(labels.shape[0])

    def new_loss_sum(self, value: float) -> tf.Variable:
        return tf.Variable(float(value), dtype=tf.float64, trainable=False)

    def accumulate_loss(self, loss_sum: tf.Variable, loss: tf.Tensor, rows: int) -> tf.Variable:
        loss_sum.assign_add(tf.cast(loss, tf.float64) * rows)  # no host sync
        return loss_sum

    def set_lr(self, lr: float) -> None:
        self.optimizer.set_lr(lr)

    def non_finite_weight(self) -> str | None:
        params = [(name, v) for name, (v, _) in self.model.torch_parameters().items() if "float" in str(v.dtype)]
        finite = tf.stack([tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v))) for _, v in params]).numpy()
        return None if finite.all() else params[int(np.argmin(finite))][0]

    def open_scalar_writer(self, log_dir: Path, purge_step: int | None) -> Any:
        return open_scalar_writer(log_dir, purge_step)

    def parameter_count(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.model.trainable_weights))

    def peak_device_memory(self) -> int | None:
        gpus = [d for d in self.device_name.split(",") if d.startswith("gpu")]
        try:  # the allocator's statistics of each GPU replica
            return max(int(tf.config.experimental.get_memory_info(d.upper())["peak"]) for d in gpus) if gpus else None
        except (ValueError, RuntimeError):
            return None

    # -- Backend: evaluation -------------------------------------------------------------------
    def _eval_batch_size(self) -> int:
        return self.config.eval_batch_size or self.config.batch_size

    def _predict_batch(self, batch: Mapping[str, tf.Tensor]) -> tf.Tensor:
        if self._predict_fn is None:
            def probabilities(features):
                logits, _ = split_output(self.model(features, training=False))
                return tf.sigmoid(tf.cast(logits, tf.float32))

            self._predict_fn = tf.function(probabilities, reduce_retracing=True)
        return self._predict_fn({k: v for k, v in batch.items() if k not in (LABEL, GROUP)})

    def predict_split(self, store: Store, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The whole split in store order. Several workers: each predicts its contiguous shard and
        the shards are gathered to every worker (exact AUC needs every prediction, and every
        worker then takes the same best/plateau/early-stop decisions from the same numbers)."""
        reader = BatchReader(store, split, self._eval_batch_size(), rank=self.rank, world_size=self.world_size)
        p, y, g = self._predict_reader(reader)
        if self.world_size == 1:
            return p, y, g
        total = reader.info.rows
        start = self.rank * total // self.world_size  # BatchReader's shard bounds (uneven shards)
        gathered_groups = None
        if store.carries_groups(split):  # the store's, the same on every worker (an empty shard has no batch)
            gathered_groups = self._gather(np.zeros(0, np.int64) if g is None else g, start, total, tf.int64)
        return self._gather(p, start, total), self._gather(y, start, total), gathered_groups

    def _gather(self, part: np.ndarray, start: int, total: int, dtype: tf.DType = tf.float64) -> np.ndarray:
        """This worker's ``part`` at ``[start, start + len)`` of a length-``total`` array summed with
        the others' (each worker fills only its own rows, so the sum is their concatenation)."""
        full = np.zeros(total, dtype.as_numpy_dtype)
        full[start:start + len(part)] = part
        return all_workers_sum(self.strategy, full, dtype)

    def _predict_reader(self, reader: BatchReader) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        probs, labels, groups = [], [], []
        for batch in raising_ctrkit_errors(make_dataset(reader)):
            probs.append(self._predict_batch(batch).numpy())
            labels.append(batch[LABEL].numpy())
            if GROUP in batch:
                groups.append(batch[GROUP].numpy().astype(np.int64))
        p = np.concatenate(probs).astype(np.float64) if probs else np.zeros(0)
        y = np.concatenate(labels).astype(np.float64) if labels else np.zeros(0)
        return p, y, (np.concatenate(groups) if groups else None)

    # -- Backend: checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, path: Path, entries: Mapping[str, Any], *, kept: str) -> None:
        entries = dict(entries)
        tensors: dict[str, np.ndarray] = {}
        if entries["kind"] == "last":
            tensors = self._optimizer_tensors()
            rng, tensors[NUMPY_KEYS] = rng_state()
            entries.update(rng=rng, replicas=self.replicas,
                           optimizer={"name": self.optimizer.name, "step": int(self.optimizer.iterations.numpy())})
        save_model_checkpoint(path, self.model, entries, kept=kept, tensors=tensors)

    def _optimizer_tensors(self) -> dict[str, np.ndarray]:
        """``optimizer/<slot>/<torch name>`` of every slot, in torch's layout."""
        names = {id(v): (name, layout) for name, (v, layout) in self.model.torch_parameters().items()}
        tensors = {}
        for slot, variables in self.optimizer.slots.items():
            for variable, slot_variable in zip(self.optimizer.variables, variables):
                name, layout = names[id(variable)]
                tensors[f"{OPTIMIZER}{slot}/{name}"] = LAYOUTS[layout].to_torch(np.asarray(slot_variable.numpy()))
        return tensors

    def read_checkpoint(self, path: Path, *, resume: bool) -> dict[str, Any]:
        payload = load_checkpoint(path)
        if resume:
            check_resume_entries(payload, path)
        return payload

    def restore(self, payload: Mapping[str, Any], path: Path) -> None:
        replicas = payload.get("replicas", 1)
        if payload["progress"]["batch"] and replicas != self.replicas:
            raise ConfigError(f"--resume: {path} stopped inside an epoch with {replicas} replica(s); "
                              "resume it with the same --cpu_processes / --gpu_ids / TF_CONFIG workers")
        assign_weights(self.model, payload["model"], path, payload["extra"])
        try:
            self._restore_optimizer(payload)
            set_rng_state(payload["rng"], payload["numpy_keys"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"{path}: its training state (optimizer, scheduler, progress or RNG) is damaged: "
                             f"{_first_line(exc)}") from None

    def _restore_optimizer(self, payload: Mapping[str, Any]) -> None:
        saved, slots = payload["optimizer"], payload["optimizer_slots"]
        if saved["name"] != self.optimizer.name:
            raise ValueError(f"it holds {saved['name']} state, not {self.optimizer.name}")
        names = {id(v): (name, layout) for name, (v, layout) in self.model.torch_parameters().items()}
        for slot, variables in self.optimizer.slots.items():
            for variable, slot_variable in zip(self.optimizer.variables, variables):
                name, layout = names[id(variable)]
                array = LAYOUTS[layout].to_tf(np.asarray(slots[slot][name]))
                if tuple(array.shape) != tuple(slot_variable.shape):
                    raise ValueError(f"optimizer slot {slot} of {name} has shape {array.shape}")
                slot_variable.assign(array.astype(slot_variable.dtype.as_numpy_dtype))
        self.optimizer.iterations.assign(int(saved["step"]))

    def read_weights(self, path: Path) -> dict[str, Any]:
        payload = load_checkpoint(path)
        return {"model": payload["model"], "extra": payload["extra"]}

    def set_weights(self, weights: Mapping[str, Any], path: Path) -> None:
        assign_weights(self.model, weights["model"], path, weights["extra"])


# ---------------------------------------------------------------------------------------------
# What ctrkit.training.frameworks calls (`ctrkit train`, `evaluate`, `predict`)
# ---------------------------------------------------------------------------------------------
def launch_rank(config: TrainConfig) -> tuple[int, int]:
    """``(rank, world_size)`` of this process, after checking the GPUs: ``(0, 1)`` on one machine
    (its replicas are inside this process), this worker's place in a ``TF_CONFIG`` cluster
    otherwise (:func:`~ctrkit.tensorflow.devices.worker_rank`; nothing of TensorFlow started yet)."""
    cluster = multi_worker_config()
    if cluster is not None and config.cpu_processes > 1:
        raise ConfigError("--cpu_processes cannot be combined with TF_CONFIG (one CPU replica per worker)")
    check_gpu_ids(config.gpu_ids)
    return worker_rank(cluster) if cluster is not None else (0, 1)


def fit_from_config(config: TrainConfig, store: Store, *, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Threads and devices first (TensorFlow fixes them when it starts), then seed, build the model
    of ``config`` for ``store``'s schema in the strategy's scope and precision, and train it."""
    from ctrkit.registry import build_tf_model

    warning = set_threads(config.threads)
    if warning and warn is not None:
        warn(warning)
    if config.num_workers and warn is not None:
        warn(f"warning: --num_workers {config.num_workers} is ignored with --framework tf: a tf.data thread of "
             "this process reads the store ahead of the steps")
    strategy = make_strategy(config.gpu_ids, config.cpu_processes)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ConfigError(f"--batch_size {config.batch_size} must be divisible by the number of replicas "
                          f"({strategy.num_replicas_in_sync})")
    set_seed(config.seed)
    with strategy.scope(), precision_policy(config.precision):
        model, ignored = build_tf_model(config.model, store.schema, config.hparams())
    if ignored and warn is not None:
        flags = ", ".join(f"--{k}" if hasattr(config, k) else f"--model_args {k}" for k in ignored)
        warn(f"warning: {config.model} does not use {flags}; ignored")
    return Trainer(model, config, schema=store.schema, strategy=strategy).fit(store)


def load_for_inference(path: str | os.PathLike, **overrides: Any) -> Trainer:
    """Check the device, set the threads, and rebuild the trainer of the checkpoint at ``path``."""
    check_gpu_ids(overrides.get("gpu_ids", []))
    warning = set_threads(overrides.get("threads", 0))
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return Trainer.from_checkpoint(path, **overrides)
