#!/usr/bin/env python
"""TensorFlow loader throughput: ``BatchReader`` alone vs ``ctrkit.tensorflow.loader.make_dataset``.

The same store as ``bench_loader.py`` (random rows of 39 int32 ids + a float32 label, chunks of
65,536 rows, in the page cache), shuffled epochs of batch 4096 in one process:

* **BatchReader numpy** -- the reader's numpy batches (the reference: the tf.data pipeline hands
  exactly these batches to TensorFlow);
* **make_dataset, in-graph** -- the pipeline alone: the dataset consumed by ``Dataset.reduce``
  (a graph loop, as ``keras.Model.fit`` or a ``tf.function`` over the iterator consumes it);
* **make_dataset, Python loop** -- ``for batch in dataset`` in eager Python, the cost a
  hand-written training loop adds per step;
* the same two with ``private_threads=None`` (tf.data's shared thread pool instead of the
  private one-thread pool ``make_dataset`` uses by default).

Every timing repeats whole epochs for at least ``--min-seconds``; ``--repeats`` timings per
contender, interleaved, median reported. Target from the issue: the pipeline alone >= 5M rows/s.
The process runs with ``ctrkit.runtime.keep_freed_memory()``, as the trainers do.

    /work/main/.venv/bin/python benchmarks/bench_tf_loader.py            # 2M rows, ~2 min
    /work/main/.venv/bin/python benchmarks/bench_tf_loader.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402
from bench_loader import N_SPARSE, field_vocab_sizes, measure, numpy_epoch, random_blocks  # noqa: E402
from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.data.store import DEFAULT_CHUNK_ROWS, Store, StoreWriter  # noqa: E402
from ctrkit.schema import Field, Schema  # noqa: E402
from ctrkit.runtime import keep_freed_memory  # noqa: E402
from ctrkit.tensorflow.loader import make_dataset  # noqa: E402

TARGET_ROWS_PER_S = 5_000_000
REFERENCE = "BatchReader numpy, shuffled"
HEADLINE = "make_dataset, in-graph, shuffled"


def build_store(path: Path, rows: int, seed: int, chunk_rows: int) -> Store:
    """bench_loader's rows (same generator and vocabularies) in a ctrkit store, without the per-row copy."""
    schema = Schema(tuple(Field(f"F{j + 1}", "sparse", vocab_size=int(v)) for j, v in enumerate(field_vocab_sizes())))
    with StoreWriter(path, schema, chunk_rows=chunk_rows) as writer:
        for label, sparse in random_blocks(rows, seed):
            writer.append("train", {"label": label, "sparse": sparse})
        return writer.commit({"source_format": "random", "benchmark": "bench_tf_loader"})


def in_graph(reader: BatchReader, private_threads: int | None) -> Callable[[int], int]:
    def count(rows, batch):
        return rows + tf.shape(batch["label"], out_type=tf.int64)[0]

    def run(epoch: int) -> int:
        dataset = make_dataset(reader, epoch, private_threads=private_threads)
        return int(dataset.reduce(tf.constant(0, tf.int64), count))

    return run


def python_loop(reader: BatchReader, private_threads: int | None) -> Callable[[int], int]:
    def run(epoch: int) -> int:
        rows = 0
        for batch in make_dataset(reader, epoch, private_threads=private_threads):
            rows += int(batch["label"].shape[0])
        return rows

    return run


def verify(store: Store, batch_size: int, seed: int) -> dict:
    """Untimed: one shuffled epoch of make_dataset equals the reader's, batch by batch."""
    reader = BatchReader(store, "train", batch_size, shuffle=True, seed=seed)
    count = 0
    for ours, theirs in zip(make_dataset(reader, 7), reader.iter_epoch(7), strict=True):
        for key in theirs:
            assert np.array_equal(ours[key].numpy(), theirs[key]), f"batch {count}: {key} differs"
        count += 1
    return {"epoch": 7, "batches_compared": count, "identical": True}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in the store (default 2,000,000)")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per batch (default 4096)")
    parser.add_argument("--repeats", type=int, default=5, help="timings per contender, interleaved (default 5)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="each timing runs whole epochs for at least this long (default 1.0)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help=f"rows per store chunk (default {DEFAULT_CHUNK_ROWS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random rows and of the shuffle (default 0)")
    parser.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR, help="where the temporary store goes (default benchmarks/out/)")
    parser.add_argument("--json", type=Path, default=None, help="result file (default <workdir>/tf_loader.json, tf_loader-quick.json with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 200k rows, 2 repeats of >= 0.3 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats, args.min_seconds = min(args.rows, 200_000), min(args.repeats, 2), min(args.min_seconds, 0.3)
    if args.json is None:
        args.json = args.workdir / ("tf_loader-quick.json" if args.quick else "tf_loader.json")
    if args.rows < args.batch_size or args.repeats < 1:
        parser.error("need --rows >= --batch-size and --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # as both trainers do: batch-sized buffers are reused, not faulted in anew
    machine = {**common.machine_info(), "tensorflow": tf.__version__}
    print(common.describe_machine(machine) + f", tensorflow {tf.__version__}")
    print(f"rows {args.rows:,} ({N_SPARSE} int32 ids + float32 label), batch {args.batch_size}, chunk {args.chunk_rows:,} rows, "
          f"{args.repeats} repeats of >= {args.min_seconds:g} s\n")
    scratch = common.make_scratch(args.workdir, "bench-tf-loader-")
    try:
        seconds, store = common.timed(lambda: build_store(scratch / "store.lmdb", args.rows, args.seed, args.chunk_rows))
        print(f"built the store in {seconds:.1f} s")
        checks = verify(store, args.batch_size, args.seed)
        print(f"checked: make_dataset = BatchReader, batch by batch ({checks['batches_compared']} batches of a shuffled epoch)\n")
        reader = BatchReader(store, "train", args.batch_size, shuffle=True, seed=args.seed)
        contenders: list[tuple[str, Callable[[int], int]]] = [
            (REFERENCE, numpy_epoch(reader)),
            (HEADLINE, in_graph(reader, 1)),
            ("make_dataset, Python loop, shuffled", python_loop(reader, 1)),
            ("make_dataset, in-graph, shared tf.data pool", in_graph(reader, None)),
            ("make_dataset, Python loop, shared tf.data pool", python_loop(reader, None)),
        ]
        for _, run in contenders:  # warm-up: page cache, tracing, first-call costs
            run(10_000)
        timings: dict[str, list[dict]] = {name: [] for name, _ in contenders}
        for repeat in range(args.repeats):
            for name, run in common.rotated(contenders, repeat):
                timings[name].append(measure(run, repeat, args.min_seconds))
        results = []
        for name, _ in contenders:
            runs = timings[name]
            rates = [t["rows"] / t["seconds"] for t in runs]
            results.append({
                "name": name,
                "timings": runs,
                "rows_per_s": rates,
                "median_rows_per_s": common.median(rates),
                "min_rows_per_s": min(rates),
                "max_rows_per_s": max(rates),
                # all threads of this process (tf.data's included)
                "median_rows_per_cpu_s": common.median(t["rows"] / t["cpu_seconds"] for t in runs),
            })
        reference = next(r for r in results if r["name"] == REFERENCE)["median_rows_per_s"]
        for r in results:
            r["ratio_vs_reader"] = r["median_rows_per_s"] / reference
        headers = ["contender", "rows/s (median)", "min..max rows/s", "rows/cpu-s", "x BatchReader"]
        print(common.format_table(headers, [
            [r["name"], common.format_count(r["median_rows_per_s"]), f"{r['min_rows_per_s'] / 1e6:.2f}M..{r['max_rows_per_s'] / 1e6:.2f}M",
             common.format_count(r["median_rows_per_cpu_s"]), f"{r['ratio_vs_reader']:.2f}"]
            for r in results
        ]))
        headline = next(r for r in results if r["name"] == HEADLINE)
        met = headline["median_rows_per_s"] >= TARGET_ROWS_PER_S
        print(f"\nheadline ({HEADLINE}): {headline['median_rows_per_s'] / 1e6:.2f}M rows/s "
              f"(target >= {TARGET_ROWS_PER_S / 1e6:.0f}M: {'met' if met else 'MISSED'})")
        load_end = common.loadavg()
        print(f"load avg at end: {' / '.join(f'{x:.2f}' for x in load_end) if load_end else 'n/a'}")
        payload = {
            **common.run_header("tf_loader", machine, load_end),
            "parameters": {"rows": args.rows, "batch_size": args.batch_size, "repeats": args.repeats,
                           "min_seconds_per_timing": args.min_seconds, "chunk_rows": args.chunk_rows,
                           "seed": args.seed, "row_layout": f"{N_SPARSE} int32 sparse ids + float32 label",
                           "quick": args.quick},
            "targets": {"rows_per_s": TARGET_ROWS_PER_S, "judged_on": HEADLINE, "met": met},
            "verification": checks,
            "results": results,
        }
        print(f"\nwrote {common.write_json(args.json, payload)}")
        store.close()
    finally:
        common.remove_tree(scratch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
