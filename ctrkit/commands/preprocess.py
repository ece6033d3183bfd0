"""``ctrkit preprocess criteo RAW [RAW ...] --out STORE``: raw logs → LMDB store."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="turn raw logs into an LMDB store",
        description="Parse raw logs once into a chunked LMDB store (vocabularies from the train split only).",
    )
    parser.add_argument("format", choices=["criteo"], help="raw format")
    parser.add_argument("raw", nargs="+", help="raw file(s); rows are split at random unless --valid/--test are given")
    parser.add_argument("--out", required=True, help="store directory to create")
    parser.add_argument("--valid", help="explicit validation file (its rows are not drawn from RAW)")
    parser.add_argument("--test", help="explicit test file; may be unlabeled (39 fields)")
    parser.add_argument("--split", default="8:1:1", help="train:valid:test ratios for RAW (default 8:1:1)")
    parser.add_argument("--seed", type=int, default=2018, help="seed of the random split (default 2018)")
    parser.add_argument("--min-count", type=int, default=10, help="tokens seen fewer times in train → OOV (default 10)")
    parser.add_argument(
        "--numeric",
        choices=["categorical", "dense"],
        default="categorical",
        help="I1-I13 as bucketed tokens floor(ln(v)^2) (default, BARS) or as log1p floats",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed row instead of skipping it")
    parser.add_argument("--chunk-rows", type=int, default=65_536, help="rows per LMDB value (default 65536)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ctrkit.commands.inspect import describe_store
    from ctrkit.data.criteo import CriteoOptions, parse_split, preprocess_criteo

    options = CriteoOptions(
        numeric=args.numeric,
        min_count=args.min_count,
        split=parse_split(args.split),
        seed=args.seed,
        strict=args.strict,
        chunk_rows=args.chunk_rows,
    )
    result = preprocess_criteo(
        args.raw,
        args.out,
        options,
        valid=args.valid,
        test=args.test,
        overwrite=args.overwrite,
        notify=lambda line: print(f"ctrkit preprocess: {line}", file=sys.stderr),
    )
    print(describe_store(result.store))
    rate = result.rows_read / result.seconds if result.seconds else float("nan")
    print(f"\n{result.rows_read:,} lines in {result.seconds:.1f} s ({rate:,.0f} rows/s); {result.bad_rows.describe()}")
    return 0
