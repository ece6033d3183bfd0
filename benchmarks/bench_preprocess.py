#!/usr/bin/env python
"""Preprocessing throughput and peak memory: raw Criteo TSV -> finished ctrkit store.

For each size in ``--rows`` a synthetic Criteo file (``ctrkit.data.synthetic``) is generated once
and cached in ``--workdir`` (not timed). Then, each in a fresh subprocess so that its peak RSS is
its own (``VmHWM`` of that child, read by the child itself at the end: ``ru_maxrss``, as reported by
``wait4``/``RUSAGE_CHILDREN``/``/usr/bin/time``, would include this launcher's own peak, which
Linux carries across ``execve``), and interleaved over ``--repeats``:

* **ours** -- ``ctrkit.data.criteo.preprocess_criteo`` with the default options (BARS protocol:
  min-count 10, 8:1:1 random split), TSV -> validated, encoded, committed LMDB store;
* **bare polars** -- a reference close to the CSV-parsing limit: read the whole file with polars,
  bucket/hex-decode the tokens, vocabularies (min-count 10) from the same random 80 %, encode
  with one left join per field, numpy arrays in memory. No validation, no spill, no store;
* **generic CSV** -- the same rows as a comma-separated file with a header, through the generic
  pipeline (``ctrkit preprocess table --spec``) with the spec a user would write without knowing
  that C1..C26 are hex hashes: ``{name: C1}`` (string tokens), I1..I13 ``bars``. The CSV is made
  from the TSV once (cached, not timed);
* **parse floor** -- only ``pl.read_csv`` of the whole file into a typed frame (what both of
  the above start with), to show how much of the time is CSV parsing at all;
* **per-row** -- the pattern of older CTR projects: Python reads the file line by line, counts
  tokens in dicts, then reads it again and writes one LMDB record per row. Timed on the first
  ``--per-row-rows`` lines only (it is slow).

Rows/s is lines / seconds of the work itself, measured inside the child (interpreter start and
imports excluded; the parent's wall time including them is in the JSON). Target from the issue:
>= 500k rows/s on 2 cores, with peak RSS growing with the vocabulary, not with the rows.

    /work/main/.venv/bin/python benchmarks/bench_preprocess.py                 # 1M and 4M rows
    /work/main/.venv/bin/python benchmarks/bench_preprocess.py --quick         # smoke test, < 1 min
    /work/main/.venv/bin/python benchmarks/bench_preprocess.py --taobao 1e6,4e6,16e6   # Taobao join only

``--taobao SIZES`` instead times ``ctrkit preprocess taobao`` on synthetic raw tables
(``ctrkit synth taobao``) whose behaviour logs have about SIZES rows (200 behaviours per user,
one impression per 10 behaviours), each in a fresh process with its peak RSS: the join must stay
bounded by its buckets, not grow with the log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (light: no numpy/polars at import, so workers start clean)

TARGET_ROWS_PER_S = 500_000
MIN_COUNT = 10
SPLIT_SEED = 2018  # ctrkit's default split seed: bare polars draws the very same 80 % train rows
TRAIN_FRACTION = 0.8
CONTENDERS = ("ours", "csv", "bare", "parse", "per-row")
LABELS = {
    "ours": "ours: preprocess_criteo -> store",
    "bare": "bare polars -> numpy (no store)",
    "csv": "generic CSV (header, string tokens) -> store",
    "parse": "polars read_csv only (parse floor)",
    "per-row": "per-row Python + LMDB record/row",
    "imports": "python + imports only",
}


# ---------------------------------------------------------------------------------------------
# Workers (run in a fresh process: ``bench_preprocess.py --worker NAME ...``)
# ---------------------------------------------------------------------------------------------
def worker_imports(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of the interpreter with what every contender imports, and nothing else."""
    import lmdb  # noqa: F401
    import numpy  # noqa: F401
    import polars  # noqa: F401

    import ctrkit.data.criteo  # noqa: F401

    return {"seconds": 0.0, "rows": 0}


def worker_ours(args: argparse.Namespace) -> dict[str, Any]:
    from ctrkit.data.criteo import CriteoOptions, preprocess_criteo

    start = time.perf_counter()
    result = preprocess_criteo([args.input], args.out, CriteoOptions(), progress=False)
    seconds = time.perf_counter() - start
    store = result.store
    sparse = [f for f in store.schema.fields if f.kind == "sparse"]
    out = {
        "seconds": seconds,
        "reported_seconds": result.seconds,
        "rows": result.rows_read,
        "bad_rows": result.bad_rows.count,
        "splits": {name: info.rows for name, info in store.splits.items()},
        "vocab_ids": sum(f.vocab_size for f in sparse),  # incl. one OOV id per field
        "vocab_kept": sum(f.vocab_size - 1 for f in sparse),
        "store_bytes": common.disk_usage_bytes(args.out),
    }
    store.close()
    return out


GENERIC_SPEC = {
    "name": "criteo_as_generic_csv",
    "label": "label",
    "defaults": {"min_count": MIN_COUNT},
    "features": [{"name": f"I{i}", "type": "numeric", "transform": "bars"} for i in range(1, 14)]
    + [{"name": f"C{i}"} for i in range(1, 27)],
    "split": {"by": "random", "ratios": [8, 1, 1], "seed": SPLIT_SEED},
}


def worker_csv(args: argparse.Namespace) -> dict[str, Any]:
    from ctrkit.data.pipeline import preprocess
    from ctrkit.data.spec import spec_from_dict

    spec = spec_from_dict(GENERIC_SPEC, origin="bench generic spec")
    start = time.perf_counter()
    result = preprocess(spec, [args.input], args.out, progress=False)
    seconds = time.perf_counter() - start
    vocab = sum(f.vocab_size for f in result.store.schema.fields if f.kind == "sparse")
    result.store.close()
    return {"seconds": seconds, "rows": result.rows_read, "vocab_ids": vocab}


def worker_taobao(args: argparse.Namespace) -> dict[str, Any]:
    from ctrkit.data.taobao import TaobaoTables, preprocess_taobao

    root = Path(args.input)
    tables = TaobaoTables(*(root / n for n in ("raw_sample.csv", "ad_feature.csv", "user_profile.csv", "behavior_log.csv")))
    start = time.perf_counter()
    result = preprocess_taobao(tables, args.out, progress=False)
    seconds = time.perf_counter() - start
    meta = result.store.meta["taobao"]
    result.store.close()
    return {"seconds": seconds, "rows": result.rows_read, "behaviours": meta["behaviours_joined"], "buckets": meta["buckets"],
            "log_bytes": (root / "behavior_log.csv").stat().st_size}


def worker_profile(args: argparse.Namespace) -> dict[str, Any]:
    """cProfile of one ``preprocess_criteo`` run; returns the printed statistics."""
    import cProfile
    import io
    import pstats

    import ctrkit.data.criteo as criteo
    from ctrkit.data.criteo import CriteoOptions, preprocess_criteo

    # cProfile only sees the thread it runs in: run a background prefetch (if the installed
    # ctrkit has one) inline, so that the parsing shows up. Wall time is then the serial sum.
    inline = hasattr(criteo, "prefetched")
    if inline:
        criteo.prefetched = lambda items, depth=1: iter(items)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    result = preprocess_criteo([args.input], args.out, CriteoOptions(), progress=False)
    profiler.disable()
    seconds = time.perf_counter() - start
    text = io.StringIO()
    if inline:
        text.write("(ctrkit.data.criteo.prefetched replaced by inline iteration: one thread, so cProfile sees the parsing)\n")
    stats = pstats.Stats(profiler, stream=text)
    text.write("== ctrkit functions, by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(r"ctrkit/data/(criteo|store|rawtext)\.py", 30)
    text.write("== all functions, by own time ==\n")
    stats.sort_stats("tottime").print_stats(25)
    result.store.close()
    return {"seconds": seconds, "rows": result.rows_read, "profile": text.getvalue()}


def _int_bucket_expr(name: str, missing: int):
    import polars as pl

    col = pl.col(name)
    squared_log = (col.cast(pl.Float64).log() ** 2).floor().cast(pl.Int64)
    return pl.when(col > 2).then(squared_log).otherwise(col).fill_null(missing).alias(name)


def worker_bare(args: argparse.Namespace) -> dict[str, Any]:
    """Whole file in memory with polars: parse, tokens, vocab from train rows, encode by joins."""
    import numpy as np
    import polars as pl

    ints = [f"I{i}" for i in range(1, 14)]
    cats = [f"C{i}" for i in range(1, 27)]
    fields = ints + cats
    missing = int(np.iinfo(np.int64).min)
    schema = {"label": pl.Int8, **{n: pl.Int64 for n in ints}, **{n: pl.String for n in cats}}

    start = time.perf_counter()
    frame = (
        pl.scan_csv(args.input, separator="\t", has_header=False, schema=schema, quote_char=None)
        .select(
            pl.col("label").cast(pl.Float32),
            *(_int_bucket_expr(n, missing) for n in ints),
            *(pl.col(n).str.to_integer(base=16, strict=False).fill_null(missing).alias(n) for n in cats),
        )
        .collect()
    )
    rows = frame.height
    # the same uniform draw per line as ctrkit's split (seed 2018, train = u < 0.8)
    train = pl.Series(np.random.default_rng(SPLIT_SEED).random(rows) < TRAIN_FRACTION)
    train_frame = frame.filter(train)
    counts = pl.collect_all([train_frame.lazy().group_by(n).agg(pl.len().alias("count")) for n in fields])
    vocabularies = [
        c.filter(pl.col("count") >= MIN_COUNT)
        .sort(["count", n], descending=[True, False])
        .with_row_index("id", offset=1)
        .select(n, pl.col("id").cast(pl.Int32))
        for n, c in zip(fields, counts)
    ]
    encoded = pl.collect_all(
        [
            frame.lazy()
            .select(n)
            .join(v.lazy(), on=n, how="left", maintain_order="left")
            .select(pl.col("id").fill_null(0))
            for n, v in zip(fields, vocabularies)
        ]
    )
    sparse = np.empty((rows, len(fields)), dtype=np.int32)
    for j, e in enumerate(encoded):
        sparse[:, j] = e.to_series().to_numpy()
    labels = frame.get_column("label").to_numpy()
    seconds = time.perf_counter() - start
    assert sparse.shape == (rows, 39) and labels.shape == (rows,)
    return {
        "seconds": seconds,
        "rows": rows,
        "train_rows": int(train.sum()),
        "vocab_kept": sum(v.height for v in vocabularies),
        "vocab_ids": sum(v.height + 1 for v in vocabularies),
        "distinct_train_tokens": sum(c.height for c in counts),
    }


def worker_parse(args: argparse.Namespace) -> dict[str, Any]:
    """Only parse the file into a typed frame (hashes left as strings): the floor of any polars
    pipeline, since ours and bare polars both start with exactly this."""
    import polars as pl

    ints = [f"I{i}" for i in range(1, 14)]
    cats = [f"C{i}" for i in range(1, 27)]
    schema = {"label": pl.Int8, **{n: pl.Int64 for n in ints}, **{n: pl.String for n in cats}}
    start = time.perf_counter()
    frame = pl.read_csv(args.input, separator="\t", has_header=False, schema=schema, quote_char=None)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": frame.height}


def worker_per_row(args: argparse.Namespace) -> dict[str, Any]:
    """Line-by-line Python: count pass, vocab, then one LMDB record per row (3 split databases)."""
    import itertools
    import math
    import struct

    import lmdb
    import numpy as np

    limit = args.limit
    missing = -(1 << 63)
    pack_row = struct.Struct("<39if").pack
    pack_key = struct.Struct(">Q").pack

    def int_token(raw: bytes) -> int:
        if not raw:
            return missing
        value = int(raw)
        return int(math.floor(math.log(value) ** 2)) if value > 2 else value

    start = time.perf_counter()
    draws = np.random.default_rng(SPLIT_SEED).random(limit)
    split = bytearray(limit)
    counts: list[dict] = [{} for _ in range(39)]
    lines = 0
    with open(args.input, "rb") as handle:
        for index, line in enumerate(itertools.islice(handle, limit)):
            fields = line.rstrip(b"\n").split(b"\t")
            lines += 1
            u = draws[index]
            split[index] = 0 if u < 0.8 else (1 if u < 0.9 else 2)
            if split[index]:
                continue
            for j in range(13):
                token = int_token(fields[j + 1])
                table = counts[j]
                table[token] = table.get(token, 0) + 1
            for j in range(13, 39):
                token = fields[j + 1]  # the hex string itself ("" = missing)
                table = counts[j]
                table[token] = table.get(token, 0) + 1
    mappings = []
    for table in counts:
        kept = sorted((t for t, c in table.items() if c >= MIN_COUNT), key=lambda t: (-table[t], t))
        mappings.append({t: i + 1 for i, t in enumerate(kept)})

    env = lmdb.open(args.out, map_size=max(limit * 1024, 1 << 26), subdir=True, sync=False, metasync=False, max_dbs=3)
    dbs = [env.open_db(name.encode()) for name in ("train", "valid", "test")]
    next_key = [0, 0, 0]
    txn = env.begin(write=True)
    with open(args.input, "rb") as handle:
        for index, line in enumerate(itertools.islice(handle, limit)):
            fields = line.rstrip(b"\n").split(b"\t")
            ids = [mappings[j].get(int_token(fields[j + 1]), 0) for j in range(13)]
            ids += [mappings[j].get(fields[j + 1], 0) for j in range(13, 39)]
            s = split[index]
            txn.put(pack_key(next_key[s]), pack_row(*ids, float(fields[0])), db=dbs[s], append=True)
            next_key[s] += 1
            if index % 10_000 == 9_999:
                txn.commit()
                txn = env.begin(write=True)
    txn.commit()
    env.sync(True)
    env.close()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows": lines,
        "vocab_kept": sum(len(m) for m in mappings),
        "vocab_ids": sum(len(m) + 1 for m in mappings),
        "distinct_train_tokens": sum(len(t) for t in counts),
        "store_bytes": common.disk_usage_bytes(args.out),
    }


WORKERS = {
    "imports": worker_imports,
    "ours": worker_ours,
    "bare": worker_bare,
    "csv": worker_csv,
    "taobao": worker_taobao,
    "parse": worker_parse,
    "per-row": worker_per_row,
    "profile": worker_profile,
}


def run_worker(name: str, *, input: Path | None = None, out: Path | None = None, limit: int = 0) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; its JSON result plus peak RSS and wall time."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
    if input is not None:
        cmd += ["--input", str(input)]
    if out is not None:
        cmd += ["--out", str(out)]
    if limit:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    measured = common.run_measured(cmd, env=env)
    if measured["returncode"] != 0:
        raise RuntimeError(f"worker {name} failed (exit {measured['returncode']}):\n{measured['stderr'][-4000:]}")
    result = json.loads(measured["stdout"].strip().splitlines()[-1])
    result.update(
        ru_maxrss_mb=measured["ru_maxrss_mb"],  # inherits the launcher's peak: kept for reference only
        process_wall_s=measured["wall_s"],
        cpu_s=measured["user_s"] + measured["sys_s"],
    )
    return result


# ---------------------------------------------------------------------------------------------
# Input files
# ---------------------------------------------------------------------------------------------
def synthetic_file(workdir: Path, rows: int, seed: int) -> tuple[Path, float | None]:
    """The cached synthetic TSV of ``rows`` rows (generated if missing); generation seconds."""
    path = workdir / f"synth-criteo-{rows}-seed{seed}.tsv"
    if path.is_file():
        return path, None
    from ctrkit.data.synthetic import write_synthetic_criteo

    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_synthetic_criteo(path, rows, seed)
    return path, time.perf_counter() - start


def csv_file(tsv: Path) -> Path:
    """The same rows as ``tsv`` as a CSV with a header (cached beside it; not timed)."""
    path = tsv.with_suffix(".csv")
    if not path.is_file():
        import polars as pl

        names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
        frame = pl.read_csv(tsv, separator="\t", has_header=False, new_columns=names, infer_schema=False, quote_char=None)
        frame.write_csv(path)
    return path


def taobao_tables(workdir: Path, behaviours: int, seed: int) -> Path:
    """Synthetic raw Taobao tables with about ``behaviours`` log rows (cached)."""
    from ctrkit.data.synthetic_taobao import TaobaoSizes, write_synthetic_taobao

    root = workdir / f"synth-taobao-{behaviours}-seed{seed}"
    if not (root / "behavior_log.csv").is_file():
        users = max(10, behaviours // 200)
        sizes = TaobaoSizes(impressions=max(100, behaviours // 10), users=users, ads=max(100, users // 2),
                            categories=max(20, users // 50), behaviours_per_user=200)
        write_synthetic_taobao(root, seed, sizes)
    return root


def run_taobao(args: argparse.Namespace) -> int:
    machine = common.machine_info()
    print(common.describe_machine(machine))
    scratch = common.make_scratch(args.workdir, "bench-taobao-")
    results = {}
    try:
        for size in args.taobao:
            root = taobao_tables(args.workdir, size, args.seed)
            runs = []
            for _ in range(args.repeats):
                out = scratch / f"taobao-{size}.lmdb"
                common.remove_tree(out)
                runs.append(run_worker("taobao", input=root, out=out))
                common.remove_tree(out)
                r = runs[-1]
                print(f"  log {r['behaviours']:>12,} behaviours ({r['log_bytes'] / 2**20:,.0f} MiB, {r['buckets']} bucket(s)), "
                      f"{r['rows']:,} impressions: {r['seconds']:.2f} s, {r['rows'] / r['seconds']:,.0f} impressions/s, "
                      f"{r['behaviours'] / r['seconds']:,.0f} behaviours/s, peak RSS {r['peak_rss_mb']:,.0f} MB", flush=True)
            results[str(size)] = {**summarize(runs), "behaviours": runs[0]["behaviours"], "log_bytes": runs[0]["log_bytes"],
                                  "buckets": runs[0]["buckets"]}
    finally:
        common.remove_tree(scratch)
    headers = ["log rows", "log MiB", "buckets", "impressions", "median s", "impressions/s", "behaviours/s", "peak RSS MB", "anon MB"]
    table = [[f"{r['behaviours']:,}", f"{r['log_bytes'] / 2**20:,.0f}", str(r["buckets"]), f"{r['rows']:,}", f"{r['median_seconds']:.2f}",
              common.format_count(r["median_rows_per_s"]), common.format_count(r["behaviours"] / r["median_seconds"]),
              f"{r['median_peak_rss_mb']:,.0f}", f"{r['median_peak_anon_mb']:,.0f}"] for r in results.values()]
    print()
    print(common.format_table(headers, table, align="rrrrrrrrr"))
    load_end = common.loadavg()
    payload = {**common.run_header("preprocess-taobao", machine, load_end),
               "parameters": {"behaviours": args.taobao, "repeats": args.repeats, "synthetic_seed": args.seed}, "results": results}
    path = common.write_json(args.json.with_name("preprocess-taobao.json") if args.json else args.workdir / "preprocess-taobao.json", payload)
    print(f"\nwrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(part)) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--rows must be comma-separated positive integers, got {text!r}")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Synthetic inputs stay cached in --workdir (synth-criteo-*.tsv); stores are temporary.",
    )
    parser.add_argument("--rows", type=parse_sizes, default=[1_000_000, 4_000_000], help="comma-separated input sizes (default 1000000,4000000)")
    parser.add_argument("--per-row-rows", type=int, default=200_000, help="lines the per-row baseline processes (default 200,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender and size, interleaved; the median is reported (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    parser.add_argument("--no-per-row", action="store_true", help="skip the per-row baseline")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare polars reference")
    parser.add_argument("--no-parse", action="store_true", help="skip the read_csv-only parse floor")
    parser.add_argument("--no-csv", action="store_true", help="skip the generic CSV contender")
    parser.add_argument("--taobao", type=parse_sizes, default=None, metavar="SIZES",
                        help="instead: time `preprocess taobao` on synthetic tables with about SIZES behaviour-log rows")
    parser.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR, help="cache of inputs and temporary stores (default benchmarks/out/)")
    parser.add_argument("--json", type=Path, default=None, help="result file (default <workdir>/preprocess.json, preprocess-quick.json with --quick)")
    parser.add_argument("--profile", action="store_true", help="also cProfile preprocess_criteo on the first size and print the top functions")
    parser.add_argument("--keep", action="store_true", help="keep the last stores built (printed path)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 100k rows, per-row on 20k, 1 repeat (< 1 min)")
    # internal: one contender in a fresh process
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.per_row_rows, args.repeats = [100_000], min(args.per_row_rows, 20_000), 1
    if args.json is None:  # a smoke test never overwrites the real results
        args.json = args.workdir / ("preprocess-quick.json" if args.quick else "preprocess.json")
    if args.repeats < 1 or args.per_row_rows < 1:
        parser.error("--repeats and --per-row-rows must be >= 1")
    return args


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["rows"] / r["seconds"] for r in runs]
    summary = {
        "rows": runs[0]["rows"],
        "median_seconds": common.median(r["seconds"] for r in runs),
        "median_rows_per_s": common.median(rates),
        "best_rows_per_s": max(rates),
        "rows_per_s": rates,
        "median_cpu_seconds": common.median(r["cpu_s"] for r in runs),
        "median_peak_rss_mb": common.median(r["peak_rss_mb"] for r in runs),
        "median_peak_anon_mb": common.median(r.get("peak_anon_mb", float("nan")) for r in runs),
        "median_peak_file_mb": common.median(r.get("peak_file_mb", float("nan")) for r in runs),
        "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "median_cpu_utilisation": common.median(r["cpu_s"] / r["process_wall_s"] for r in runs),
        "runs": runs,
    }
    for key in ("vocab_ids", "vocab_kept", "distinct_train_tokens", "store_bytes"):
        if key in runs[0]:
            summary[key] = runs[0][key]
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        with common.RssSampler() as sampler:
            result = WORKERS[args.worker](args)
        result["peak_rss_mb"] = common.own_peak_rss_mb()  # VmHWM: this process only
        result.update(sampler.peaks())  # RssAnon / RssFile peaks (sampled)
        print(json.dumps(result))
        return 0
    if args.taobao:
        return run_taobao(args)

    machine = common.machine_info()
    print(common.describe_machine(machine))
    skipped = {"bare": args.no_bare, "parse": args.no_parse, "per-row": args.no_per_row, "csv": args.no_csv}
    contenders = [c for c in CONTENDERS if not skipped.get(c, False)]
    print(
        f"sizes {', '.join(f'{n:,}' for n in args.rows)} rows; {args.repeats} interleaved runs of {', '.join(contenders)}; "
        f"per-row on the first {args.per_row_rows:,} lines\n"
    )
    inputs = {}
    for rows in args.rows:
        path, seconds = synthetic_file(args.workdir, rows, args.seed)
        inputs[rows] = path
        note = f"generated in {seconds:.1f} s" if seconds is not None else "cached"
        print(f"input {path} ({path.stat().st_size / 2**20:,.0f} MiB, {note})")

    scratch = common.make_scratch(args.workdir, "bench-preprocess-")
    results: dict[str, Any] = {}
    profile_text = None
    try:
        baseline = run_worker("imports")
        print(f"python + numpy/polars/lmdb/ctrkit imports alone: peak RSS {baseline['peak_rss_mb']:.0f} MB\n")
        for rows in args.rows:
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
            for repeat in range(args.repeats):
                for name in common.rotated(contenders, repeat):
                    out = scratch / f"{name}-{rows}.lmdb"
                    common.remove_tree(out)
                    limit = min(args.per_row_rows, rows) if name == "per-row" else 0
                    if name in ("bare", "parse"):
                        out = None
                    source = csv_file(inputs[rows]) if name == "csv" else inputs[rows]
                    runs[name].append(run_worker(name, input=source, out=out, limit=limit))
                    if out is not None and not (args.keep and repeat == args.repeats - 1):
                        common.remove_tree(out)
                    last = runs[name][-1]
                    print(
                        f"  {rows:>10,} rows  run {repeat + 1}/{args.repeats}  {name:8s} {last['seconds']:7.2f} s  "
                        f"{last['rows'] / last['seconds']:>11,.0f} rows/s  peak RSS {last['peak_rss_mb']:7,.0f} MB",
                        flush=True,
                    )
            results[str(rows)] = {name: summarize(r) for name, r in runs.items()}
            if "bare" in runs and "ours" in runs:
                ours, bare = results[str(rows)]["ours"], results[str(rows)]["bare"]
                ours["ratio_vs_bare"] = ours["median_rows_per_s"] / bare["median_rows_per_s"]
                ours["same_vocabulary_as_bare"] = ours["vocab_kept"] == bare["vocab_kept"]
            if "bare" in runs and "csv" in runs:
                results[str(rows)]["csv"]["ratio_vs_bare"] = results[str(rows)]["csv"]["median_rows_per_s"] / results[str(rows)]["bare"]["median_rows_per_s"]
            if "ours" in runs:
                ours = results[str(rows)]["ours"]
                ours["meets_500k_rows_per_s"] = ours["median_rows_per_s"] >= TARGET_ROWS_PER_S
                if "per-row" in runs:
                    ours["ratio_vs_per_row"] = ours["median_rows_per_s"] / results[str(rows)]["per-row"]["median_rows_per_s"]
        if args.profile:
            out = scratch / "profile.lmdb"
            profiled = run_worker("profile", input=inputs[args.rows[0]], out=out)
            common.remove_tree(out)
            profile_text = profiled["profile"]
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            common.remove_tree(scratch)

    headers = ["rows", "contender", "lines timed", "median s", "rows/s", "best rows/s", "x bare", "cpu s", "cpu util", "peak RSS MB", "anon MB", "file MB", "vocab ids", "distinct train tok", "output MiB"]
    table = []
    for rows in args.rows:
        bare_rate = results[str(rows)].get("bare", {}).get("median_rows_per_s")
        for name in contenders:
            r = results[str(rows)][name]
            table.append(
                [
                    f"{rows:,}",
                    LABELS[name],
                    f"{r['rows']:,}",
                    f"{r['median_seconds']:.2f}",
                    common.format_count(r["median_rows_per_s"]),
                    common.format_count(r["best_rows_per_s"]),
                    f"{r['median_rows_per_s'] / bare_rate:.2f}" if bare_rate else "-",
                    f"{r['median_cpu_seconds']:.2f}",
                    f"{r['median_cpu_utilisation']:.2f}",
                    f"{r['median_peak_rss_mb']:,.0f}",
                    f"{r['median_peak_anon_mb']:,.0f}",
                    f"{r['median_peak_file_mb']:,.0f}",
                    common.format_count(r.get("vocab_ids")),
                    common.format_count(r.get("distinct_train_tokens")),
                    f"{r['store_bytes'] / 2**20:,.0f}" if "store_bytes" in r else "-",
                ]
            )
    print()
    print(common.format_table(headers, table, align="rlrrrrrrrrrrrrr"))
    print(
        f"rows/s: median of the runs (best: fastest run); cpu s: user+sys of the whole child process (incl. start-up); "
        f"cpu util = cpu s / child wall, {machine['usable_cpus']} CPUs;\n"
        f"peak RSS: the child's VmHWM, all resident pages incl. memory-mapped input (imports-only interpreter: "
        f"{baseline['peak_rss_mb']:.0f} MB);\nanon / file MB: peaks of RssAnon (allocated memory) and RssFile (mapped file pages, "
        f"reclaimable), sampled every 10 ms; per-row is timed on a prefix."
    )
    if "ours" in contenders:
        print()
        for rows in args.rows:
            ours = results[str(rows)]["ours"]
            extra = ""
            if "ratio_vs_bare" in ours:
                extra = f", {ours['ratio_vs_bare']:.2f}x bare polars (same vocabulary: {'yes' if ours['same_vocabulary_as_bare'] else 'NO'})"
            print(
                f"{rows:>10,} rows: ours {ours['median_rows_per_s']:,.0f} rows/s, target >= 500k: "
                f"{'met' if ours['meets_500k_rows_per_s'] else 'MISSED'}{extra}"
            )
            if "ratio_vs_bare" in ours:
                print(f"{rows:>10,} rows: Criteo path {ours['ratio_vs_bare']:.2f}x bare polars (target >= 0.85x: "
                      f"{'met' if ours['ratio_vs_bare'] >= 0.85 else 'MISSED'})")
            generic = results[str(rows)].get("csv", {})
            if "ratio_vs_bare" in generic:
                print(f"{rows:>10,} rows: generic CSV {generic['median_rows_per_s']:,.0f} rows/s, {generic['ratio_vs_bare']:.2f}x bare polars "
                      f"(target >= 0.6x: {'met' if generic['ratio_vs_bare'] >= 0.6 else 'MISSED'})")
        if len(args.rows) > 1:
            small, large = args.rows[0], args.rows[-1]
            a, b = results[str(small)]["ours"], results[str(large)]["ours"]
            print(
                f"memory {small:,} -> {large:,} rows (x{large / small:.1f}): ours peak RSS {a['median_peak_rss_mb']:,.0f} -> "
                f"{b['median_peak_rss_mb']:,.0f} MB (x{b['median_peak_rss_mb'] / a['median_peak_rss_mb']:.2f}), of which anonymous "
                f"{a['median_peak_anon_mb']:,.0f} -> {b['median_peak_anon_mb']:,.0f} MB (x{b['median_peak_anon_mb'] / a['median_peak_anon_mb']:.2f}); "
                f"vocabulary {a['vocab_ids']:,} -> {b['vocab_ids']:,} ids (x{b['vocab_ids'] / a['vocab_ids']:.2f})"
                + (
                    f", distinct train tokens {results[str(small)]['bare']['distinct_train_tokens']:,} -> "
                    f"{results[str(large)]['bare']['distinct_train_tokens']:,}"
                    if "bare" in contenders
                    else ""
                )
            )
    load_end = common.loadavg()
    print(f"load avg at end: {' / '.join(f'{x:.2f}' for x in load_end) if load_end else 'n/a'}")
    if profile_text:
        print(f"\ncProfile of preprocess_criteo on {args.rows[0]:,} rows:\n{profile_text}")

    payload = {
        **common.run_header("preprocess", machine, load_end),
        "parameters": {
            "rows": args.rows,
            "per_row_rows": args.per_row_rows,
            "repeats": args.repeats,
            "synthetic_seed": args.seed,
            "options": "CriteoOptions() defaults: numeric=categorical, min_count=10, split=8:1:1, seed=2018",
            "inputs": {str(k): {"path": str(v), "bytes": v.stat().st_size} for k, v in inputs.items()},
            "quick": args.quick,
        },
        "targets": {"rows_per_s": TARGET_ROWS_PER_S},
        "imports_only_peak_rss_mb": baseline["peak_rss_mb"],
        "results": results,
        "profile": profile_text,
    }
    path = common.write_json(args.json, payload)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
