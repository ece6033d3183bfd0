"""The run directory (``--model_save_dir``) and the checks that a checkpoint can be resumed.

* A directory holding a previous run (any of :data:`RUN_FILES`, of either framework) needs
  ``resume`` or ``overwrite``; ``overwrite`` removes that run's files first, so that nothing of it
  (TensorBoard events included) mixes with the new one.
* The directory is locked for the whole run (:func:`ctrkit.fileio.target_lock`): a second training
  into it fails at once, naming the first. Debris of killed runs (``.last.pt.tmp-<pid>`` of a dead
  pid) is removed at the start.
* ``--resume`` continues only the run it can continue exactly (:func:`check_resumable`): the same
  model and hyper-parameters, batch size, seed and optimiser, the same number of processes when
  the run stopped inside an epoch, the same store schema, and the same framework. A checkpoint of
  the other framework gets one line pointing at ``ctrkit convert``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ctrkit.errors import ConfigError, InputError, OutputError
from ctrkit.fileio import clean_directory_debris, os_error_message, target_lock
from ctrkit.data.encoder import ENCODER_FILE
from ctrkit.training.reporting import METRICS, TENSORBOARD, TEST_PREDICTIONS

#: Checkpoint names of each framework in a run directory: ``best`` (the best epoch's weights, what
#: ``evaluate`` and ``predict`` load from a directory) and ``last`` (what ``--resume`` reads).
CHECKPOINT_NAMES = {
    "torch": {"best": "best.pt", "last": "last.pt"},
    "tf": {"best": "best.tf", "last": "last.tf"},
}
FRAMEWORK_NAMES = {"torch": "PyTorch", "tf": "TensorFlow"}
#: What a run leaves in its ``model_save_dir``: a directory holding any of them holds a run.
RUN_FILES = tuple(name for names in CHECKPOINT_NAMES.values() for name in names.values()) + (
    METRICS, TENSORBOARD, ENCODER_FILE, TEST_PREDICTIONS)


def checkpoint_name(framework: str, kind: str) -> str:
    """``best.pt``, ``last.tf``, ...: the file (or directory) of a ``kind`` of checkpoint."""
    return CHECKPOINT_NAMES[framework][kind]


# ---------------------------------------------------------------------------------------------
# The directory
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


# ---------------------------------------------------------------------------------------------
# Resuming
# ---------------------------------------------------------------------------------------------
def other_framework_message(path: Path, found: str, wanted: str) -> str:
    """One line for a ``--resume`` of a checkpoint written by the other framework."""
    return (f"--resume: {path} is a {FRAMEWORK_NAMES.get(found, found)} checkpoint and this is a "
            f"--framework {wanted} run; resume it with --framework {found} (a run continues in its own "
            f"framework), or take its weights to {FRAMEWORK_NAMES.get(wanted, wanted)} for evaluate and predict: "
            f"ctrkit convert {path} --to {wanted} --out DIR")


def check_resume_source(save_dir: Path, framework: str) -> Path:
    """The ``last`` checkpoint that ``--resume`` reads; ConfigError if there is none for ``framework``."""
    path = save_dir / checkpoint_name(framework, "last")
    if path.exists():
        return path
    for other, names in CHECKPOINT_NAMES.items():
        if other != framework and (save_dir / names["last"]).exists():
            raise ConfigError(other_framework_message(save_dir / names["last"], other, framework))
    raise ConfigError(f"--resume: no checkpoint to resume from at {path}")


def find_resume_checkpoint(save_dir: Path, framework: str | None = None) -> tuple[Path, str]:
    """``(path, framework)`` of the ``last`` checkpoint ``--resume`` continues in ``save_dir``.

    With ``framework`` given, as :func:`check_resume_source`; without, the framework whose ``last``
    checkpoint is there (a directory holding both needs ``--framework``).
    """
    if framework:
        return check_resume_source(save_dir, framework), framework
    found = [fw for fw, names in CHECKPOINT_NAMES.items() if (save_dir / names["last"]).exists()]
    if len(found) > 1:
        shown = " and ".join(CHECKPOINT_NAMES[fw]["last"] for fw in found)
        raise ConfigError(f"--resume: {save_dir} holds both {shown}; pass --framework to pick the run")
    framework = found[0] if found else next(iter(CHECKPOINT_NAMES))
    return check_resume_source(save_dir, framework), framework


def read_run_entries(path: Path, framework: str) -> dict[str, Any]:
    """The plain entries of a checkpoint (``model_name``, ``config``, ...), without reading its tensors.

    A torch checkpoint is memory-mapped (``weights_only=True``); a TensorFlow one gives its
    safetensors metadata. Raises a one-line InputError for a file that is not a ctrkit checkpoint.
    """
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): it is not a checkpoint, or it was never completely written")
    try:
        if framework == "tf":
            from safetensors import safe_open

            from ctrkit.tensorflow.trainer import METADATA_KEY

            with safe_open(str(path), framework="np") as handle:
                raw = (handle.metadata() or {}).get(METADATA_KEY)
            payload = json.loads(raw) if raw else None
        else:
            import torch

            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated, foreign or unreadable: each library raises its own types
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise InputError(f"{path} is not a readable ctrkit checkpoint: {lines[0] if lines else type(exc).__name__}"
                         ) from None
    if not isinstance(payload, dict):
        raise InputError(f"{path} is not a ctrkit {FRAMEWORK_NAMES.get(framework, framework)} checkpoint")
    check_checkpoint_entries(payload, {"model_name": str, "config": dict}, path)
    return payload


def check_resumable(payload: Mapping[str, Any], path: Path, *, config: Any, hparams: Mapping[str, Any],
                    schema: Mapping[str, Any], world_size: int) -> None:
    """ConfigError unless the checkpoint ``payload`` continues exactly in this run.

    ``payload`` holds the neutral entries every framework's ``last`` checkpoint has: ``model_name``,
    ``hparams``, ``config`` (:meth:`TrainConfig.to_dict`), ``schema`` (:meth:`Schema.to_dict`) and
    ``progress`` (``batch``, ``world_size``).
    """
    from ctrkit.registry import resolved_hparams

    old = payload["config"]
    framework = old.get("framework", "torch")
    if framework != config.framework:
        raise ConfigError(other_framework_message(path, framework, config.framework))
    if payload["model_name"] != config.model:
        raise ConfigError(f"--resume: {path} holds a {payload['model_name']} model, not --model {config.model}")
    # resolved: checkpoints before ctrkit recorded defaults hold only the values a user set
    saved = resolved_hparams(payload["model_name"], dict(payload["hparams"]))
    if saved != dict(hparams):
        changed = sorted(k for k in set(saved) | set(hparams) if saved.get(k) != hparams.get(k))
        shown = ", ".join(f"{k} {saved.get(k)!r}" for k in changed)
        raise ConfigError(f"--resume: {path} was trained with {shown}; give the same hyper-parameters to resume it")
    for flag in ("batch_size", "seed", "optimizer"):
        if old.get(flag) != getattr(config, flag):
            raise ConfigError(
                f"--resume: {path} was trained with --{flag} {old.get(flag)}, not {getattr(config, flag)}"
            )
    world = payload["progress"].get("world_size", 1)
    if payload["progress"]["batch"] and world != world_size:
        raise ConfigError(
            f"--resume: {path} stopped inside an epoch with {world} process(es); resume it with the same number"
        )
    if payload["schema"] != dict(schema):
        raise ConfigError(f"--resume: {path} was trained on a store with a different schema than --data")


def check_checkpoint_entries(payload: Mapping[str, Any], entries: Mapping[str, type], path: str | os.PathLike) -> None:
    """InputError (one line naming ``path``) unless ``payload`` holds each of ``entries`` with its type
    (an ``int`` entry may not be a bool): the entry check of both frameworks' checkpoints."""
    for key, kind in entries.items():
        if key not in payload:
            raise InputError(f"{path}: the checkpoint has no {key!r} entry; it is damaged or was not written by ctrkit")
        value = payload[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InputError(f"{path}: the checkpoint's {key!r} entry is a {type(value).__name__}, "
                             f"not a {kind.__name__}; it is damaged")
