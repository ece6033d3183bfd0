"""``ctrkit synth``: write a synthetic data set drawn from a hidden, known click model.

Example::

    ctrkit synth criteo data/synth.tsv --rows 4000000 --seed 0

writes ``data/synth.tsv`` (Criteo Kaggle TSV) and ``data/synth.tsv.probs.npy`` (the true click
probability of every row, float32), and prints the CTR and the oracle AUC. See
:mod:`ctrkit.data.synthetic` for the planted model. ``OUT`` may be ``-`` (stdout; the summary then
goes to stderr), a device or a FIFO: those are written in place, and the probabilities only where
``--probs`` says.
"""

from __future__ import annotations

import argparse

FORMATS = ("criteo",)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic data set with a known click model",
        description=(
            "Write synthetic rows in a public data set's raw format, drawn from a hidden click "
            "model with planted feature interactions, plus the true click probability of every "
            "row in OUT.probs.npy (float32) so that a model's AUC can be compared with the "
            "oracle AUC. The output depends only on --rows and --seed, and a shorter file is a "
            "prefix of a longer one with the same seed."
        ),
    )
    parser.add_argument("format", choices=FORMATS, help="raw format to write")
    parser.add_argument("out", help="output file (written atomically); - is stdout; "
                                    "a device or a FIFO is written in place")
    parser.add_argument("--probs", metavar="PATH",
                        help="where the true probabilities go [default: OUT.probs.npy; "
                             "not written when OUT is -, a device or a FIFO]")
    parser.add_argument("--rows", type=int, default=100_000,
                        help="number of rows (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the hidden model and of the rows (default: %(default)s)")
    parser.add_argument("--unlabeled", action="store_true",
                        help="omit the label column (the Kaggle test-file layout)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from ctrkit.commands.evaluate import output_name, summary_stream
    from ctrkit.data.synthetic import write_synthetic_criteo

    start = time.perf_counter()
    if args.format == "criteo":
        summary = write_synthetic_criteo(args.out, args.rows, args.seed,
                                         unlabeled=args.unlabeled, probs_out=args.probs)
    else:  # pragma: no cover - argparse restricts the choices
        raise AssertionError(args.format)
    seconds = time.perf_counter() - start
    layout = "39 fields, unlabeled" if summary.unlabeled else "40 fields"
    label_note = " (labels not written)" if summary.unlabeled else ""
    report = summary_stream(args.out)  # with OUT = -, stdout holds only the rows
    print(f"wrote {summary.rows:,} rows ({layout}) to {output_name(summary.path)} in {seconds:.1f} s", file=report)
    print(f"  CTR {summary.ctr:.4f}{label_note}, oracle AUC {summary.oracle_auc:.4f}, "
          f"seed {summary.seed}", file=report)
    probs = summary.probs_path or f"not written ({args.out} is not a regular file; give --probs PATH)"
    print(f"  true click probabilities: {probs}", file=report)
    return 0
