"""The runs a report compares: each run directory's ``metrics.json`` and its test predictions.

Predictions come from the run's ``test_predictions.npz`` (written by the training loop), or, for a
run trained before that file existed, from its best checkpoint evaluated on the test split of the
store it was trained on. A run whose predictions cannot be had (the store is gone, has no labeled
test split, the file is damaged) keeps its leaderboard row and learning curves, and the page says
why its ROC and calibration curves are missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ctrkit.errors import CtrkitError, InputError
from ctrkit.training.reporting import METRICS, TEST_PREDICTIONS, read_test_predictions


@dataclass
class Predictions:
    """The test split's probabilities and labels (float64 ``[N]``), and where they came from."""

    probs: np.ndarray
    labels: np.ndarray
    source: str  # "test_predictions.npz" or "evaluated on STORE"


@dataclass
class RunRecord:
    """One run directory: its label on the page, ``metrics.json``, and test predictions or why none."""

    directory: Path
    label: str
    metrics: dict[str, Any]
    predictions: Predictions | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return str(self.metrics.get("model") or "?")

    @property
    def framework(self) -> str:
        return str((self.metrics.get("config") or {}).get("framework") or "torch")

    @property
    def test(self) -> dict[str, Any]:
        return self.metrics.get("test") or {}

    @property
    def history(self) -> list[dict[str, Any]]:
        return [h for h in self.metrics.get("history") or [] if isinstance(h, dict)]


def read_run_metrics(directory: Path) -> dict[str, Any]:
    """``metrics.json`` of a run directory; ``InputError`` (one line) when it is not a run's."""
    path = directory / METRICS
    if not directory.is_dir():
        raise InputError(f"{directory}: not a run directory (give the --model_save_dir of a training run)")
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{directory}: no {METRICS} (not a training run's directory)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("history", []), list):
        raise InputError(f"{path}: not a ctrkit metrics.json (no history list)")
    return metrics


def run_labels(directories: list[Path]) -> list[str]:
    """Short unique names: each directory's name, or its path where two names are equal."""
    names = [d.resolve().name or str(d) for d in directories]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, directories)]


def evaluate_best_checkpoint(directory: Path, metrics: dict[str, Any], batch_size: int) -> Predictions:
    """The best checkpoint's predictions on the test split of the store recorded in ``metrics``;
    a ``CtrkitError`` saying why not."""
    from ctrkit.data.store import Store
    from ctrkit.errors import StoreError
    from ctrkit.training.frameworks import load_for_inference

    store_path = (metrics.get("config") or {}).get("data") or ""
    if not store_path or not Path(store_path).exists():
        raise StoreError(f"it has no {TEST_PREDICTIONS} and its store {store_path or '(none recorded)'} "
                         "no longer exists")
    store = Store(store_path)
    if "test" not in store.splits or not store.split("test").labeled or not store.split("test").rows:
        raise StoreError(f"its store {store_path} has no labeled test split")
    trainer = load_for_inference(directory, gpu_ids=[], eval_batch_size=batch_size, num_workers=0, threads=0)
    trainer.check_schema(store)
    probs, labels, _ = trainer.predict_split(store, "test")
    return Predictions(np.asarray(probs, np.float64), np.asarray(labels, np.float64), f"evaluated on {store_path}")


def load_predictions(directory: Path, metrics: dict[str, Any], *, batch_size: int,
                     evaluate: bool = True) -> Predictions:
    """The run's test predictions: the saved file, else (``evaluate``) the best checkpoint evaluated."""
    path = directory / TEST_PREDICTIONS
    if path.exists():
        try:
            probs, labels, _ = read_test_predictions(path)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{path} is not readable: {exc}") from None
        return Predictions(probs, labels, TEST_PREDICTIONS)
    if not evaluate:
        raise InputError(f"it has no {TEST_PREDICTIONS}")
    return evaluate_best_checkpoint(directory, metrics, batch_size)


def load_runs(directories: list[Path], *, batch_size: int = 8192, evaluate: bool = True,
              log: Callable[[str], None] = lambda message: None) -> list[RunRecord]:
    """Every run's record (``InputError`` for a directory that is not a run's, before any evaluation)."""
    metrics = [read_run_metrics(d) for d in directories]
    records = [RunRecord(d, label, m) for d, label, m in zip(directories, run_labels(directories), metrics)]
    for record in records:
        if not record.test:
            record.notes.append("no test metrics (the run did not finish, or its store has no labeled test split)")
            continue
        try:
            record.predictions = load_predictions(record.directory, record.metrics, batch_size=batch_size,
                                                  evaluate=evaluate)
        except CtrkitError as exc:
            record.notes.append(f"no ROC or calibration curve: {exc}")
            log(f"warning: {record.directory}: no ROC or calibration curve: {exc}")
            continue
        if record.predictions.source != TEST_PREDICTIONS:
            log(f"{record.directory}: test predictions {record.predictions.source}")
    return records
