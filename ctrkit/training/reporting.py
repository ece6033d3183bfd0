"""What a training run shows and writes: progress bars, epoch lines, ``metrics.json``, TensorBoard,
the test split's predictions.

Only rank 0 reports. TensorBoard scalars go through :class:`ScalarWriter`, a two-method interface
that each framework fills with its own event writer (torch's ``SummaryWriter``, TensorFlow's
``tf.summary``); a missing ``tensorboard`` package means no events and one warning. The run's
hyper-parameters go to TensorBoard's HParams plugin once, at the end, through
:func:`write_hparams`: protocol buffers of the ``tensorboard`` package written as one event file,
the same for both frameworks (no TensorFlow or torch needed).

``metrics.json`` also records the model's size and the run's peak memory (``parameters``,
``peak_rss_bytes``, ``peak_device_memory_bytes``), and :data:`TEST_PREDICTIONS` holds the best
weights' test predictions (for ``ctrkit report``'s ROC and calibration plots).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from ctrkit.fileio import atomic_output, json_safe, write_json_atomic  # noqa: F401 (json_safe: re-exported)

METRICS = "metrics.json"
TENSORBOARD = "tensorboard"
#: The test split's predictions of the best weights: ``probs`` float32 [N], ``labels`` uint8 [N]
#: and, when the rows carry a user id, ``groups`` int64 [N]; numpy arrays in an ``.npz`` (no pickle).
TEST_PREDICTIONS = "test_predictions.npz"
#: Validation scores recorded per epoch, as ``valid_<name>`` (gauc only when the data has groups).
VALID_SCORES = ("auc", "logloss", "gauc")


class ScalarWriter(Protocol):
    """TensorBoard scalars: ``add_scalar(tag, value, step)`` and ``close()``."""

    def add_scalar(self, tag: str, value: float, step: int) -> Any: ...

    def close(self) -> Any: ...


def write_scalars(writer: ScalarWriter | None, values: Mapping[str, float], step: int) -> None:
    if writer is not None:
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)


def no_tensorboard_warning() -> None:
    print("warning: tensorboard is not installed; no TensorBoard logs", file=sys.stderr)


class EventScalarWriter:
    """TensorBoard scalars in an event file of ``log_dir``, for either framework.

    Written with the ``tensorboard`` package's protocol buffers and record writer, which import
    neither framework (torch's ``SummaryWriter`` imports TensorFlow where it is installed: seconds
    of start-up and its C++ log lines in every torch run). ``purge_step`` (a resumed run): a
    session-start event at that step, on which TensorBoard drops the events of steps ``>=
    purge_step`` that the interrupted run wrote before, as torch's ``SummaryWriter`` does.
    Scalars reach the file at each :meth:`add_scalar` (flushed), so a killed run keeps them.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2, summary_pb2
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        self._file = open(self.path, "ab")
        self._writer = RecordWriter(self._file)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._write(event_pb2.Event(wall_time=time.time(), step=int(purge_step), session_log=start))

    def _write(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())
        self._file.flush()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        summary = self._summary.Summary()
        summary.value.add(tag=tag, simple_value=float(value))
        self._write(self._event.Event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def open_scalar_writer(log_dir: Path, purge_step: int | None) -> EventScalarWriter | None:
    """An :class:`EventScalarWriter`, or None (with a warning) without the ``tensorboard`` package."""
    try:
        return EventScalarWriter(log_dir, purge_step)
    except ImportError:
        no_tensorboard_warning()
        return None


def progress_bar(total: int, initial: int, desc: str, main: bool):
    """A tqdm bar on stderr; none on other ranks, nor when stderr is not a terminal (clean logs)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="batch", disable=None if main else True,
                leave=False, dynamic_ncols=True, file=sys.stderr)


def epoch_record(*, epoch: int, steps: int, train_loss: float, valid: Mapping[str, Any], lr: float,
                 seconds: float, rows_per_s: float, improved: bool) -> dict[str, Any]:
    """One entry of ``history``: ``valid_auc``, ``valid_logloss`` (and ``valid_gauc`` with groups)."""
    record: dict[str, Any] = {"epoch": epoch, "steps": steps, "train_loss": train_loss}
    record.update({f"valid_{name}": valid[name] for name in VALID_SCORES if name in valid})
    record.update(lr=lr, seconds=round(seconds, 3), rows_per_s=round(rows_per_s, 1), improved=bool(improved))
    return record


def epoch_line(record: Mapping[str, Any], epochs: int, *, early_stop: bool) -> str:
    """``epoch 2/10  train_loss 0.45  valid_auc 0.79  valid_logloss 0.46  lr 0.001  ...  *best*``."""
    scores = "".join(f"  valid_{name} {record[f'valid_{name}']:.5f}" for name in VALID_SCORES
                     if f"valid_{name}" in record)
    return (f"epoch {record['epoch']}/{epochs}  train_loss {record['train_loss']:.5f}{scores}  "
            f"lr {record['lr']:.3g}  {record['rows_per_s']:,.0f} rows/s  {record['seconds']:.1f}s"
            + ("  *best*" if record["improved"] else "") + ("  early stop" if early_stop else ""))


def epoch_scalars(record: Mapping[str, Any], rows_per_s: float) -> dict[str, float]:
    """TensorBoard scalars of an epoch (``rows_per_s`` unrounded)."""
    values = {f"valid/{name}": record[f"valid_{name}"] for name in VALID_SCORES if f"valid_{name}" in record}
    values.update({"train/epoch_loss": record["train_loss"], "train/lr": record["lr"], "train/rows_per_s": rows_per_s})
    return values


def test_line(test: Mapping[str, Any], best_epoch: int) -> str:
    """``test (best epoch 3): auc 0.80000  logloss 0.45000`` (and ``gauc`` with groups)."""
    gauc = f"  gauc {test['gauc']:.5f}" if "gauc" in test else ""
    return f"test (best epoch {best_epoch}): auc {test['auc']:.5f}  logloss {test['logloss']:.5f}{gauc}"


def test_scalars(test: Mapping[str, Any]) -> dict[str, float]:
    return {f"test/{name}": test[name] for name in VALID_SCORES if name in test}


def best_valid(history: list, best_epoch: int) -> dict[str, float] | None:
    """The validation scores of the best epoch, from ``history``."""
    best = next((h for h in history if h["epoch"] == best_epoch), None)
    if best is None:
        return None
    return {name: best[f"valid_{name}"] for name in VALID_SCORES if f"valid_{name}" in best}


def peak_rss_bytes() -> int:
    """The largest resident set size this process has had so far, in bytes (``getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def run_summary(*, model: str, hparams: Mapping[str, Any], stopped: str, progress: Any, rows_per_s: float,
                test: Mapping[str, Any] | None, world_size: int, device: str,
                config: Mapping[str, Any], parameters: int | None = None,
                peak_device_memory_bytes: int | None = None) -> dict[str, Any]:
    """The content of ``metrics.json`` (also what ``fit`` returns).

    ``parameters``: the model's trainable weights (numbers); ``peak_device_memory_bytes``: the
    accelerator memory at the run's peak (None on CPU); ``peak_rss_bytes`` is this process's.
    """
    return {
        "model": model,
        "hparams": dict(hparams),
        "stopped": stopped,
        "epochs_run": len(progress.history),
        "steps": progress.step,
        "best_epoch": progress.best_epoch,
        "best_valid": best_valid(progress.history, progress.best_epoch),
        "test": None if test is None else dict(test),
        "rows_per_s": round(rows_per_s, 1),
        "world_size": world_size,
        "device": device,
        "parameters": parameters,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_device_memory_bytes": peak_device_memory_bytes,
        "history": progress.history,
        "config": dict(config),
    }


# ---------------------------------------------------------------------------------------------
# The test split's predictions
# ---------------------------------------------------------------------------------------------
def write_test_predictions(save_dir: Path, probs: np.ndarray, labels: np.ndarray,
                           groups: np.ndarray | None) -> Path:
    """:data:`TEST_PREDICTIONS` in ``save_dir``, atomically (probabilities as float32: the models'
    sigmoid is computed in float32, so nothing is lost)."""
    arrays = {"probs": np.asarray(probs, dtype=np.float32), "labels": np.asarray(labels).astype(np.uint8)}
    if groups is not None:
        arrays["groups"] = np.asarray(groups, dtype=np.int64)
    path = Path(save_dir) / TEST_PREDICTIONS
    with atomic_output(path, "wb", flag="--model_save_dir") as handle:
        np.savez(handle, **arrays)
    return path


def read_test_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(probs, labels, groups or None)`` as float64/float64/int64 from a :data:`TEST_PREDICTIONS` file.

    ``ValueError`` (or ``OSError``) for a file that is not one; never unpickles.
    """
    with np.load(path, allow_pickle=False) as data:
        if "probs" not in data.files or "labels" not in data.files:
            raise ValueError(f"{path}: no 'probs' and 'labels' arrays")
        probs, labels = data["probs"].astype(np.float64), data["labels"].astype(np.float64)
        groups = data["groups"].astype(np.int64) if "groups" in data.files else None
    if probs.shape != labels.shape or probs.ndim != 1 or (groups is not None and groups.shape != probs.shape):
        raise ValueError(f"{path}: arrays of different shapes")
    return probs, labels, groups


# ---------------------------------------------------------------------------------------------
# TensorBoard's HParams plugin
# ---------------------------------------------------------------------------------------------
#: Options that say where and how a run was executed, not what was trained: left out of the HParams.
NOT_HPARAMS = frozenset({"model_save_dir", "resume", "overwrite", "num_workers", "threads", "log_every",
                         "checkpoint_every", "eval_batch_size", "model_args"})


def hparams_values(config: Mapping[str, Any], hparams: Mapping[str, Any]) -> dict[str, bool | float | str]:
    """The values shown in TensorBoard's HParams table: the training options of ``config``
    (``TrainConfig.to_dict()``) overridden by the model's resolved ``hparams``, without
    :data:`NOT_HPARAMS` and unset options. Numbers and booleans stay so; lists become
    ``"400,400"``, anything else its JSON text."""
    merged = {k: v for k, v in config.items() if k not in NOT_HPARAMS}
    merged.update(hparams)
    values: dict[str, bool | float | str] = {}
    for name, value in sorted(merged.items()):
        if value is None:
            continue
        if isinstance(value, (bool, str)):
            values[name] = value
        elif isinstance(value, (int, float)):
            values[name] = float(value)
        elif isinstance(value, (list, tuple)):
            values[name] = ",".join(map(str, value))
        else:
            values[name] = json.dumps(value, sort_keys=True)
    return values


def hparams_metrics(best_valid: Mapping[str, float] | None, test: Mapping[str, Any] | None) -> dict[str, float]:
    """``hparams/valid_auc``, ``hparams/test_logloss``, ...: the final scores the HParams table shows."""
    metrics = {}
    for prefix, scores in (("valid", best_valid), ("test", test)):
        for name in VALID_SCORES:
            if scores and scores.get(name) is not None:
                metrics[f"hparams/{prefix}_{name}"] = float(scores[name])
    return metrics


def write_hparams(log_dir: Path, values: Mapping[str, bool | float | str], metrics: Mapping[str, float],
                  step: int) -> Path | None:
    """One event file in ``log_dir`` for TensorBoard's HParams plugin: the session start (the
    hyper-parameter ``values``), the metric scalars at ``step``, and the session end. It replaces
    an earlier one of the same run (a finished run resumed), so a run holds one session.

    No experiment summary is written: TensorBoard builds the table from every run's session, so
    runs with different hyper-parameters (other models) are compared side by side. Written with
    the ``tensorboard`` package's protocol buffers and record writer (pure Python, either
    framework); returns None without the package.
    """
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        return None

    def plugin_summary(tag: str, data: Any) -> Any:
        summary = summary_pb2.Summary()
        summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
        return summary

    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for name, value in values.items():
        field = {bool: "bool_value", str: "string_value"}.get(type(value), "number_value")
        setattr(start.hparams[name], field, value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    scalars = summary_pb2.Summary()
    for tag, value in metrics.items():
        scalars.value.add(tag=tag, simple_value=value)
    events = [
        event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"),
        event_pb2.Event(wall_time=time.time(), step=step, summary=plugin_summary(
            metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start))),
        event_pb2.Event(wall_time=time.time(), step=step, summary=scalars),
        event_pb2.Event(wall_time=time.time(), step=step, summary=plugin_summary(
            metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))),
    ]
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.hparams"
    with atomic_output(path, "wb", flag="--model_save_dir") as handle:
        writer = RecordWriter(handle)
        for event in events:
            writer.write(event.SerializeToString())
    for older in log_dir.glob("events.out.tfevents.*.hparams"):  # a resumed run's earlier end: one session
        if older != path:
            older.unlink(missing_ok=True)
    return path
