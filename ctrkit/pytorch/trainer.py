"""The PyTorch side of training: the torch :class:`~ctrkit.training.backend.Backend`.

``Trainer(model, config).fit(store)`` runs the whole recipe through the framework-neutral core
(:class:`ctrkit.training.loop.TrainingLoop`: epochs, validation, plateau, early stopping, best and
resumable checkpoints, test metrics, ``metrics.json``, TensorBoard, progress bars, divergence,
signals, the run directory). What is torch's own lives here:

* the optimiser over parameter groups chosen by module type (:func:`parameter_groups`, the
  neutral rule of :mod:`ctrkit.training.regularization`): ``embedding`` (the weights of every
  :class:`~ctrkit.pytorch.layers.EmbeddingTable`, no weight decay; a forward hook on each table
  adds ``embedding_l2 * sum(rows ** 2) / B`` of the rows the batch looked up to the objective),
  ``no_decay`` (norm layers, ``Bias`` modules, the ``bias`` of ``nn.Linear``/``nn.Conv*``) and
  ``decay`` (everything else, with ``weight_decay``: coupled L2 for Adam, Adagrad and SGD,
  decoupled for AdamW);
* one training step (:meth:`Trainer.compute_loss`: BCE of the logits, plus the embedding term and
  a model's auxiliary loss, :mod:`ctrkit.training.objective`), predictions, bf16 autocast;
* checkpoint files, their checks and the RNG states;
* devices and processes: no ``gpu_ids`` -> CPU; one id -> ``cuda:<id>``; several ids (or
  ``cpu_processes > 1``) -> one process per device started with ``torch.multiprocessing.spawn``,
  ``DistributedDataParallel`` over NCCL (GPUs) or gloo (CPU), global batch split evenly across
  ranks. Started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) the
  trainer joins the existing ``env://`` group instead of spawning. Evaluation is sharded across
  ranks and the predictions are gathered, so metrics equal single-process ones.

Checkpoints hold only tensors and plain Python values, are written atomically (temporary file,
fsync, ``os.replace``) and are always loaded with ``torch.load(..., weights_only=True)``. Both
``best.pt`` and ``last.pt`` are dicts with::

    format="ctrkit-torch-checkpoint", version=1, kind="best"|"last", ctrkit_version, torch_version,
    model_name (registry name), hparams (every constructor keyword of the model, defaults included:
    ctrkit.registry.resolved_hparams), schema (Schema.to_dict()),
    config (TrainConfig.to_dict()), model (state_dict, CPU tensors)

``best.pt`` adds ``epoch`` (1-based) and ``valid`` (its validation metrics); ``last.pt`` adds
``optimizer`` (its state dict), ``scheduler`` (:class:`~ctrkit.training.policy.PlateauSchedule`'s
state; files written before it hold a torch ``ReduceLROnPlateau`` state, which is read too),
``rng`` (torch CPU/CUDA states as uint8 tensors, numpy MT19937 keys as an int64 tensor plus
position/gauss, python's state as a list) and ``progress``
(:class:`~ctrkit.training.progress.Progress` with ``epoch_loss_sum`` as a float64 tensor and the
world size). Every loaded checkpoint is checked (entries and their types, tensor shapes against
the model its schema and hyper-parameters describe, built first on the ``meta`` device so an
absurd vocabulary allocates nothing, finite weights).

Determinism: ``--seed`` seeds python, numpy and torch; on CPU the trainer also switches on
``torch.use_deterministic_algorithms(True, warn_only=True)`` (process-wide, without its NaN-filling
of new tensors). Two CPU runs with the same seed and thread count give identical metrics, and a
resumed run reproduces the uninterrupted one exactly: data order is a function of ``(seed, epoch)``,
the loader uses its own generator, and the RNG states are restored at the step where ``last.pt``
was written. Under DDP every rank holds the same RNG state, so rank 0's is the one saved.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import gc
import json
import os
import random
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ctrkit import __version__
from ctrkit.config import TrainConfig
from ctrkit.data.batches import BatchReader
from ctrkit.data.contract import check_batch
from ctrkit.data.store import Store
from ctrkit.errors import ConfigError, InputError, StoreError
from ctrkit.fileio import atomic_output, is_disk_full
from ctrkit.fileio import json_safe  # noqa: F401 (moved to ctrkit.fileio; old import path kept)
from ctrkit.pytorch.layers import Bias, EmbeddingTable
from ctrkit.pytorch.loader import make_loader, to_tensors
from ctrkit.runtime import busy_cores_advice, keep_freed_memory
from ctrkit.schema import Schema
from ctrkit.training.backend import RunMeta
from ctrkit.training.errors import TrainingDivergedError, TrainingInterrupted  # noqa: F401 (old import path kept)
from ctrkit.training.frameworks import train_from_config  # noqa: F401 (the entry point of `ctrkit train`)
from ctrkit.training.facade import TrainerFacade, open_store
from ctrkit.training.loop import TrainingLoop
from ctrkit.training.objective import GROUP, split_output, training_objective
from ctrkit.training.policy import (  # noqa: F401 (moved to ctrkit.training.policy; old import paths kept)
    LOSS_WARNING_FACTOR,
    PlateauSchedule,
    base_rate_loss,
    high_loss_warning,
    is_improvement,
)
from ctrkit.training.progress import Progress
from ctrkit.training.regularization import GROUPS, RegularizationSpec
from ctrkit.training.reporting import METRICS, TENSORBOARD, open_scalar_writer  # noqa: F401 (TENSORBOARD: old import path)
from ctrkit.training.rundir import (  # noqa: F401 (moved to ctrkit.training.rundir; old import paths kept)
    check_checkpoint_entries,
    RUN_FILES,
    check_previous_run,
    check_run_directory,
    checkpoint_name,
    create_run_directory,
    describe_previous_run,
    open_run_directory,
    previous_run_files,
)
from ctrkit.training.signals import IgnoreStopSignals, StopSignals  # noqa: F401

CHECKPOINT_FORMAT = "ctrkit-torch-checkpoint"
CHECKPOINT_VERSION = 1
FRAMEWORK = "torch"
LAST = checkpoint_name(FRAMEWORK, "last")
BEST = checkpoint_name(FRAMEWORK, "best")

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
_BIASED_TYPES = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
_OPTIMIZERS = {
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "Adagrad": torch.optim.Adagrad,
    "SGD": torch.optim.SGD,
}


# ---------------------------------------------------------------------------------------------
# Parameter groups and optimiser
# ---------------------------------------------------------------------------------------------
def parameter_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Split trainable parameters into ``decay``, ``no_decay`` and ``embedding`` groups by module type.

    Returns optimiser parameter groups (empty groups left out), each with a ``name`` key.
    """
    spec = RegularizationSpec(weight_decay=weight_decay)
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in GROUPS}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            groups[spec.group_of(parameter_role(module, name))].append(param)
    return [{"name": k, "params": v, "weight_decay": spec.weight_decay_of(k)} for k, v in groups.items() if v]


def parameter_role(module: nn.Module, param_name: str) -> str:
    """The :mod:`~ctrkit.training.regularization` role of ``module``'s parameter ``param_name``."""
    if isinstance(module, EmbeddingTable):
        return "embedding"
    if isinstance(module, _NORM_TYPES):
        return "norm"
    if isinstance(module, Bias) or (param_name == "bias" and isinstance(module, _BIASED_TYPES)):
        return "bias"
    return "weight"


def initialise_weights(model: nn.Module, scheme: str) -> None:
    """Apply an initialisation ``scheme`` (``TrainConfig.init``) to the model's Linear/Conv1d layers.

    ``xavier_normal`` keeps what the models built (Xavier normal weights, zero biases: FuxiCTR's
    and the BARS benchmark's recipe). ``torch_default`` re-draws every ``nn.Linear``/``nn.Conv1d``
    with PyTorch's own default (Kaiming uniform with ``a = sqrt(5)``, uniform biases), the
    initialisation torch-rechub and DeepCTR-Torch give their MLPs; embeddings and the models' other
    parameters keep theirs. Uses the global torch RNG (seeded by the trainer).
    """
    if scheme == "xavier_normal":
        return
    if scheme != "torch_default":
        raise ConfigError(f"unknown initialisation {scheme!r}")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.Linear.reset_parameters(module)  # torch's own, even for a subclass with its own reset
        elif isinstance(module, nn.Conv1d):
            nn.Conv1d.reset_parameters(module)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimiser over :func:`parameter_groups` (fused kernels where available)."""
    cls = _OPTIMIZERS[config.optimizer]
    groups = parameter_groups(model, config.weight_decay)
    params = [p for g in groups for p in g["params"]]
    kwargs: dict[str, Any] = {"lr": config.lr}
    if params and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params):
        kwargs["fused"] = True  # one kernel per step for all tensors; ~10x faster on CPU
    return cls(groups, **kwargs)


# ---------------------------------------------------------------------------------------------
# Seeds and RNG state
# ---------------------------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and CUDA), numpy and python as tensors and plain lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------
#: Entries every checkpoint has, with their types; ``last.pt`` adds :data:`_RESUME_ENTRIES`.
_CHECKPOINT_ENTRIES = {"format": str, "version": int, "kind": str, "model_name": str, "hparams": dict,
                       "schema": dict, "config": dict, "model": dict}
_RESUME_ENTRIES = {"optimizer": dict, "scheduler": dict, "progress": dict, "rng": dict}


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any], *, kept: str | None = None) -> None:
    """Write ``payload`` atomically (:func:`ctrkit.fileio.atomic_output`).

    A reader sees the previous complete file or the new complete file, never a torn one, even if
    the process is killed while writing. A full disk is an :class:`OutputError` saying what was
    kept (``kept``, by default the previous file): torch's zip writer reports it as
    ``RuntimeError: [enforce fail at inline_container.cc]`` with the ``OSError`` as its context.
    """
    with atomic_output(path, "wb", flag="--model_save_dir", kept=kept) as handle:
        try:
            torch.save(payload, handle)
        except RuntimeError as exc:
            cause = exc.__context__
            if isinstance(cause, OSError):
                raise cause from None
            if is_disk_full(exc):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or ``best.pt`` inside a ``model_save_dir``."""
    path = Path(path)
    return path / BEST if path.is_dir() else path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint (tensors on CPU) with ``weights_only=True`` and check it (:func:`check_checkpoint`).

    Raises:
        InputError: one line naming the file and what is wrong with it.
    """
    path = checkpoint_path(path)
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): it is not a checkpoint, or it was never completely written")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/foreign files
        raise InputError(f"{path} is not a readable ctrkit checkpoint: {_first_line(exc)}") from None
    check_checkpoint(payload, path)
    return payload


def check_checkpoint(payload: Any, path: str | os.PathLike) -> None:
    """InputError unless ``payload`` has every entry of a ctrkit checkpoint, of the right type, and finite weights."""
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a ctrkit PyTorch checkpoint")
    check_checkpoint_entries(payload, _CHECKPOINT_ENTRIES, path)
    if payload["version"] > CHECKPOINT_VERSION:
        raise InputError(f"{path} has checkpoint version {payload['version']}, newer than this ctrkit reads")
    state = payload["model"]
    strange = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if strange is not None:
        raise InputError(f"{path}: the weights entry {strange!r} is not a tensor; the checkpoint is damaged")
    bad = first_non_finite(state)
    if bad is not None:
        raise InputError(
            f"{path}: weight {bad} holds NaN or infinite values (the run that wrote it diverged); "
            "use a checkpoint written before that"
        )


def check_resume_entries(payload: Mapping[str, Any], path: str | os.PathLike) -> None:
    """InputError unless a ``last.pt`` holds what ``--resume`` needs (optimiser, scheduler, progress, RNG)."""
    check_checkpoint_entries(payload, _RESUME_ENTRIES, path)
    progress = payload["progress"]
    missing = Progress.missing(progress)
    if missing:
        raise InputError(f"{path}: its 'progress' entry lacks {', '.join(missing)}; the checkpoint is damaged")
    if not isinstance(progress["epoch_loss_sum"], torch.Tensor):
        raise InputError(f"{path}: progress 'epoch_loss_sum' is not a tensor; the checkpoint is damaged")


def first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN or an infinity, or None."""
    floats = [(name, t) for name, t in state.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not floats:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in floats]).cpu()  # one host sync
    if bool(finite.all()):
        return None
    return floats[int(torch.argmin(finite.to(torch.uint8)))][0]


def state_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    """The first weight that ``given`` lacks, adds, or has in another shape than ``expected``, or None.

    ``expected`` may be the state of a model built on the ``meta`` device: only names and shapes
    are compared, so nothing of the model's size is allocated.
    """
    missing = [k for k in expected if k not in given]
    if missing:
        return f"weight {missing[0]} is missing ({len(missing)} missing)"
    unexpected = [k for k in given if k not in expected]
    if unexpected:
        return f"weight {unexpected[0]} is not part of the model ({len(unexpected)} such)"
    for name, tensor in expected.items():
        if tuple(given[name].shape) != tuple(tensor.shape):
            return f"weight {name} has shape {list(given[name].shape)} where {list(tensor.shape)} is needed"
    return None


def check_state_fits(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                     path: str | os.PathLike, model: str) -> None:
    """InputError naming ``path`` and the first weight that does not fit (:func:`state_mismatch`)."""
    problem = state_mismatch(expected, given)
    if problem is not None:
        raise InputError(f"{path}: {problem} in the {model} that the checkpoint's schema and hyper-parameters "
                         "describe; the checkpoint is damaged or was edited")


def model_skeleton(name: str, schema: Schema, hparams: Mapping[str, Any]) -> nn.Module:
    """The model ``name`` built on the ``meta`` device: its shapes, without memory or RNG draws."""
    from ctrkit.registry import build_torch_model

    with torch.device("meta"):
        model, _ = build_torch_model(name, schema, dict(hparams))
    return model


def build_from_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike) -> tuple[nn.Module, Schema]:
    """The model a checked checkpoint describes, with its weights; InputError naming the problem.

    The shapes are compared on a ``meta`` skeleton first, so a schema with an absurd vocabulary
    (or edited hyper-parameters) is refused before anything of that size is allocated.
    """
    from ctrkit.registry import build_torch_model

    try:
        schema = Schema.from_dict(payload["schema"])
    except StoreError as exc:
        raise InputError(f"{path}: the checkpoint's schema is damaged: {exc}") from None
    name, hparams = payload["model_name"], dict(payload["hparams"])
    try:
        skeleton = model_skeleton(name, schema, hparams)
    except ConfigError as exc:
        raise InputError(f"{path}: cannot rebuild the checkpoint's model: {exc}") from None
    check_state_fits(skeleton.state_dict(), payload["model"], path, name)
    model, _ = build_torch_model(name, schema, hparams)
    load_weights(model, payload["model"], path)
    return model, schema


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``model.load_state_dict(state)`` with torch's multi-line errors as one InputError naming ``path``."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: its weights do not fit the model: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type (``EOFError()`` has no text)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _load_resumable(path: Path) -> dict[str, Any]:
    """``last.pt`` checked for everything ``--resume`` reads."""
    payload = load_checkpoint(path)
    check_resume_entries(payload, path)
    return payload


# ---------------------------------------------------------------------------------------------
# Devices and process groups
# ---------------------------------------------------------------------------------------------
def check_gpu_ids(gpu_ids: list[int]) -> None:
    """ConfigError unless every id names a visible CUDA device."""
    if not gpu_ids:
        return
    shown = ",".join(str(i) for i in gpu_ids)
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--gpu_ids {shown}: no GPU is visible (CUDA is not available); omit --gpu_ids to train on CPU"
        )
    count = torch.cuda.device_count()
    missing = [i for i in gpu_ids if i >= count]
    if missing:
        visible = ", ".join(f"{i} ({torch.cuda.get_device_name(i)})" for i in range(count)) or "none"
        raise ConfigError(
            f"--gpu_ids {shown}: no GPU {','.join(map(str, missing))}; visible GPUs: {visible}"
        )


@dataclass
class ProcessContext:
    """Where this process runs: its rank in the group and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when started by torchrun with more than one process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0))


def _device_for(config: TrainConfig, local_rank: int) -> torch.device:
    if not config.gpu_ids:
        return torch.device("cpu")
    if local_rank >= len(config.gpu_ids):
        raise ConfigError(
            f"--gpu_ids {','.join(map(str, config.gpu_ids))}: local rank {local_rank} has no GPU "
            "(give one id per process)"
        )
    return torch.device("cuda", config.gpu_ids[local_rank])


def _spawn_entry(rank: int, model: nn.Module, config: TrainConfig, store: Store, port: int) -> None:
    """Body of one process started by :meth:`Trainer.fit` through ``torch.multiprocessing.spawn``.

    ``store`` is the launcher's :class:`Store`, pinned to the build it opened: a store replaced at
    the same path in between is refused when this rank reopens it (a path would read the new one).

    The rendezvous store is served by the launching process (``port``), not by rank 0, so no rank
    depends on another one still being alive while it shuts its process group down.
    """
    world = config.world_size
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    device = _device_for(config, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rendezvous = dist.TCPStore("127.0.0.1", port, world_size=world, is_master=False)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=rendezvous, rank=rank, world_size=world)
    # the model arrives in shared memory, one storage for all ranks: give this rank its own copy
    model = copy.deepcopy(model)
    trainer = Trainer(model, config)
    trainer._directory_ready = True  # the launching process created, tidied and locked it
    trainer._run(store, (rank, world, rank))
    _close_group(device)


def _close_group(device: torch.device) -> None:
    """Leave the process group after a successful run: wait for every rank, then destroy it."""
    gc.collect()  # drop DDP reducers that still refer to the group
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()
    dist.destroy_process_group()


def _reraise_user_error(text: str) -> None:
    """Re-raise a ctrkit user error that ended a spawned process as itself, without the traceback."""
    import re

    import ctrkit.errors as errors

    own = {"TrainingDivergedError": TrainingDivergedError}
    for line in reversed(text.strip().splitlines()):
        match = re.match(r"ctrkit\.(?:errors|pytorch\.trainer|training\.\w+)\.(\w+): (.*)", line.strip())
        if not match:
            continue
        cls = own.get(match.group(1)) or getattr(errors, match.group(1), None)
        if isinstance(cls, type):
            raise cls(match.group(2)) from None


def _gather_padded(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a 1-D tensor of any length from every rank, in rank order."""
    world = dist.get_world_size()
    length = torch.tensor([tensor.numel()], device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    sizes = [int(n) for n in lengths]
    padded = torch.zeros(max(sizes), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.numel()] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


# ---------------------------------------------------------------------------------------------
# The trainer: the torch Backend of ctrkit.training.loop.TrainingLoop, and the public API
# ---------------------------------------------------------------------------------------------
class Trainer(TrainerFacade):
    """Fit, evaluate and predict with one model.

    Args:
        model: a pure model, ``model(batch) -> logits [B]`` (or ``{"logits": [B], "aux_loss": scalar}``,
            :mod:`ctrkit.training.objective`).
        config: the training options (validated here). ``config.model`` may be left empty for a
            model the registry knows. The model's name and the hyper-parameters it was built with
            (recorded by :func:`~ctrkit.registry.build_torch_model`; for other models, those of
            ``config``) are written to checkpoints so that :meth:`from_checkpoint` can rebuild it.
        schema: the schema the model was built for (taken from the store by :meth:`fit`).

    Example::

        store = Store("s.lmdb")
        model, _ = build_torch_model("deepfm", store.schema, {"embed_size": 8})
        trainer = Trainer(model, TrainConfig(model="deepfm", epochs=3, embed_size=8,
                                             model_save_dir="runs/deepfm"))
        metrics = trainer.fit(store)           # best weights loaded at the end
        probs = trainer.predict(BatchReader(store, "test", 4096))
        Trainer.from_checkpoint("runs/deepfm").evaluate(store, "test")
    """

    framework = FRAMEWORK

    def __init__(self, model: nn.Module, config: TrainConfig, *, schema: Schema | None = None):
        from ctrkit.registry import HPARAMS_ATTRIBUTE, model_name_of, resolved_hparams

        name = model_name_of(model)
        if not config.model and name:  # the registry knows the model: TrainConfig need not repeat it
            config = dataclasses.replace(config, model=name)
        self.config = config.validate()
        if name and name != self.config.model:
            raise ConfigError(f"TrainConfig.model is {self.config.model!r}, but the model is a {name}")
        self.model = model
        self.schema = schema
        # what the model was built with (defaults included), so that its checkpoints rebuild it
        recorded = getattr(model, HPARAMS_ATTRIBUTE, None)
        self.hparams = dict(recorded) if recorded is not None else resolved_hparams(
            self.config.model, self.config.hparams())
        self.regularization = RegularizationSpec.from_config(self.config)
        self.ctx = ProcessContext()
        if config.gpu_ids:
            check_gpu_ids(config.gpu_ids)
            self.ctx.device = torch.device("cuda", config.gpu_ids[0])  # a rank picks its own in _run
        self.optimizer: torch.optim.Optimizer | None = None
        self.loop: TrainingLoop | None = None  # the run in progress or the last one
        self.step_hook: Callable[[int], None] | None = None  # called after every step (tests)
        self._train_model: nn.Module = model  # the DDP wrapper while training distributed
        self._hooks: list[Any] = []
        self._reg_terms: list[torch.Tensor] = []
        self._collect_reg = False
        self._directory_ready = False  # True in a spawned rank: the launching process holds the lock

    # -- construction from a checkpoint ------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **overrides: Any) -> "Trainer":
        """Rebuild model and trainer from a checkpoint file (or a dir holding ``best.pt``).

        ``overrides`` replace training options, e.g. ``gpu_ids=[]`` or ``eval_batch_size=8192``;
        the device options default to CPU in a single process.
        """
        payload = load_checkpoint(path)
        model, schema = build_from_checkpoint(payload, checkpoint_path(path))
        options = {**payload["config"], "model": payload["model_name"], "gpu_ids": [], "cpu_processes": 0,
                   "resume": False, "overwrite": False, **overrides}
        try:
            config = TrainConfig.from_dict(options, strict=False)
        except ConfigError as exc:
            raise InputError(f"{checkpoint_path(path)}: the checkpoint's training options are damaged: {exc}") from None
        return cls(model, config, schema=schema)

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    # -- public API --------------------------------------------------------------------------
    def fit(self, store: Store | str | os.PathLike) -> dict[str, Any]:
        """Train on ``store`` (splits ``train``, ``valid``, optional ``test``); returns the metrics.

        Spawns one process per device when the config asks for several (unless already inside a
        torchrun group); the returned metrics are then read back from ``metrics.json``.
        """
        store = open_store(store)
        self.check_schema(store)
        self._check_rebuildable()
        env = torchrun_env()
        if env is None and self.config.world_size > 1:
            cfg = self.config
            with open_run_directory(cfg.save_dir, resume=cfg.resume, overwrite=cfg.overwrite, log=self._log):
                return self._spawn(store)
        return self._run(store, env)

    def predict(self, batches: BatchReader | Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Click probabilities (float64 ``[N]``) for a reader's epoch 0 or any iterable of batches.

        Batches that do not come from a :class:`BatchReader` (whose store checks every chunk) are
        checked against the schema first (:func:`ctrkit.data.contract.check_batch`): an id outside
        its field's vocabulary would otherwise read another field's embedding rows.
        """
        self.model.to(self.device)
        if isinstance(batches, BatchReader):
            iterable = batches.iter_epoch(0)
        else:
            iterable = (self._checked_batch(b, i) for i, b in enumerate(batches))
        probs = [self._predict_batch(self._to_device(_as_tensors(b))) for b in iterable]
        if not probs:
            return np.zeros(0)
        return torch.cat(probs).double().cpu().numpy()

    _check_schema = TrainerFacade.check_schema  # the name before issue 8

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective, bce)`` of one batch in training mode (:func:`~ctrkit.training.objective.training_objective`)."""
        self._install_hooks()
        self._reg_terms.clear()
        self._collect_reg = True
        try:
            with self._autocast():
                logits, aux_loss = split_output(self._train_model(batch))
        finally:
            self._collect_reg = False
        bce = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
        penalty = None
        if self._reg_terms:
            penalty = self.regularization.embedding_penalty(torch.stack(self._reg_terms).sum(), batch["label"].shape[0])
            self._reg_terms.clear()
        return training_objective(bce, aux_loss=aux_loss, embedding_penalty=penalty), bce

    def _checked_batch(self, batch: Mapping[str, Any], index: int) -> Mapping[str, Any]:
        """``batch`` after :func:`check_batch` of its features (labels play no part in a prediction)."""
        schema = self.schema or getattr(self.model, "schema", None)
        if isinstance(schema, Schema):
            features = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                        for k, v in batch.items() if k not in ("label", GROUP)}
            check_batch(features, schema, where=f"batch {index} given to predict")
        return batch

    # -- embedding regulariser ----------------------------------------------------------------
    def _install_hooks(self) -> None:
        if self._hooks or not self.regularization.penalises_embeddings:
            return
        for module in self.model.modules():
            if isinstance(module, EmbeddingTable):
                self._hooks.append(module.register_forward_hook(self._embedding_hook))

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _embedding_hook(self, module: nn.Module, inputs: Any, rows: torch.Tensor) -> None:
        if self._collect_reg:
            self._reg_terms.append(rows.float().pow(2).sum())

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, store: Store) -> dict[str, Any]:
        import torch.multiprocessing as mp

        self._remove_hooks()  # hooks refer to this trainer; children install their own
        self.model.cpu()
        # this process serves the rendezvous store on a port the OS picks (no race for a free port)
        rendezvous = dist.TCPStore("127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False)
        try:
            mp.spawn(
                _spawn_entry,
                args=(self.model, self.config, store, rendezvous.port),
                nprocs=self.config.world_size,
                join=True,
            )
        except mp.ProcessRaisedException as exc:
            _reraise_user_error(str(exc))
            raise
        finally:
            del rendezvous
        best = self.config.save_dir / BEST
        if best.is_file():
            load_weights(self.model, load_checkpoint(best)["model"], best)
        return json.loads((self.config.save_dir / METRICS).read_text())

    def _run(self, store: Store, env: tuple[int, int, int] | None) -> dict[str, Any]:
        """Train in this process (a rank of a group when ``env`` is given)."""
        created_group = False
        if env is not None:
            rank, world, local_rank = env
            self.ctx = ProcessContext(rank, world, local_rank, _device_for(self.config, local_rank))
            if self.ctx.device.type == "cuda":
                torch.cuda.set_device(self.ctx.device)
            if not dist.is_initialized():
                backend = "nccl" if self.ctx.device.type == "cuda" else "gloo"
                dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
                created_group = True
        try:
            self.check_schema(store)
            meta = RunMeta(self.config.model, self.hparams, self.schema.to_dict(), self.config.to_dict())
            self.loop = TrainingLoop(self, self.config, meta, step_hook=self.step_hook,
                                     directory_ready=self._directory_ready)
            metrics = self.loop.run(store)
            if created_group:
                _close_group(self.ctx.device)
            return metrics
        finally:
            if created_group and dist.is_initialized():  # after an error: no barrier, it could hang
                dist.destroy_process_group()
            if env is not None:  # evaluate/predict after fit run in this process alone
                self.ctx = ProcessContext(device=self.ctx.device)

    def _setup_process(self) -> None:
        keep_freed_memory()
        threads = self.config.threads
        if not threads and self.ctx.distributed and self.ctx.device.type == "cpu":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", self.ctx.world_size))
            threads = max(1, (os.cpu_count() or 1) // local)  # no oversubscription of the cores
        if threads:
            torch.set_num_threads(threads)
        elif self.ctx.device.type == "cpu" and not self.ctx.distributed:
            self._note_busy_cores()

    def _note_busy_cores(self) -> None:
        """Pass on :func:`ctrkit.runtime.busy_cores_advice` when ``--threads`` was left to torch."""
        advice = busy_cores_advice(torch.get_num_threads())
        if advice:
            self._log(advice)

    def _log(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    def _warn(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, file=sys.stderr, flush=True)

    def _check_rebuildable(self) -> None:
        """Refuse, before training, a model that its checkpoints could not rebuild.

        A checkpoint records ``config.model`` and :attr:`hparams`; ``evaluate`` builds that model
        again. A registered model built by hand with other hyper-parameters than those (say
        ``DeepFM(schema, embed_size=8)`` with a default config) would train for hours and leave a
        checkpoint nothing can load, so it is a ConfigError now. A model the registry does not know
        gets a warning: its checkpoints hold its weights, but only its own code can rebuild it.
        """
        from ctrkit.registry import model_name_of

        try:
            skeleton = model_skeleton(self.config.model, self.schema, self.hparams)
        except ConfigError as exc:
            raise ConfigError(f"the model's recorded hyper-parameters do not build a {self.config.model}: {exc}") from None
        problem = state_mismatch(skeleton.state_dict(), self.model.state_dict())
        if problem is None:
            return
        if model_name_of(self.model) is None:
            self._warn(f"warning: {type(self.model).__name__} is not a model of the ctrkit registry; its checkpoints "
                       f"hold its weights, but `ctrkit evaluate` would rebuild a {self.config.model} and fail")
            return
        raise ConfigError(
            f"the model does not match the {self.config.model} its checkpoints would describe "
            f"(hyper-parameters {self.hparams}): {problem}; build it with "
            "ctrkit.registry.build_torch_model, which records its hyper-parameters, or set them in TrainConfig"
        )

    # -- Backend: identity and collectives -----------------------------------------------------
    @property
    def rank(self) -> int:
        return self.ctx.rank

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    @property
    def device_name(self) -> str:
        return str(self.ctx.device)

    def barrier(self) -> None:
        if self.ctx.distributed:
            if self.ctx.device.type == "cuda":
                dist.barrier(device_ids=[self.ctx.device.index])
            else:
                dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (e.g. a checkpoint read from rank 0's disk)."""
        if not self.ctx.distributed:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0, device=self.ctx.device if self.ctx.device.type == "cuda" else None)
        return holder[0]

    def reduce_sum(self, value: torch.Tensor | float) -> float:
        tensor = torch.as_tensor(value, dtype=torch.float64, device=self.ctx.device)
        if self.ctx.distributed:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return float(tensor)

    # -- Backend: the run ----------------------------------------------------------------------
    def prepare(self, store: Store) -> None:
        cfg = self.config
        self._setup_process()
        set_seed(cfg.seed)
        if self.ctx.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
            # deterministic mode also NaN-fills every new tensor (a debugging aid for reads of
            # uninitialised memory): a few % of a bf16 step; every kernel here writes its output
            torch.utils.deterministic.fill_uninitialized_memory = False
        self.check_schema(store)
        for split in ("train", "valid"):
            store.split(split)
        initialise_weights(self.model, cfg.init)  # before a resume restores the saved weights
        model = self.model.to(self.ctx.device)
        self._install_hooks()
        self.optimizer = build_optimizer(model, cfg)

    def start(self, store: Store) -> None:
        self._train_model = self._wrap_ddp(store) if self.ctx.distributed else self.model

    def stop(self) -> None:
        self._train_model = self.model

    def _wrap_ddp(self, store: Store) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        unused = self._unused_parameters(store)
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return DDP(self.model, device_ids=device_ids, find_unused_parameters=bool(unused))

    def _unused_parameters(self, store: Store) -> list[str]:
        """Names of parameters that get no gradient (DDP must then look for unused ones each step).

        Found with one forward/backward in eval mode (no dropout draws, no BatchNorm statistics
        updated), so the probe changes neither the RNG stream nor the model.
        """
        batch = next(BatchReader(store, "train", 8).iter_epoch(0))
        was_training = self.model.training
        self.model.eval()
        logits, aux_loss = split_output(self.model(self._to_device(to_tensors(batch))))
        training_objective(logits.float().sum(), aux_loss=aux_loss).backward()
        unused = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        self.model.zero_grad(set_to_none=True)
        self.model.train(was_training)
        return unused

    # -- Backend: steps ------------------------------------------------------------------------
    def train_batches(self, reader: BatchReader, epoch: int, start_batch: int, *,
                      ignore_signals: bool) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self._loader(reader, epoch, start_batch, ignore_signals=ignore_signals):
            yield self._to_device(batch)

    def begin_epoch(self) -> None:
        self._train_model.train()

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One optimiser step; returns the batch's BCE (detached, on device, no host sync)."""
        objective, bce = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        return bce.detach()

    def batch_rows(self, batch: Mapping[str, torch.Tensor]) -> int:
        return batch["label"].shape[0]

    def new_loss_sum(self, value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float64, device=self.ctx.device)

    def accumulate_loss(self, loss_sum: torch.Tensor, loss: torch.Tensor, rows: int) -> torch.Tensor:
        return loss_sum.add_(loss, alpha=rows)  # float64 accumulator, in place, no host sync

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def non_finite_weight(self) -> str | None:
        return first_non_finite(self.model.state_dict())

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def peak_device_memory(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.ctx.device) if self.ctx.device.type == "cuda" else None

    def open_scalar_writer(self, log_dir: Path, purge_step: int | None):
        return open_scalar_writer(log_dir, purge_step)

    def _loader(self, reader: BatchReader, epoch: int = 0, start_batch: int = 0, *, ignore_signals: bool = False):
        """The reader's batches through :func:`make_loader`; with ``ignore_signals`` its workers
        ignore SIGINT/SIGTERM (:class:`IgnoreStopSignals`) while the loop handles them."""
        cfg = self.config
        loader = make_loader(reader, epoch, start_batch, cfg.num_workers, self.ctx.device.type == "cuda")
        if ignore_signals and cfg.num_workers:
            loader.worker_init_fn = IgnoreStopSignals(loader.worker_init_fn)
        return loader

    def _to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.ctx.device.type == "cpu":
            return dict(batch)
        return {k: v.to(self.ctx.device, non_blocking=True) for k, v in batch.items()}

    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- Backend: evaluation -------------------------------------------------------------------
    def predict_split(self, store: Store, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        was_training = self._train_model.training
        self.model.to(self.device)  # a no-op inside a run; a loaded model may still be on the CPU
        try:
            return self._predict_split(store, split)
        finally:
            self._train_model.train(was_training)

    def _eval_batch_size(self) -> int:
        return self.config.eval_batch_size or self.config.batch_size

    def _predict_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            logits, _ = split_output(self.model(batch))
            return torch.sigmoid(logits.float())

    def _predict_split(self, store: Store, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``split`` in store order, sharded across ranks and gathered: probabilities, labels, groups."""
        ctx = self.ctx
        reader = BatchReader(store, split, self._eval_batch_size(), rank=ctx.rank, world_size=ctx.world_size)
        probs, labels, groups = [], [], []
        for batch in self._loader(reader):
            batch = self._to_device(batch)
            probs.append(self._predict_batch(batch))
            labels.append(batch["label"])
            if GROUP in batch:
                groups.append(batch[GROUP].long())
        empty = torch.zeros(0, device=ctx.device)
        p = torch.cat(probs) if probs else empty
        y = torch.cat(labels).float() if labels else empty
        g = torch.cat(groups) if groups else None
        if ctx.distributed:
            p, y = _gather_padded(p), _gather_padded(y)
            g = _gather_padded(g) if g is not None else None
        return p.double().cpu().numpy(), y.double().cpu().numpy(), None if g is None else g.cpu().numpy()

    # -- Backend: checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, path: Path, entries: Mapping[str, Any], *, kept: str) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "kind": entries["kind"],
            "ctrkit_version": __version__,
            "torch_version": str(torch.__version__),
            **{k: v for k, v in entries.items() if k not in ("kind", "progress")},
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }
        if entries["kind"] == "last":
            progress = dict(entries["progress"])
            progress["epoch_loss_sum"] = torch.tensor(progress["epoch_loss_sum"], dtype=torch.float64)
            payload.update(optimizer=self.optimizer.state_dict(), progress=progress, rng=rng_state())
        save_checkpoint(path, payload, kept=kept)

    def read_checkpoint(self, path: Path, *, resume: bool) -> dict[str, Any]:
        return _load_resumable(path) if resume else load_checkpoint(path)

    def restore(self, payload: Mapping[str, Any], path: Path) -> None:
        check_state_fits(self.model.state_dict(), payload["model"], path, self.config.model)
        load_weights(self.model, payload["model"], path)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
            set_rng_state(payload["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise InputError(f"{path}: its training state (optimizer, scheduler, progress or RNG) is damaged: "
                             f"{_first_line(exc)}") from None

    def read_weights(self, path: Path) -> dict[str, torch.Tensor]:
        return load_checkpoint(path)["model"]

    def set_weights(self, weights: Mapping[str, torch.Tensor], path: Path) -> None:
        load_weights(self.model, weights, path)


def _as_tensors(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if all(isinstance(v, torch.Tensor) for v in batch.values()):
        return dict(batch)
    return to_tensors({k: np.asarray(v) for k, v in batch.items()})


# ---------------------------------------------------------------------------------------------
# What ctrkit.training.frameworks calls (`ctrkit train`, `evaluate`, `predict`)
# ---------------------------------------------------------------------------------------------
def launch_rank(config: TrainConfig) -> tuple[int, int]:
    """``(rank, world_size)`` of this process (torchrun's, or 0 of 1), after checking the GPUs."""
    env = torchrun_env()
    check_gpu_ids(config.gpu_ids)
    if env is not None and config.batch_size % env[1]:
        raise ConfigError(f"--batch_size {config.batch_size} must be divisible by the number of processes ({env[1]})")
    return (env[0], env[1]) if env is not None else (0, 1)


def fit_from_config(config: TrainConfig, store: Store, *, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Seed, build the model of ``config`` for ``store``'s schema, and train it."""
    from ctrkit.registry import build_torch_model

    set_seed(config.seed)
    model, ignored = build_torch_model(config.model, store.schema, config.hparams())
    if ignored and warn is not None:
        flags = ", ".join(f"--{k}" if hasattr(config, k) else f"--model_args {k}" for k in ignored)
        warn(f"warning: {config.model} does not use {flags}; ignored")
    return Trainer(model, config, schema=store.schema).fit(store)


def load_for_inference(path: str | os.PathLike, **overrides: Any) -> Trainer:
    """Check the device, set the threads, and rebuild the trainer of the checkpoint at ``path``."""
    check_gpu_ids(overrides.get("gpu_ids", []))
    if overrides.get("threads"):
        torch.set_num_threads(overrides["threads"])
    return Trainer.from_checkpoint(path, **overrides)
