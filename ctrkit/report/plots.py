"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display).

Each function takes the runs and a writable binary file and writes one PNG:

* :func:`learning_curves` — per epoch, the training loss and the validation logloss and AUC (and
  gAUC when some run has it), one line per run;
* :func:`roc_curves` — the test ROC curve of every run with predictions, its AUC in the legend;
* :func:`calibration_curves` — mean predicted probability against the observed click rate in
  equal-count bins of predictions, with the diagonal of perfect calibration and each run's ECE.
"""

from __future__ import annotations

from typing import IO, Sequence

import numpy as np

from ctrkit.metrics import auc, calibration_bins, expected_calibration_error, roc_curve
from ctrkit.report.runs import RunRecord

DPI = 110
#: At most this many points of a ROC curve are drawn (a test split may have millions of thresholds).
ROC_POINTS = 2000
CURVES = (("train_loss", "training loss"), ("valid_logloss", "validation logloss"), ("valid_auc", "validation AUC"),
          ("valid_gauc", "validation gAUC"))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(figure, handle: IO[bytes]) -> None:
    figure.savefig(handle, format="png", dpi=DPI)


def learning_curves(runs: Sequence[RunRecord], handle: IO[bytes]) -> None:
    """One panel per recorded curve, epochs on the x axis, one line per run."""
    from matplotlib.ticker import MaxNLocator

    shown = [(key, title) for key, title in CURVES
             if any(h.get(key) is not None for run in runs for h in run.history)]
    figure = _figure(4.2 * len(shown), 3.6)
    axes = np.atleast_1d(figure.subplots(1, len(shown), squeeze=False)[0])
    for ax, (key, title) in zip(axes, shown):
        for run in runs:
            points = [(h["epoch"], h[key]) for h in run.history if h.get(key) is not None and "epoch" in h]
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, values, marker="o", markersize=3, label=run.label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    _save(figure, handle)


def _thinned(x: np.ndarray, y: np.ndarray, points: int = ROC_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` evenly spaced points of a curve, its ends kept."""
    if len(x) <= points:
        return x, y
    index = np.unique(np.linspace(0, len(x) - 1, points).round().astype(np.int64))
    return x[index], y[index]


def roc_curves(runs: Sequence[RunRecord], handle: IO[bytes]) -> None:
    figure = _figure(5.2, 5.0)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for run in runs:
        p = run.predictions
        fpr, tpr = roc_curve(p.labels, p.probs)
        if len(fpr):
            fpr, tpr = _thinned(fpr, tpr)
            ax.plot(fpr, tpr, label=f"{run.label} (AUC {auc(p.labels, p.probs):.4f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.005), xlabel="false positive rate", ylabel="true positive rate",
           title="ROC, test split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    _save(figure, handle)


def calibration_curves(runs: Sequence[RunRecord], handle: IO[bytes], bins: int) -> None:
    figure = _figure(5.2, 5.0)
    ax = figure.subplots()
    top = 0.0
    for run in runs:
        p = run.predictions
        table = calibration_bins(p.labels, p.probs, bins, "quantile")
        ece = expected_calibration_error(p.labels, p.probs, bins, "quantile")
        ax.plot(table["mean_predicted"], table["observed"], marker="o", markersize=3,
                label=f"{run.label} (ECE {ece:.4f})")
        top = max(top, float(table["mean_predicted"].max(initial=0)), float(table["observed"].max(initial=0)))
    top = min(1.0, top * 1.05) or 1.0
    ax.plot([0, top], [0, top], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted CTR", ylabel="observed CTR",
           title=f"calibration, test split ({bins} equal-count bins)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    _save(figure, handle)
