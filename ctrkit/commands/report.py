"""``ctrkit report RUN_DIR... --out report.html``: a page comparing training runs (:mod:`ctrkit.report`)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="an HTML page comparing training runs",
        description="Write an HTML page comparing training runs: a leaderboard (test AUC, gAUC, logloss, ECE, "
                    "rows/s, parameters, peak memory), learning curves, ROC and calibration curves of the test "
                    "split. Its PNG figures go to a folder beside it (report.html: report_files/).",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (--model_save_dir of ctrkit train)")
    parser.add_argument("--out", required=True, metavar="HTML", help="the page to write, e.g. report.html")
    parser.add_argument("--bins", default="20", help="equal-count bins of the calibration plot and ECE [default: 20]")
    parser.add_argument("--batch_size", default="8192",
                        help="rows per batch when a run without test_predictions.npz is evaluated [default: 8192]")
    parser.add_argument("--no_evaluate", action="store_true",
                        help="never evaluate a checkpoint: runs without test_predictions.npz get no ROC/calibration")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ctrkit.config import parse_int
    from ctrkit.report import figures_directory, write_report

    bins = parse_int("bins", args.bins, minimum=1)
    batch_size = parse_int("batch_size", args.batch_size, minimum=1)
    out = write_report(args.run_dirs, args.out, bins=bins, batch_size=batch_size, evaluate=not args.no_evaluate,
                       log=lambda message: print(message, file=sys.stderr))
    count = len(args.run_dirs)
    print(f"wrote {out} ({count} run{'' if count == 1 else 's'}; figures in {figures_directory(out)})")
    return 0
