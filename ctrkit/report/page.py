"""The report's HTML: one self-contained page (inline CSS, no scripts) that shows the PNGs beside it.

Every value that comes from a run (names, paths, options) is escaped; the numbers of the
leaderboard are those of each run's ``metrics.json`` (the ECE is computed from its predictions).
"""

from __future__ import annotations

import datetime
import html
import json
from typing import Any, Sequence

from ctrkit.metrics import expected_calibration_error
from ctrkit.report.runs import RunRecord

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35em 0.7em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #8a4b00; }
code { font-size: 0.9em; }
"""
#: Leaderboard columns: heading, and whether the cells are numbers (right-aligned).
LEADERBOARD = (("#", True), ("run", False), ("model", False), ("framework", False), ("test AUC", True),
               ("gAUC", True), ("logloss", True), ("ECE", True), ("rows/s", True), ("parameters", True),
               ("peak memory", True), ("best epoch", True), ("stopped", False))
RUN_DETAILS = ("run", "directory", "store", "device", "hyper-parameters", "training options", "test predictions")
MISSING = "–"


def _number(value: Any, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def human_bytes(value: int | None) -> str:
    if value is None:
        return MISSING
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TiB"  # pragma: no cover - the loop returns at GiB


def peak_memory(metrics: dict[str, Any]) -> str:
    """The accelerator's peak when the run used one, else the training process's peak RSS."""
    device = metrics.get("peak_device_memory_bytes")
    if device is not None:
        return f"{human_bytes(device)} (device)"
    host = metrics.get("peak_rss_bytes")
    return MISSING if host is None else f"{human_bytes(host)} (host)"


def run_ece(run: RunRecord, bins: int) -> float | None:
    p = run.predictions
    return None if p is None else expected_calibration_error(p.labels, p.probs, bins, "quantile")


def ranked(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """Best test AUC first; runs without one last, in the order given."""
    return sorted(runs, key=lambda r: (r.test.get("auc") is None, -(r.test.get("auc") or 0.0)))


def leaderboard_cells(run: RunRecord, rank: int, bins: int) -> list[str]:
    m, test = run.metrics, run.test
    return [str(rank), run.label, run.model, run.framework, _number(test.get("auc"), ".6f"),
            _number(test.get("gauc"), ".6f"), _number(test.get("logloss"), ".6f"), _number(run_ece(run, bins), ".5f"),
            _number(m.get("rows_per_s"), ",.0f"), _number(m.get("parameters"), ","), peak_memory(m),
            f"{m.get('best_epoch', MISSING)} / {m.get('epochs_run', MISSING)}", str(m.get("stopped", MISSING))]


def _table(table_id: str, headings: Sequence[tuple[str, bool]], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in headings)
    body = "\n".join("<tr>" + "".join(f'<td class="num">{html.escape(c)}</td>' if numeric else f"<td>{html.escape(c)}</td>"
                                      for c, (_, numeric) in zip(row, headings)) + "</tr>" for row in rows)
    return f'<table id="{table_id}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _image(src: str, alt: str) -> str:
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">'


def _run_details(run: RunRecord) -> list[str]:
    m = run.metrics
    config = m.get("config") or {}
    options = {k: config.get(k) for k in ("batch_size", "optimizer", "lr", "epochs", "seed", "precision")
               if config.get(k) is not None}
    return [run.label, str(run.directory), str(config.get("data") or MISSING), str(m.get("device", MISSING)),
            json.dumps(m.get("hparams") or {}, sort_keys=True), json.dumps(options, sort_keys=True),
            run.predictions.source if run.predictions is not None else MISSING]


def render(runs: Sequence[RunRecord], images: dict[str, str], *, bins: int, version: str) -> str:
    """The page: leaderboard, learning curves, ROC, calibration, notes, and the runs' settings.

    ``images`` maps ``learning_curves``, ``roc`` and ``calibration`` to their ``src`` (relative to
    the page); a figure absent from it is replaced by a note.
    """
    order = ranked(runs)
    board = _table("leaderboard", LEADERBOARD, [leaderboard_cells(r, i, bins) for i, r in enumerate(order, 1)])
    notes = [f"<li><b>{html.escape(r.label)}</b>: {html.escape(n)}</li>" for r in runs for n in r.notes]
    sections = [
        "<h2>Leaderboard</h2>",
        "<p>Test split of each run's best epoch (from its <code>metrics.json</code>), best AUC first. rows/s: mean "
        "training throughput; parameters: trainable weights; peak memory: the accelerator's, or the training "
        f"process's resident memory on a CPU. ECE: expected calibration error over {bins} equal-count bins of "
        "predictions.</p>",
        board,
        "<h2>Learning curves</h2>",
        _image(images["learning_curves"], "learning curves") if "learning_curves" in images
        else '<p class="note">No run has an epoch in its history yet.</p>',
        "<h2>ROC curves</h2>",
        _image(images["roc"], "ROC curves") if "roc" in images
        else '<p class="note">No run has test predictions (see the notes).</p>',
        "<h2>Calibration</h2>",
        "<p>Mean predicted CTR against the observed CTR in bins holding equal numbers of test rows; a calibrated "
        "model lies on the diagonal. ECE = &Sigma;<sub>b</sub> (n<sub>b</sub>/N) |observed<sub>b</sub> &minus; "
        "predicted<sub>b</sub>|.</p>",
        _image(images["calibration"], "calibration curves") if "calibration" in images
        else '<p class="note">No run has test predictions (see the notes).</p>',
    ]
    if notes:
        sections += ["<h2>Notes</h2>", '<ul class="note">', *notes, "</ul>"]
    sections += ["<h2>Runs</h2>", _table("runs", [(h, False) for h in RUN_DETAILS], [_run_details(r) for r in runs])]
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<title>ctrkit report</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "<h1>ctrkit report</h1>",
        f"<p>{len(runs)} run{'s' if len(runs) != 1 else ''}; written {created} by ctrkit {html.escape(version)}.</p>",
        *sections,
        "</body>",
        "</html>",
        "",
    ])
