"""What a training run shows and writes: progress bars, epoch lines, ``metrics.json``, TensorBoard.

Only rank 0 reports. TensorBoard goes through :class:`ScalarWriter`, a two-method interface that
each framework fills with its own event writer (torch's ``SummaryWriter``, TensorFlow's
``tf.summary``); a missing ``tensorboard`` package means no events and one warning.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, Protocol

from ctrkit.fileio import json_safe, write_json_atomic  # noqa: F401 (json_safe: one home, re-exported)

METRICS = "metrics.json"
TENSORBOARD = "tensorboard"
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


def run_summary(*, model: str, hparams: Mapping[str, Any], stopped: str, progress: Any, rows_per_s: float,
                test: Mapping[str, Any] | None, world_size: int, device: str,
                config: Mapping[str, Any]) -> dict[str, Any]:
    """The content of ``metrics.json`` (also what ``fit`` returns)."""
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
        "history": progress.history,
        "config": dict(config),
    }
