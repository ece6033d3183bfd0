"""Training, evaluation and prediction of the PyTorch models.

``Trainer(model, config).fit(store)`` runs the whole recipe: optimiser with parameter groups,
per-epoch validation (AUC, logloss), learning rate x ``lr_factor`` on a validation plateau, early
stopping, best and resumable checkpoints, test metrics of the best weights, ``metrics.json``,
TensorBoard scalars and progress bars.

Regularisation (chosen by module type, never by parameter-name substrings; see
:func:`parameter_groups`):

* ``embedding`` group — the weights of every :class:`~ctrkit.pytorch.layers.EmbeddingTable`: no
  weight decay. Instead a forward hook on each table adds ``embedding_l2 * sum(rows ** 2) / B`` to
  the loss for the rows the batch actually looked up (a row read twice counts twice), so the
  regulariser costs ``O(B)`` per step instead of ``O(vocabulary)``.
* ``no_decay`` group — parameters of norm layers, of ``Bias`` modules, and the ``bias`` of
  ``nn.Linear``/``nn.Conv*``.
* ``decay`` group — everything else, with ``weight_decay``. For Adam, Adagrad and SGD this is the
  classic coupled L2 penalty: the optimiser adds ``weight_decay * w`` to the gradient, exactly the
  gradient of ``weight_decay / 2 * ||w||^2`` added to the loss (it is not added to the reported
  loss). For AdamW it is the decoupled decay of Loshchilov & Hutter (``w -= lr * weight_decay * w``).

Devices and processes: no ``gpu_ids`` -> CPU; one id -> ``cuda:<id>``; several ids (or
``cpu_processes > 1``) -> one process per device started with ``torch.multiprocessing.spawn``,
``DistributedDataParallel`` over NCCL (GPUs) or gloo (CPU), global batch split evenly across ranks.
Started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) the trainer joins
the existing ``env://`` group instead of spawning. Rank 0 alone writes files and prints; evaluation
is sharded across ranks and the predictions are gathered, so metrics equal single-process ones.

Checkpoints hold only tensors and plain Python values, are written atomically (temporary file,
fsync, ``os.replace``) and are always loaded with ``torch.load(..., weights_only=True)``. Both
``best.pt`` and ``last.pt`` are dicts with::

    format="ctrkit-torch-checkpoint", version=1, kind="best"|"last", ctrkit_version, torch_version,
    model_name (registry name), hparams (every constructor keyword of the model, defaults included:
    ctrkit.registry.resolved_hparams), schema (Schema.to_dict()),
    config (TrainConfig.to_dict()), model (state_dict, CPU tensors)

``best.pt`` adds ``epoch`` (1-based) and ``valid`` (its validation metrics); ``last.pt`` adds
``optimizer`` and ``scheduler`` state dicts, ``rng`` (torch CPU/CUDA states as uint8 tensors, numpy
MT19937 keys as an int64 tensor plus position/gauss, python's state as a list) and ``progress``
(:class:`Progress`: epoch, batch within the epoch, step, best AUC/epoch, epochs without improvement,
stop reason, history, the epoch's running loss sum and rows, world size).

Faults (each a one-line :class:`~ctrkit.errors.CtrkitError`, nothing half-written):

* divergence — a non-finite training loss (checked at every ``log_every`` step, before every
  checkpoint and at each epoch end, where the loss sum is read back from the device anyway) or
  non-finite weights before a checkpoint stop training with :class:`TrainingDivergedError`; the
  checkpoints keep the last finite weights. A non-finite validation score never counts as an
  improvement. An epoch loss far above that of a constant prediction gets a warning.
* the run directory — a directory holding a previous run needs ``resume`` or ``overwrite``; it
  is locked for the whole run (:func:`ctrkit.fileio.target_lock`), and what killed runs left in it
  (``.last.pt.tmp-<pid>``) is removed at the start.
* preemption — in a single-process run, SIGINT or SIGTERM finishes the current step, writes
  ``last.pt`` and raises :class:`TrainingInterrupted` (exit code 128 + the signal number); a
  second signal stops at once (the atomic writes keep the previous files). Under DDP the signals
  keep their default behaviour: the ranks would have to agree on the step to stop at.
* broken checkpoints — every loaded checkpoint is checked (entries and their types, tensor
  shapes against the model its schema and hyper-parameters describe, built first on the
  ``meta`` device so an absurd vocabulary allocates nothing, finite weights).
* disk full — a checkpoint or ``metrics.json`` that cannot be written is an
  :class:`~ctrkit.errors.OutputError` that says which previous files are intact.

Determinism: ``--seed`` seeds python, numpy and torch; on CPU the trainer also switches on
``torch.use_deterministic_algorithms(True, warn_only=True)`` (process-wide, without its NaN-filling
of new tensors). Two CPU runs with the same seed and thread count give identical metrics, and a resumed run reproduces the uninterrupted
one exactly: data order is a function of ``(seed, epoch)``, the loader uses its own generator, and
the RNG states are restored at the step where ``last.pt`` was written. Under DDP every rank holds
the same RNG state (same seed, same number of draws), so rank 0's is the one saved.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import gc
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
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
from ctrkit.errors import ConfigError, CtrkitError, InputError, OutputError, StoreError
from ctrkit.fileio import (
    atomic_output,
    clean_directory_debris,
    is_disk_full,
    json_safe,  # noqa: F401 (moved to ctrkit.fileio; `from ctrkit.pytorch.trainer import json_safe` still works)
    os_error_message,
    target_lock,
    write_json_atomic,
)
from ctrkit.metrics import binary_metrics
from ctrkit.pytorch.layers import Bias, EmbeddingTable
from ctrkit.pytorch.loader import make_loader, to_tensors
from ctrkit.runtime import busy_cores_advice, keep_freed_memory
from ctrkit.schema import Schema

CHECKPOINT_FORMAT = "ctrkit-torch-checkpoint"
CHECKPOINT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.json"
TENSORBOARD = "tensorboard"
#: What a run leaves in its ``model_save_dir``: a directory holding any of them holds a run.
RUN_FILES = (BEST, LAST, METRICS, TENSORBOARD)
#: An epoch's mean training loss above this is far worse than predicting 50 % for every row
#: (BCE log 2), itself no better than the base rate: a sign of a too high learning rate.
LOSS_WARNING_FACTOR = 10.0

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
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "embedding": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            groups[_group_of(module, name)].append(param)
    decay = {"decay": weight_decay, "no_decay": 0.0, "embedding": 0.0}
    return [{"name": k, "params": v, "weight_decay": decay[k]} for k, v in groups.items() if v]


def _group_of(module: nn.Module, param_name: str) -> str:
    if isinstance(module, EmbeddingTable):
        return "embedding"
    if isinstance(module, _NORM_TYPES) or isinstance(module, Bias):
        return "no_decay"
    if param_name == "bias" and isinstance(module, _BIASED_TYPES):
        return "no_decay"
    return "decay"


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
# Errors of a training run
# ---------------------------------------------------------------------------------------------
class TrainingDivergedError(CtrkitError):
    """The training loss or the weights became non-finite; the checkpoints keep the last finite weights."""


class TrainingInterrupted(CtrkitError):
    """SIGINT or SIGTERM stopped training; ``exit_code`` is the shell's ``128 + signal number``."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum

    def __reduce__(self):  # pickle both arguments (Exception's default passes only the message)
        return type(self), (str(self), self.signum)


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
    _check_entries(payload, _CHECKPOINT_ENTRIES, path)
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
    _check_entries(payload, _RESUME_ENTRIES, path)
    progress = payload["progress"]
    needed = [f.name for f in dataclasses.fields(Progress)] + ["epoch_loss_sum"]
    missing = [name for name in needed if name not in progress]
    if missing:
        raise InputError(f"{path}: its 'progress' entry lacks {', '.join(missing)}; the checkpoint is damaged")
    if not isinstance(progress["epoch_loss_sum"], torch.Tensor):
        raise InputError(f"{path}: progress 'epoch_loss_sum' is not a tensor; the checkpoint is damaged")


def _check_entries(payload: Mapping[str, Any], entries: Mapping[str, type], path: str | os.PathLike) -> None:
    for key, kind in entries.items():
        if key not in payload:
            raise InputError(f"{path}: the checkpoint has no {key!r} entry; it is damaged or was not written by ctrkit")
        value = payload[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InputError(
                f"{path}: the checkpoint's {key!r} entry is a {type(value).__name__}, not a {kind.__name__}; "
                "it is damaged"
            )


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


# ---------------------------------------------------------------------------------------------
# Run policy: the run directory, divergence, signals (no torch; framework-neutral)
# ---------------------------------------------------------------------------------------------
def check_run_directory(save_dir: Path) -> None:
    """OutputError unless ``save_dir`` is a directory or can be made one; creates nothing.

    Catches an existing file at the path or above it (``file/sub``) and an unwritable parent
    before any work; what only ``mkdir`` can tell (``/proc/x``) :func:`create_run_directory` reports.
    """
    if save_dir.exists() and not save_dir.is_dir():
        raise OutputError(f"--model_save_dir {save_dir}: is a file, not a directory")
    ancestor = save_dir
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"--model_save_dir {save_dir}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"--model_save_dir {save_dir}: directory {ancestor} is not writable")


def create_run_directory(save_dir: Path) -> None:
    """``mkdir -p save_dir``; a failure is one OutputError line."""
    check_run_directory(save_dir)
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--model_save_dir {save_dir}: cannot create it: {os_error_message(exc)}") from None


def previous_run_files(save_dir: Path) -> list[str]:
    """The :data:`RUN_FILES` present in ``save_dir`` (an empty TensorBoard folder does not count)."""
    found = []
    for name in RUN_FILES:
        path = save_dir / name
        if path.is_dir():
            if any(p.is_file() for p in path.rglob("*")):
                found.append(name)
        elif path.exists():
            found.append(name)
    return found


def describe_previous_run(save_dir: Path) -> str:
    """``a finished deepfm run`` / ``an unfinished run``, from its ``metrics.json`` where readable."""
    try:
        metrics = json.loads((save_dir / METRICS).read_text())
    except (OSError, ValueError):
        metrics = {}
    if not isinstance(metrics, dict):
        metrics = {}
    model = metrics.get("model") if isinstance(metrics.get("model"), str) else ""
    finished = metrics.get("stopped") in ("completed", "early_stopping")
    return f"{'a finished' if finished else 'an unfinished'} {model + ' ' if model else ''}run"


def check_previous_run(save_dir: Path, *, resume: bool, overwrite: bool) -> list[str]:
    """The previous run's files that ``overwrite`` replaces; ConfigError if neither flag allows them."""
    files = previous_run_files(save_dir) if save_dir.is_dir() else []
    if files and not resume and not overwrite:
        raise ConfigError(
            f"{save_dir} holds {describe_previous_run(save_dir)} ({', '.join(files)}); "
            "pass --resume to continue it or --overwrite to replace it"
        )
    return [] if resume else files


@contextlib.contextmanager
def open_run_directory(save_dir: Path, *, resume: bool, overwrite: bool,
                       log: Callable[[str], None]) -> Iterator[None]:
    """Create and lock ``save_dir`` for one run; tidy it first (debris, ``--overwrite``).

    The lock (:func:`ctrkit.fileio.target_lock`) is held until the run ends, so a second training
    into the same directory fails at once, naming the first. Debris of killed runs
    (``.last.pt.tmp-<pid>`` of a dead pid) is removed; with ``overwrite`` the previous run's files
    are removed too, so that nothing of it (TensorBoard events included) mixes with the new one.
    """
    create_run_directory(save_dir)
    with target_lock(save_dir, "training"):
        for line in clean_directory_debris(save_dir):
            log(line)
        replaced = check_previous_run(save_dir, resume=resume, overwrite=overwrite)
        for name in replaced:
            path = save_dir / name
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError as exc:
                raise OutputError(f"--overwrite: cannot remove {path}: {os_error_message(exc)}") from None
        if replaced:
            log(f"--overwrite: removed the previous run's {', '.join(replaced)} from {save_dir}")
        yield


def is_improvement(score: Mapping[str, float], best_auc: float) -> bool:
    """Whether a validation result beats the best AUC so far: both scores finite, the AUC higher.

    (``nan > x`` is already False, but a NaN logloss with a finite AUC, or an infinite AUC, would
    otherwise count as the best epoch and be saved as ``best.pt``.)
    """
    auc_value, logloss_value = float(score["auc"]), float(score["logloss"])
    return math.isfinite(auc_value) and math.isfinite(logloss_value) and auc_value > best_auc


def base_rate_loss(ctr: float) -> float:
    """BCE of predicting the constant ``ctr`` for every row (the loss of knowing only the base rate)."""
    if not 0.0 < ctr < 1.0:
        return 0.0
    return -(ctr * math.log(ctr) + (1.0 - ctr) * math.log(1.0 - ctr))


def high_loss_warning(epoch: int, train_loss: float, ctr: float, lr: float) -> str | None:
    """A warning when an epoch's loss is far above that of a constant prediction, else None."""
    if not train_loss > LOSS_WARNING_FACTOR * math.log(2.0):
        return None
    if 0.0 < ctr < 1.0:
        constant = f"{base_rate_loss(ctr):.3f}, the loss of predicting the training CTR {ctr:.3g} for every row"
    else:
        constant = f"{math.log(2.0):.3f}, the loss of predicting 50 % for every row"
    return (f"warning: epoch {epoch} train_loss {train_loss:.6g} is far above {constant}; "
            f"the learning rate (--lr {lr:g}) is probably too high")


class StopSignals:
    """SIGINT and SIGTERM while training: remember the first and let the trainer stop after the step.

    Installed only in the main thread (Python's rule for signal handlers); elsewhere ``received``
    stays None and the signals keep their previous handlers. A second signal raises
    :class:`TrainingInterrupted` at once: the atomic writes leave every file complete.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
            return
        raise TrainingInterrupted(
            f"interrupted again by {signal.Signals(signum).name} while stopping; stopped at once, "
            "the files in --model_save_dir are those of the last complete write", signum
        )

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    @property
    def installed(self) -> bool:
        return bool(self._previous)


class IgnoreStopSignals:
    """``worker_init_fn`` of the training loader while :class:`StopSignals` is installed.

    A scheduler's SIGTERM (or Ctrl-C in a terminal) reaches the loader workers too; dying of it,
    they would make torch raise "DataLoader worker is killed by signal" in the main process, in
    the middle of a step or of the ``last.pt`` write. Ignoring it, they keep serving batches
    until the main process has saved and shuts them down.
    """

    def __init__(self, then: Callable[[int], None] | None = None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        for signum in StopSignals.SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self.then is not None:
            self.then(worker_id)


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


def _spawn_entry(rank: int, model: nn.Module, config: TrainConfig, store_path: str, port: int) -> None:
    """Body of one process started by :meth:`Trainer.fit` through ``torch.multiprocessing.spawn``.

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
    trainer._run(Store(store_path), (rank, world, rank))
    _close_group(device)


def _close_group(device: torch.device) -> None:
    """Leave the process group after a successful run: wait for every rank, then destroy it."""
    gc.collect()  # drop DDP reducers that still refer to the group
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Training state
# ---------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """Counters saved in ``last.pt``: where training is, and the early-stopping bookkeeping."""

    epoch: int = 0  # epoch in progress (0-based)
    batch: int = 0  # batches of that epoch already trained on (per rank)
    step: int = 0  # optimiser steps since the start
    best_auc: float = -math.inf
    best_epoch: int = 0  # 1-based; 0 = none yet
    bad_epochs: int = 0
    stopped: str = ""  # "", "early_stopping"
    epoch_loss_rows: int = 0
    history: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Fit, evaluate and predict with one model.

    Args:
        model: a pure model, ``model(batch) -> logits [B]``.
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
        self.ctx = ProcessContext()
        if config.gpu_ids:
            check_gpu_ids(config.gpu_ids)
            self.ctx.device = torch.device("cuda", config.gpu_ids[0])  # a rank picks its own in _run
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.progress = Progress()
        self.step_hook: Callable[[int], None] | None = None  # called after every step (tests)
        self._train_model: nn.Module = model  # the DDP wrapper while training distributed
        self._hooks: list[Any] = []
        self._reg_terms: list[torch.Tensor] = []
        self._collect_reg = False
        self._writer = None
        self._epoch_loss_sum = torch.zeros((), dtype=torch.float64)  # BCE * rows of the epoch so far
        self._directory_ready = False  # True in a spawned rank: the launching process holds the lock
        self._signals = StopSignals()
        self._saved_last = ""  # where the last.pt on disk stands ("epoch 2, step 30"), for messages
        self._saved_best = 0  # epoch of the best.pt on disk

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
        store = store if isinstance(store, Store) else Store(store)
        self._check_schema(store)
        self._check_rebuildable()
        env = torchrun_env()
        if env is None and self.config.world_size > 1:
            cfg = self.config
            with open_run_directory(cfg.save_dir, resume=cfg.resume, overwrite=cfg.overwrite, log=self._log):
                return self._spawn(store)
        return self._run(store, env)

    def evaluate(self, store: Store | str | os.PathLike, split: str = "test") -> dict[str, Any]:
        """AUC, logloss, rows and observed CTR of the current weights on one split."""
        store = store if isinstance(store, Store) else Store(store)
        self._check_schema(store)
        if not store.split(split).labeled:
            raise StoreError(f"split {split!r} of {store.path} has no labels; use `ctrkit predict`")
        self.model.to(self.device)
        probs, labels = self._predict_split(store, split)
        return {"split": split, **binary_metrics(labels, probs)}

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

    def _checked_batch(self, batch: Mapping[str, Any], index: int) -> Mapping[str, Any]:
        """``batch`` after :func:`check_batch` of its features (labels play no part in a prediction)."""
        schema = self.schema or getattr(self.model, "schema", None)
        if isinstance(schema, Schema):
            features = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                        for k, v in batch.items() if k != "label"}
            check_batch(features, schema, where=f"batch {index} given to predict")
        return batch

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective, bce)`` of one batch in training mode: the objective adds the embedding term."""
        self._install_hooks()
        self._reg_terms.clear()
        self._collect_reg = True
        try:
            with self._autocast():
                logits = self._train_model(batch)
        finally:
            self._collect_reg = False
        bce = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
        objective = bce
        if self._reg_terms:
            rows = batch["label"].shape[0]
            objective = bce + self.config.embedding_l2 * torch.stack(self._reg_terms).sum() / rows
            self._reg_terms.clear()
        return objective, bce

    # -- embedding regulariser ----------------------------------------------------------------
    def _install_hooks(self) -> None:
        if self._hooks or self.config.embedding_l2 <= 0:
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
                args=(self.model, self.config, str(store.path), rendezvous.port),
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
            metrics = self._train(store)
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

    def _barrier(self) -> None:
        if self.ctx.distributed:
            if self.ctx.device.type == "cuda":
                dist.barrier(device_ids=[self.ctx.device.index])
            else:
                dist.barrier()

    def _broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (e.g. a checkpoint read from rank 0's disk)."""
        if not self.ctx.distributed:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0, device=self.ctx.device if self.ctx.device.type == "cuda" else None)
        return holder[0]

    def _log(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, flush=True)

    def _warn(self, message: str) -> None:
        if self.ctx.is_main:
            print(message, file=sys.stderr, flush=True)

    def _on_main(self, action: Callable[[], Any]) -> Any:
        """``action()`` on rank 0 and its result on every rank; a user error there is raised on every rank.

        (Raised on rank 0 alone, it would leave the other ranks waiting in their next collective.)
        """
        result, failure = None, None
        if self.ctx.is_main:
            try:
                result = action()
            except CtrkitError as exc:
                failure = exc
        if self.ctx.distributed:
            result, failure = self._broadcast_object((result, failure))
        if failure is not None:
            raise failure
        return result

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

    # -- the training run ------------------------------------------------------------------------
    def _train(self, store: Store) -> dict[str, Any]:
        """Train with the run directory created, tidied and locked (by rank 0, unless a launcher did)."""
        cfg = self.config
        with contextlib.ExitStack() as stack:
            if not self._directory_ready:
                self._on_main(lambda: stack.enter_context(
                    open_run_directory(cfg.save_dir, resume=cfg.resume, overwrite=cfg.overwrite, log=self._log)))
            return self._train_in_directory(store)

    def _train_in_directory(self, store: Store) -> dict[str, Any]:
        cfg, ctx = self.config, self.ctx
        self._setup_process()
        set_seed(cfg.seed)
        if ctx.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
            # deterministic mode also NaN-fills every new tensor (a debugging aid for reads of
            # uninitialised memory): a few % of a bf16 step; every kernel here writes its output
            torch.utils.deterministic.fill_uninitialized_memory = False
        self._check_schema(store)
        for split in ("train", "valid"):
            store.split(split)
        initialise_weights(self.model, cfg.init)  # before a resume restores the saved weights
        model = self.model.to(ctx.device)
        self._install_hooks()
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience, threshold=0.0
        )
        self.progress = Progress()
        self._epoch_loss_sum = torch.zeros((), dtype=torch.float64)
        self._saved_last, self._saved_best = "", 0
        if cfg.resume:
            self._restore(cfg.save_dir / LAST)
        self._train_model = self._wrap_ddp(store) if ctx.distributed else model
        reader = BatchReader(
            store, "train", cfg.batch_size // ctx.world_size, shuffle=True, seed=cfg.seed,
            rank=ctx.rank, world_size=ctx.world_size, even_shards=True, drop_last=False,
        )
        if ctx.is_main:
            self._writer = _summary_writer(cfg.save_dir / TENSORBOARD, self.progress.step if cfg.resume else None)
        self._signals = StopSignals()  # a fresh one per run: an earlier run's signal is spent
        try:
            # SIGINT/SIGTERM end a single-process run cleanly after a step; under DDP all ranks would
            # have to agree on that step (a collective per step), so there they keep their defaults
            with self._signals if not ctx.distributed else contextlib.nullcontext():
                stopped, rows_per_s = self._epochs(store, reader)
            return self._finish(store, stopped, rows_per_s)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
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
        self.model(self._to_device(to_tensors(batch))).float().sum().backward()
        unused = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        self.model.zero_grad(set_to_none=True)
        self.model.train(was_training)
        return unused

    def _epochs(self, store: Store, reader: BatchReader) -> tuple[str, float]:
        """Train epoch after epoch; returns why training stopped and the mean training rows/s."""
        cfg, progress = self.config, self.progress
        if progress.stopped:
            return progress.stopped, 0.0
        rows_total, seconds_total = 0, 0.0
        while progress.epoch < cfg.epochs:
            completed, rows, seconds, train_loss = self._train_epoch(reader)
            rows_total, seconds_total = rows_total + rows, seconds_total + seconds
            if not completed:
                return "max_steps", rows_total / max(seconds_total, 1e-9)
            self._end_epoch(store, train_loss, rows / max(seconds, 1e-9), seconds)
            if self._signals.received is not None:  # arrived during validation: last.pt is written
                raise self._interrupted()
            if progress.stopped:
                break
            if cfg.max_steps and progress.step >= cfg.max_steps:
                progress.stopped = "max_steps"
                break
        return progress.stopped or "completed", rows_total / max(seconds_total, 1e-9)

    def _train_epoch(self, reader: BatchReader) -> tuple[bool, int, float, float]:
        """One (possibly resumed) epoch; returns (completed, rows, seconds, mean train loss)."""
        cfg, ctx, progress = self.config, self.ctx, self.progress
        model = self._train_model
        model.train()
        total = len(reader)
        loader = self._loader(reader, progress.epoch, progress.batch)
        bar = _progress_bar(total, progress.batch, f"epoch {progress.epoch + 1}/{cfg.epochs}", ctx.is_main)
        self._epoch_loss_sum = loss_sum = self._epoch_loss_sum.to(ctx.device)  # updated in place
        rows, last_logged, start = 0, progress.batch, time.perf_counter()
        try:
            for batch in loader:
                batch = self._to_device(batch)
                loss = self._step(batch)
                n = batch["label"].shape[0]
                loss_sum.add_(loss, alpha=n)  # float64 accumulator, no host sync
                rows += n
                progress.epoch_loss_rows += n
                progress.step += 1
                progress.batch += 1
                if progress.step % cfg.log_every == 0:
                    self._check_loss(loss_sum)  # the same host sync as the log's
                    self._log_step(bar, loss, progress.batch - last_logged, rows, start)
                    last_logged = progress.batch
                if self.step_hook is not None:
                    self.step_hook(progress.step)
                if self._signals.received is not None:
                    self._check_loss(loss_sum)
                    self._save_last()
                    raise self._interrupted()
                if cfg.max_steps and progress.step >= cfg.max_steps and progress.batch < total:
                    self._check_loss(loss_sum)
                    self._save_last()
                    return False, rows * ctx.world_size, time.perf_counter() - start, float("nan")
                if cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 and progress.batch < total:
                    self._check_loss(loss_sum)
                    self._save_last()
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        loss_sum, loss_rows = self._reduce_sum(loss_sum), self._reduce_sum(progress.epoch_loss_rows)
        train_loss = float(loss_sum) / max(float(loss_rows), 1.0)
        if not math.isfinite(train_loss):
            raise self._diverged(f"the epoch's training loss is {train_loss}")
        return True, rows * ctx.world_size, seconds, train_loss

    def _check_loss(self, loss_sum: torch.Tensor) -> None:
        """TrainingDivergedError once the epoch's running loss sum (summed over ranks) is not finite.

        A sum of non-negative BCE terms is finite exactly when every term was, so one read-back
        covers every step since the epoch began.
        """
        total = self._reduce_sum(loss_sum)
        if not math.isfinite(total):
            raise self._diverged(f"the training loss became {total}")

    def _diverged(self, what: str) -> TrainingDivergedError:
        """The error that ends a diverged run (``metrics.json`` says ``stopped: diverged``)."""
        cfg = self.config
        self._write_metrics(self._summary("diverged", 0.0, None))
        kept = self._kept_checkpoints()
        kept = f"{kept} in {cfg.save_dir} keep the last finite weights" if kept else "no checkpoint was written"
        return TrainingDivergedError(
            f"training diverged: {what} by {self._position()} (--optimizer {cfg.optimizer} --lr {cfg.lr:g}); "
            f"{kept}; lower --lr and train again"
        )

    def _interrupted(self) -> TrainingInterrupted:
        """The error that ends a run stopped by a signal, once ``last.pt`` is written."""
        self._write_metrics(self._summary("interrupted", 0.0, None))
        return TrainingInterrupted(
            f"interrupted by {self._signals.name} at {self._position()}; {LAST} saved; continue with --resume",
            self._signals.received,
        )

    def _position(self) -> str:
        progress = self.progress
        if progress.batch == 0 and progress.epoch > 0:
            return f"the end of epoch {progress.epoch}, step {progress.step}"
        return f"epoch {progress.epoch + 1}, step {progress.step}"

    def _kept_checkpoints(self) -> str:
        """``last.pt (epoch 2, step 30) and best.pt (epoch 1)``: this run's checkpoints on disk, or ""."""
        parts = [f"{LAST} ({self._saved_last})"] if self._saved_last else []
        parts += [f"{BEST} (epoch {self._saved_best})"] if self._saved_best else []
        return " and ".join(parts)

    def _kept_note(self) -> str:
        """What a failed checkpoint write leaves, for :class:`OutputError` messages."""
        kept = self._kept_checkpoints()
        return f"the previous {kept} are intact" if kept else "no checkpoint of this run had been written yet"

    def _check_weights(self) -> None:
        """TrainingDivergedError before a checkpoint would store NaN or infinite weights."""
        bad = first_non_finite(self.model.state_dict())
        if bad is not None:
            raise self._diverged(f"weight {bad} became NaN or infinite")

    def _step(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One optimiser step; returns the batch's BCE (detached, on device, no host sync)."""
        objective, bce = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        return bce.detach()

    def _end_epoch(self, store: Store, train_loss: float, rows_per_s: float, seconds: float) -> None:
        """Validate, update best/plateau/early-stopping state, log, checkpoint."""
        cfg, progress = self.config, self.progress
        valid = self._evaluate_distributed(store, "valid")
        lr = self.optimizer.param_groups[0]["lr"]
        epoch = progress.epoch + 1
        improved = is_improvement(valid, progress.best_auc)
        warning = high_loss_warning(epoch, train_loss, store.splits["train"].ctr, lr)
        if warning:
            self._warn(warning)
        if improved:
            progress.best_auc, progress.best_epoch, progress.bad_epochs = valid["auc"], epoch, 0
        else:
            progress.bad_epochs += 1
        self.scheduler.step(valid["auc"])
        record = {
            "epoch": epoch, "steps": progress.step, "train_loss": train_loss, "valid_auc": valid["auc"],
            "valid_logloss": valid["logloss"], "lr": lr, "seconds": round(seconds, 3),
            "rows_per_s": round(rows_per_s, 1), "improved": bool(improved),
        }
        progress.history.append(record)
        progress.epoch, progress.batch, progress.epoch_loss_rows = epoch, 0, 0
        self._epoch_loss_sum = torch.zeros((), dtype=torch.float64)
        if progress.bad_epochs >= max(cfg.patience, 1):
            progress.stopped = "early_stopping"
        self._log(
            f"epoch {epoch}/{cfg.epochs}  train_loss {train_loss:.5f}  valid_auc {valid['auc']:.5f}  "
            f"valid_logloss {valid['logloss']:.5f}  lr {lr:.3g}  {rows_per_s:,.0f} rows/s  {seconds:.1f}s"
            + ("  *best*" if improved else "") + ("  early stop" if progress.stopped else "")
        )
        self._scalars({"valid/auc": valid["auc"], "valid/logloss": valid["logloss"], "train/epoch_loss": train_loss,
                       "train/lr": lr, "train/rows_per_s": rows_per_s}, epoch)
        if improved:
            self._save_best(epoch, valid)
        self._save_last()
        self._write_metrics(self._summary("running", 0.0, None))

    def _finish(self, store: Store, stopped: str, rows_per_s: float) -> dict[str, Any]:
        """Test metrics of the best weights; final ``metrics.json``."""
        self._load_best()
        test = None
        if "test" in store.splits and store.splits["test"].labeled and store.splits["test"].rows:
            test = self._evaluate_distributed(store, "test")
            self._log(f"test (best epoch {self.progress.best_epoch}): auc {test['auc']:.5f}  "
                      f"logloss {test['logloss']:.5f}")
            self._scalars({"test/auc": test["auc"], "test/logloss": test["logloss"]}, self.progress.best_epoch)
        summary = self._summary(stopped, rows_per_s, test)
        self._write_metrics(summary)
        return summary

    # -- per-step helpers ------------------------------------------------------------------------
    def _loader(self, reader: BatchReader, epoch: int = 0, start_batch: int = 0):
        """The reader's batches through :func:`make_loader`; while the trainer handles SIGINT/SIGTERM,
        its workers ignore them (:class:`IgnoreStopSignals`)."""
        cfg = self.config
        loader = make_loader(reader, epoch, start_batch, cfg.num_workers, self.ctx.device.type == "cuda")
        if self._signals.installed and cfg.num_workers:
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

    def _log_step(self, bar, loss: torch.Tensor, batches: int, rows: int, start: float) -> None:
        """Every ``log_every`` steps: one host sync for the bar's loss and TensorBoard."""
        if bar.disable and self._writer is None:
            return
        value = float(loss)
        speed = rows * self.ctx.world_size / max(time.perf_counter() - start, 1e-9)
        bar.update(batches)
        bar.set_postfix(loss=f"{value:.4f}", rows_s=f"{speed:,.0f}", refresh=False)
        self._scalars({"train/loss": value}, self.progress.step)

    def _reduce_sum(self, value: torch.Tensor | int) -> float:
        tensor = torch.as_tensor(value, dtype=torch.float64, device=self.ctx.device)
        if self.ctx.distributed:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return float(tensor)

    def _scalars(self, values: Mapping[str, float], step: int) -> None:
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_batch_size(self) -> int:
        return self.config.eval_batch_size or self.config.batch_size

    def _predict_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            return torch.sigmoid(self.model(batch).float())

    def _predict_split(self, store: Store, split: str) -> tuple[np.ndarray, np.ndarray]:
        """This rank's shard of ``split`` (in store order): probabilities and labels."""
        ctx = self.ctx
        reader = BatchReader(store, split, self._eval_batch_size(), rank=ctx.rank, world_size=ctx.world_size)
        loader = self._loader(reader)
        probs, labels = [], []
        for batch in loader:
            batch = self._to_device(batch)
            probs.append(self._predict_batch(batch))
            labels.append(batch["label"])
        empty = torch.zeros(0, device=ctx.device)
        p = torch.cat(probs) if probs else empty
        y = torch.cat(labels).float() if labels else empty
        if ctx.distributed:
            p, y = _gather_padded(p), _gather_padded(y)
        return p.double().cpu().numpy(), y.double().cpu().numpy()

    def _evaluate_distributed(self, store: Store, split: str) -> dict[str, Any]:
        """Metrics of a split, evaluated in shards by all ranks and gathered (same on every rank)."""
        was_training = self._train_model.training
        probs, labels = self._predict_split(store, split)
        self._train_model.train(was_training)
        return binary_metrics(labels, probs)

    def _check_schema(self, store: Store) -> None:
        if self.schema is None:
            self.schema = store.schema
        elif self.schema.to_dict() != store.schema.to_dict():
            raise StoreError(
                f"store {store.path} has a different schema (fields or vocabulary sizes) from the one "
                "this model was trained on; use the store the model was trained with"
            )

    # -- checkpoints ---------------------------------------------------------------------------
    def _payload(self, kind: str) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "kind": kind,
            "ctrkit_version": __version__,
            "torch_version": str(torch.__version__),
            "model_name": self.config.model,
            "hparams": self.hparams,
            "schema": self.schema.to_dict(),
            "config": self.config.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }

    def _save_last(self) -> None:
        """``last.pt``: everything needed to continue exactly from this step (called on all ranks).

        The running loss of the epoch is saved summed over ranks; on resume rank 0 carries it.
        """
        self._check_weights()  # the same on every rank: DDP keeps the weights equal
        loss_sum = self._reduce_sum(self._epoch_loss_sum)
        loss_rows = self._reduce_sum(self.progress.epoch_loss_rows)
        if self.ctx.is_main:
            payload = self._payload("last")
            progress = asdict(self.progress)
            progress["epoch_loss_sum"] = torch.tensor(loss_sum, dtype=torch.float64)
            progress["epoch_loss_rows"] = int(loss_rows)
            progress["world_size"] = self.ctx.world_size
            payload.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                           progress=progress, rng=rng_state())
            save_checkpoint(self.config.save_dir / LAST, payload, kept=self._kept_note())
        self._saved_last = self._position()
        self._barrier()

    def _save_best(self, epoch: int, valid: Mapping[str, Any]) -> None:
        self._check_weights()
        if self.ctx.is_main:
            payload = self._payload("best")
            payload.update(epoch=epoch, valid={k: float(v) for k, v in valid.items()})
            save_checkpoint(self.config.save_dir / BEST, payload, kept=self._kept_note())
        self._saved_best = epoch
        self._barrier()

    def _restore(self, path: Path) -> None:
        """Continue from ``last.pt``: weights, optimiser, scheduler, counters and RNG states."""
        payload = self._on_main(lambda: _load_resumable(path))
        self._check_resumable(payload, path)
        check_state_fits(self.model.state_dict(), payload["model"], path, self.config.model)
        load_weights(self.model, payload["model"], path)
        saved = dict(payload["progress"])
        loss_sum = saved.pop("epoch_loss_sum").double()
        saved.pop("world_size", None)
        if not self.ctx.is_main:  # rank 0 carries the ranks' summed running loss
            loss_sum, saved["epoch_loss_rows"] = torch.zeros_like(loss_sum), 0
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
            progress = Progress(**saved)
            set_rng_state(payload["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise InputError(f"{path}: its training state (optimizer, scheduler, progress or RNG) is damaged: "
                             f"{_first_line(exc)}") from None
        self._epoch_loss_sum = loss_sum
        self.progress = progress
        p = self.progress
        self._saved_last, self._saved_best = self._position(), p.best_epoch
        self._log(f"resumed from {path}: epoch {p.epoch + 1}, batch {p.batch}, step {p.step}")

    def _check_resumable(self, payload: Mapping[str, Any], path: Path) -> None:
        from ctrkit.registry import resolved_hparams

        old = payload["config"]
        if payload["model_name"] != self.config.model:
            raise ConfigError(
                f"--resume: {path} holds a {payload['model_name']} model, not --model {self.config.model}"
            )
        # resolved: checkpoints before ctrkit recorded defaults hold only the values a user set
        saved = resolved_hparams(payload["model_name"], dict(payload["hparams"]))
        if saved != self.hparams:
            changed = sorted(k for k in set(saved) | set(self.hparams) if saved.get(k) != self.hparams.get(k))
            shown = ", ".join(f"{k} {saved.get(k)!r}" for k in changed)
            raise ConfigError(f"--resume: {path} was trained with {shown}; give the same hyper-parameters to resume it")
        for flag in ("batch_size", "seed", "optimizer"):
            if old.get(flag) != getattr(self.config, flag):
                raise ConfigError(
                    f"--resume: {path} was trained with --{flag} {old.get(flag)}, not {getattr(self.config, flag)}"
                )
        world = payload["progress"].get("world_size", 1)
        if payload["progress"]["batch"] and world != self.ctx.world_size:
            raise ConfigError(
                f"--resume: {path} stopped inside an epoch with {world} process(es); resume it with the same number"
            )
        if payload["schema"] != self.schema.to_dict():
            raise ConfigError(f"--resume: {path} was trained on a store with a different schema than --data")

    def _load_best(self) -> None:
        """Best weights (from ``best.pt``) into the model on every rank; current weights if none."""
        path = self.config.save_dir / BEST
        state = self._on_main(
            lambda: load_checkpoint(path)["model"] if self.progress.best_epoch and path.is_file() else None)
        if state is not None:
            load_weights(self.model, state, path)

    # -- metrics.json -----------------------------------------------------------------------------
    def _summary(self, stopped: str, rows_per_s: float, test: Mapping[str, Any] | None) -> dict[str, Any]:
        progress = self.progress
        best = next((h for h in progress.history if h["epoch"] == progress.best_epoch), None)
        return {
            "model": self.config.model,
            "hparams": self.hparams,
            "stopped": stopped,
            "epochs_run": len(progress.history),
            "steps": progress.step,
            "best_epoch": progress.best_epoch,
            "best_valid": None if best is None else {"auc": best["valid_auc"], "logloss": best["valid_logloss"]},
            "test": None if test is None else dict(test),
            "rows_per_s": round(rows_per_s, 1),
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "history": progress.history,
            "config": self.config.to_dict(),
        }

    def _write_metrics(self, summary: Mapping[str, Any]) -> None:
        if self.ctx.is_main:
            write_json_atomic(self.config.save_dir / METRICS, dict(summary), flag="--model_save_dir")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _load_resumable(path: Path) -> dict[str, Any]:
    """``last.pt`` checked for everything ``--resume`` reads."""
    payload = load_checkpoint(path)
    check_resume_entries(payload, path)
    return payload


def _as_tensors(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if all(isinstance(v, torch.Tensor) for v in batch.values()):
        return dict(batch)
    return to_tensors({k: np.asarray(v) for k, v in batch.items()})


def _reraise_user_error(text: str) -> None:
    """Re-raise a ctrkit user error that ended a spawned process as itself, without the traceback."""
    import re

    import ctrkit.errors as errors

    own = {"TrainingDivergedError": TrainingDivergedError}
    for line in reversed(text.strip().splitlines()):
        match = re.match(r"ctrkit\.(?:errors|pytorch\.trainer)\.(\w+): (.*)", line.strip())
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


def _progress_bar(total: int, initial: int, desc: str, main: bool):
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal, so logs stay clean
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", disable=None if main else True,
                leave=False, dynamic_ncols=True, file=sys.stderr)


def _summary_writer(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        print("warning: tensorboard is not installed; no TensorBoard logs", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


# ---------------------------------------------------------------------------------------------
# Entry point used by `ctrkit train`
# ---------------------------------------------------------------------------------------------
def train_from_config(config: TrainConfig, *, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Check everything that can be checked, build the model and train it.

    All user errors (bad GPU ids, missing or incomplete store, unknown model, bad hyper-parameter
    values, ``--resume`` without ``last.pt``, a ``--model_save_dir`` that cannot be a directory or
    that holds a previous run without ``--resume``/``--overwrite``) are raised before a file is
    written.
    """
    from ctrkit.registry import build_torch_model

    config.validate()
    if not config.data:
        raise ConfigError("--data STORE is required (a store built by `ctrkit preprocess`)")
    env = torchrun_env()
    check_gpu_ids(config.gpu_ids)
    if env is not None and config.batch_size % env[1]:
        raise ConfigError(f"--batch_size {config.batch_size} must be divisible by the number of processes ({env[1]})")
    try:
        store = Store(config.data)
    except StoreError as exc:
        raise StoreError(f"--data: {exc}") from None
    for split in ("train", "valid"):
        if split not in store.splits or not store.splits[split].labeled:
            raise StoreError(f"--data: store {store.path} has no labeled {split!r} split, which training needs")
    main_process = env is None or env[0] == 0
    if config.resume and main_process and not (config.save_dir / LAST).is_file():  # rank 0 reads it
        raise ConfigError(f"--resume: no checkpoint to resume from at {config.save_dir / LAST}")
    if main_process:  # the path and a previous run, before any work (fit checks again under the lock)
        check_run_directory(config.save_dir)
        check_previous_run(config.save_dir, resume=config.resume, overwrite=config.overwrite)
    set_seed(config.seed)
    model, ignored = build_torch_model(config.model, store.schema, config.hparams())
    if ignored and warn is not None and main_process:
        flags = ", ".join(f"--{k}" if hasattr(config, k) else f"--model_args {k}" for k in ignored)
        warn(f"warning: {config.model} does not use {flags}; ignored")
    return Trainer(model, config, schema=store.schema).fit(store)
