"""``ctrkit synth``: write a synthetic data set drawn from a hidden, known click model.

Example::

    ctrkit synth criteo data/synth.tsv --rows 4000000 --seed 0

    ctrkit synth taobao data/taobao --rows 1000000

The first writes ``data/synth.tsv`` (Criteo Kaggle TSV) and ``data/synth.tsv.probs.npy`` (the true click
probability of every row, float32), and prints the CTR and the oracle AUC. See
:mod:`ctrkit.data.synthetic` for the planted model. ``OUT`` may be ``-`` (stdout; the summary then
goes to stderr), a device or a FIFO: those are written in place, and the probabilities only where
``--probs`` says. The second writes the four raw Taobao tables
(:mod:`ctrkit.data.synthetic_taobao`). Formats are entries of :data:`SYNTHS`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic data set with a known click model",
        description=(
            "Write synthetic rows in a public data set's raw format, drawn from a hidden click "
            "model with planted feature interactions, plus the true click probability of every "
            "row (float32 .npy) so that a model's AUC can be compared with the oracle AUC. The "
            "output depends only on the sizes and --seed."
        ),
    )
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for name, entry in SYNTHS.items():
        sub = formats.add_parser(name, help=entry.help, description=entry.help)
        entry.add_arguments(sub)
        sub.add_argument("--seed", type=int, default=0,
                         help="seed of the hidden model and of the rows (default: %(default)s)")
        sub.set_defaults(func=run, write=entry.write)


def run(args: argparse.Namespace) -> int:
    return args.write(args)


# ---------------------------------------------------------------------------------------------
# Criteo
# ---------------------------------------------------------------------------------------------
def _criteo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output file (written atomically); - is stdout; "
                                    "a device or a FIFO is written in place")
    parser.add_argument("--probs", metavar="PATH",
                        help="where the true probabilities go [default: OUT.probs.npy; "
                             "not written when OUT is -, a device or a FIFO]")
    parser.add_argument("--rows", type=int, default=100_000, help="number of rows (default: %(default)s)")
    parser.add_argument("--unlabeled", action="store_true",
                        help="omit the label column (the Kaggle test-file layout)")


def _write_criteo(args: argparse.Namespace) -> int:
    import time

    from ctrkit.commands.evaluate import output_name, summary_stream
    from ctrkit.data.synthetic import write_synthetic_criteo

    start = time.perf_counter()
    summary = write_synthetic_criteo(args.out, args.rows, args.seed, unlabeled=args.unlabeled, probs_out=args.probs)
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


# ---------------------------------------------------------------------------------------------
# Taobao
# ---------------------------------------------------------------------------------------------
def _taobao_arguments(parser: argparse.ArgumentParser) -> None:
    from ctrkit.data.synthetic_taobao import TaobaoSizes

    d = TaobaoSizes()
    parser.add_argument("out", metavar="OUT_DIR", help="directory for raw_sample.csv, ad_feature.csv, "
                                                        "user_profile.csv, behavior_log.csv (created)")
    parser.add_argument("--rows", type=int, default=d.impressions, help="impressions in raw_sample (default: %(default)s)")
    parser.add_argument("--users", type=int, default=d.users, help="users (default: %(default)s)")
    parser.add_argument("--ads", type=int, default=d.ads, help="ads (default: %(default)s)")
    parser.add_argument("--categories", type=int, default=d.categories, help="categories (default: %(default)s)")
    parser.add_argument("--behaviours-per-user", type=int, default=d.behaviours_per_user,
                        help="mean behaviours per user in behavior_log (default: %(default)s)")


def _write_taobao(args: argparse.Namespace) -> int:
    import time

    from ctrkit.data.synthetic_taobao import TaobaoSizes, write_synthetic_taobao

    start = time.perf_counter()
    sizes = TaobaoSizes(args.rows, args.users, args.ads, args.categories, args.behaviours_per_user)
    summary = write_synthetic_taobao(args.out, args.seed, sizes)
    seconds = time.perf_counter() - start
    print(f"wrote {summary.impressions:,} impressions and {summary.behaviours:,} behaviours to {summary.directory} "
          f"in {seconds:.1f} s")
    print(f"  CTR {summary.ctr:.4f}, oracle AUC {summary.oracle_auc:.4f}, seed {summary.seed}; "
          f"true click probabilities: raw_sample.probs.npy")
    return 0


@dataclass(frozen=True)
class Synth:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    write: Callable[[argparse.Namespace], int]


#: What ``ctrkit synth`` can write: one entry per format.
SYNTHS: dict[str, Synth] = {
    "criteo": Synth("Criteo Kaggle TSV (40 fields; 39 with --unlabeled) and OUT.probs.npy", _criteo_arguments, _write_criteo),
    "taobao": Synth("the four raw Taobao tables with a planted behaviour-sequence signal, and raw_sample.probs.npy",
                    _taobao_arguments, _write_taobao),
}
FORMATS = tuple(SYNTHS)
