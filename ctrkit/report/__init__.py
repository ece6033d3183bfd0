"""``ctrkit report``: one HTML page comparing training runs, with its PNG figures beside it.

::

    write_report(["runs/deepfm", "runs/dcn"], "report.html")
    # report.html and report_files/{learning_curves,roc,calibration}.png

The page holds a leaderboard (test AUC, gAUC, logloss, ECE, rows/s, parameters, peak memory, from
each run's ``metrics.json``), the learning curves of every run, and the test split's ROC and
calibration curves (from each run's ``test_predictions.npz``, or its best checkpoint evaluated on
the store it was trained on: :mod:`ctrkit.report.runs`). The figures are drawn by matplotlib
(:mod:`ctrkit.report.plots`, the ``report`` extra); the page itself (:mod:`ctrkit.report.page`)
has no scripts and no external resources, so it opens in any browser from the file system.
Every file is written atomically (:func:`ctrkit.fileio.atomic_output`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import IO, Callable, Sequence

from ctrkit.errors import ConfigError, OutputError
from ctrkit.fileio import atomic_output, check_output_path, os_error_message, write_text_atomic
from ctrkit.training.reporting import METRICS, TEST_PREDICTIONS

#: Equal-count bins of the calibration plot and the ECE.
DEFAULT_BINS = 20


def figures_directory(out: Path) -> Path:
    """Where the PNGs of ``out`` go: ``report_files/`` beside ``report.html``."""
    return out.with_name(f"{out.stem}_files")


def require_matplotlib() -> None:
    """ConfigError naming the extra to install when matplotlib is missing (before any work)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("ctrkit report draws its figures with matplotlib, which is not installed; "
                          "install it with pip install 'ctrkit[report]'")


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, bins: int = DEFAULT_BINS,
                 batch_size: int = 8192, evaluate: bool = True,
                 log: Callable[[str], None] = lambda message: None) -> Path:
    """Write the report of ``run_dirs`` to ``out`` (an ``.html`` file) and its figures beside it.

    ``evaluate``: a run without ``test_predictions.npz`` has its best checkpoint evaluated on its
    store's test split (False: its ROC and calibration curves are left out, with a note).
    Returns the page's path.
    """
    from ctrkit import __version__
    from ctrkit.report import page, plots
    from ctrkit.report.runs import load_runs

    if not run_dirs:
        raise ConfigError("give at least one run directory")
    if bins < 1:
        raise ConfigError(f"--bins must be >= 1, got {bins}")
    require_matplotlib()
    out = Path(out)
    directories = [Path(d) for d in run_dirs]
    check_output_path(out, inputs=[d / name for d in directories for name in (METRICS, TEST_PREDICTIONS)])
    runs = load_runs(directories, batch_size=batch_size, evaluate=evaluate, log=log)
    folder = figures_directory(out)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create {folder}: {os_error_message(exc)}") from None

    images: dict[str, str] = {}

    def figure(name: str, draw: Callable[[IO[bytes]], None]) -> None:
        with atomic_output(folder / f"{name}.png", "wb") as handle:
            draw(handle)
        images[name] = f"{folder.name}/{name}.png"

    if any(run.history for run in runs):
        figure("learning_curves", lambda handle: plots.learning_curves(runs, handle))
    with_predictions = [run for run in runs if run.predictions is not None]
    if with_predictions:
        figure("roc", lambda handle: plots.roc_curves(with_predictions, handle))
        figure("calibration", lambda handle: plots.calibration_curves(with_predictions, handle, bins))
    write_text_atomic(out, page.render(runs, images, bins=bins, version=__version__))
    return out
