"""``ctrkit preprocess DATASET ... --out STORE``: raw logs → LMDB store.

One sub-command per dataset, all over the generic pipeline (:mod:`ctrkit.data.pipeline`)::

    ctrkit preprocess criteo train.txt --out criteo.lmdb          # raw TSV or the header CSV variants
    ctrkit preprocess avazu train.csv --out avazu.lmdb
    ctrkit preprocess movielens joined.csv --out ml.lmdb          # or --ratings R --movies M [--users U]
    ctrkit preprocess taobao-joined alimama.csv --out tb.lmdb     # the 267-column DMR layout
    ctrkit preprocess table data.csv|data.parquet --spec my.yaml --out my.lmdb
    ctrkit preprocess taobao --raw-sample R --ad-feature A --user-profile U --behavior-log B --out tb.lmdb

Every dataset is a registry entry (:data:`DATASETS`): a function adding its arguments and one
building the store, so adding a dataset adds an entry, not a branch.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Dataset:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    build: Callable[[argparse.Namespace], object]  # → PreprocessResult
    raw_files: bool = True  # takes RAW positional file(s)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="turn raw logs into an LMDB store",
        description="Parse raw logs once into a chunked LMDB store (vocabularies from the train split only).",
    )
    datasets = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, dataset in DATASETS.items():
        sub = datasets.add_parser(name, help=dataset.help, description=dataset.help)
        if dataset.raw_files:
            sub.add_argument("raw", nargs="*" if name == "movielens" else "+",
                             help="raw file(s); rows are split by the spec unless --valid/--test are given")
        sub.add_argument("--out", required=True, help="store directory to create")
        dataset.add_arguments(sub)
        sub.add_argument("--strict", action="store_true", help="stop at the first malformed row instead of skipping it")
        sub.add_argument("--chunk-rows", type=int, default=65_536, help="rows per LMDB value (default 65536)")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
        sub.set_defaults(func=run, build=dataset.build)


def run(args: argparse.Namespace) -> int:
    from ctrkit.commands.inspect import describe_store

    result = args.build(args)
    print(describe_store(result.store))
    rate = result.rows_read / result.seconds if result.seconds else float("nan")
    print(f"\n{result.rows_read:,} lines in {result.seconds:.1f} s ({rate:,.0f} rows/s); {result.bad_rows.describe()}")
    for name, count in sorted(c for c in result.truncated.items() if c[1]):
        print(f"{count:,} rows had a {name} sequence longer than its max_len (the most recent items kept)")
    return 0


def _notify(line: str) -> None:
    print(f"ctrkit preprocess: {line}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Arguments shared by the spec-driven datasets
# ---------------------------------------------------------------------------------------------
def _split_arguments(parser: argparse.ArgumentParser, min_count_default: int | None = None) -> None:
    parser.add_argument("--valid", help="explicit validation file (its rows are not drawn from RAW)")
    parser.add_argument("--test", help="explicit test file; may be unlabeled")
    parser.add_argument("--split", help="train:valid:test ratios of a random split (default: the spec's)")
    parser.add_argument("--seed", type=int, help="seed of the random split (default: the spec's)")
    shown = f"default {min_count_default}" if min_count_default else "default: the spec's"
    parser.add_argument("--min-count", type=int, default=min_count_default,
                        help=f"tokens seen fewer times in train → OOV ({shown})")


def _spec_arguments(parser: argparse.ArgumentParser) -> None:
    _split_arguments(parser)


def _build_with_spec(spec, args: argparse.Namespace, raw=None):
    from ctrkit.data import pipeline
    from ctrkit.data.criteo import parse_split
    from ctrkit.data.spec import with_overrides

    spec = with_overrides(spec, min_count=args.min_count, ratios=parse_split(args.split) if args.split else None, seed=args.seed)
    return pipeline.preprocess(
        spec,
        raw if raw is not None else args.raw,
        args.out,
        pipeline.PipelineOptions(strict=args.strict, chunk_rows=args.chunk_rows),
        valid=args.valid,
        test=args.test,
        overwrite=args.overwrite,
        notify=_notify,
    )


def _builtin(name: str) -> Callable[[argparse.Namespace], object]:
    def build(args: argparse.Namespace):
        from ctrkit.data.spec import load_spec

        return _build_with_spec(load_spec(name), args)

    return build


# ---------------------------------------------------------------------------------------------
# Criteo (keeps its own options: --numeric, min count 10)
# ---------------------------------------------------------------------------------------------
def _criteo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--valid", help="explicit validation file (its rows are not drawn from RAW)")
    parser.add_argument("--test", help="explicit test file; may be unlabeled (39 fields)")
    parser.add_argument("--split", default="8:1:1", help="train:valid:test ratios for RAW (default 8:1:1)")
    parser.add_argument("--seed", type=int, default=2018, help="seed of the random split (default 2018)")
    parser.add_argument("--min-count", type=int, default=10, help="tokens seen fewer times in train → OOV (default 10)")
    parser.add_argument("--numeric", choices=["categorical", "dense"], default="categorical",
                        help="I1-I13 as bucketed tokens floor(ln(v)^2) (default, BARS) or as log1p floats")


def _build_criteo(args: argparse.Namespace):
    from ctrkit.data.criteo import CriteoOptions, parse_split, preprocess_criteo

    options = CriteoOptions(numeric=args.numeric, min_count=args.min_count, split=parse_split(args.split),
                            seed=args.seed, strict=args.strict, chunk_rows=args.chunk_rows)
    return preprocess_criteo(args.raw, args.out, options, valid=args.valid, test=args.test,
                             overwrite=args.overwrite, notify=_notify)


# ---------------------------------------------------------------------------------------------
# table: any CSV/TSV/Parquet with a user's spec
# ---------------------------------------------------------------------------------------------
def _table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="dataset spec: a YAML file or a built-in name")
    _split_arguments(parser)


def _build_table(args: argparse.Namespace):
    from ctrkit.data.spec import load_spec

    return _build_with_spec(load_spec(args.spec), args)


# ---------------------------------------------------------------------------------------------
# MovieLens: joined rows, or ratings + movies (+ users) joined here
# ---------------------------------------------------------------------------------------------
def _movielens_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ratings", help="ratings table (ml-latest ratings.csv or ML-1M ratings.dat) instead of RAW")
    parser.add_argument("--movies", help="movies table (movies.csv or movies.dat), with --ratings")
    parser.add_argument("--users", help="users table (ML-1M users.dat), with --ratings; optional")
    _split_arguments(parser)


def _build_movielens(args: argparse.Namespace):
    from ctrkit.data.movielens import joined_ratings
    from ctrkit.data.spec import load_spec
    from ctrkit.errors import ConfigError

    spec = load_spec("movielens")
    if args.ratings:
        if args.raw or not args.movies:
            raise ConfigError("movielens: give either joined RAW file(s) or --ratings with --movies (and --users)")
        with joined_ratings(args.ratings, args.movies, args.users, args.out) as joined:
            return _build_with_spec(spec, args, raw=[joined])
    if args.movies or args.users:
        raise ConfigError("movielens: --movies and --users go with --ratings")
    if not args.raw:
        raise ConfigError("movielens: give joined RAW file(s) or --ratings R --movies M [--users U]")
    return _build_with_spec(spec, args)


# ---------------------------------------------------------------------------------------------
# Taobao: the four raw tables joined with behaviour sequences
# ---------------------------------------------------------------------------------------------
def _taobao_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw-sample", required=True, help="raw_sample.csv (user,time_stamp,adgroup_id,pid,nonclk,clk)")
    parser.add_argument("--ad-feature", required=True, help="ad_feature.csv (adgroup_id,cate_id,campaign_id,customer,brand,price)")
    parser.add_argument("--user-profile", required=True, help="user_profile.csv (userid,cms_segid,...)")
    parser.add_argument("--behavior-log", required=True, help="behavior_log.csv (user,time_stamp,btag,cate,brand)")
    parser.add_argument("--max-seq-len", type=int, default=50, help="behaviours kept per impression (default 50)")
    parser.add_argument("--min-count", type=int, default=1, help="tokens seen fewer times in train → OOV (default 1)")
    parser.add_argument("--buckets", type=int, help="user buckets the join works in (default: one per 128 MB of log)")
    parser.add_argument("--joined-out", metavar="PARQUET",
                        help="also write the joined rows (with |-joined histories) here: what `ctrkit predict` scores")


def _build_taobao(args: argparse.Namespace):
    from ctrkit.data.taobao import TaobaoTables, preprocess_taobao

    tables = TaobaoTables(args.raw_sample, args.ad_feature, args.user_profile, args.behavior_log)
    return preprocess_taobao(tables, args.out, max_seq_len=args.max_seq_len, min_count=args.min_count,
                             strict=args.strict, chunk_rows=args.chunk_rows, overwrite=args.overwrite,
                             buckets=args.buckets, joined_out=args.joined_out, notify=_notify)


DATASETS: dict[str, Dataset] = {
    "criteo": Dataset("Criteo: raw TSV (40 fields, 39 unlabeled) or the header CSV variants", _criteo_arguments, _build_criteo),
    "avazu": Dataset("Avazu CTR CSV (24 columns, with or without a header)", _spec_arguments, _builtin("avazu")),
    "movielens": Dataset("MovieLens ratings (rating >= 4 is a click): joined rows or --ratings/--movies/--users",
                         _movielens_arguments, _build_movielens),
    "taobao-joined": Dataset("Taobao ad clicks in the 267-column DMR layout (50-step btag/cate/brand histories)",
                             _spec_arguments, _builtin("taobao-joined")),
    "taobao": Dataset("Taobao ad clicks from the four raw tables, with behaviour sequences before each impression",
                      _taobao_arguments, _build_taobao, raw_files=False),
    "table": Dataset("any CSV/TSV/Parquet click log described by a dataset spec (--spec)", _table_arguments, _build_table),
}
