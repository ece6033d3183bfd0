#!/usr/bin/env python
"""Batch scoring throughput: ``ctrkit predict`` on raw Criteo rows, and where its time goes.

Setup (cached in ``--workdir``, not timed): synthetic Criteo rows from ``ctrkit synth criteo``
(``--rows`` rows to score, seed 1), a store built from the first ``--train-rows`` of them, and one
model per ``--models`` trained on it for one epoch (``ctrkit train``). Then, in this process, for
each model and over ``--repeats`` interleaved repeats (the median is reported):

* **end to end** -- :func:`ctrkit.commands.predict.score_file`, what ``ctrkit predict RUN RAW --out
  SCORES`` runs after loading: read, parse, encode, score, write the probabilities to a file.
  Parsing and encoding run in background threads one block ahead of the model (they overlap);
* **gzip** -- the same on the gzip-compressed file (``--gzip``; first model only);
* **parse+encode** -- only reading, validating and encoding the rows (no model, no output);
* **model** -- only ``trainer.predict`` on the rows already encoded in memory.

The share of parsing is ``parse+encode / (parse+encode + model)``: the work each part needs, with
no overlap. Rows/s is rows / wall seconds; the model's loading is not timed.

    /work/main/.venv/bin/python benchmarks/bench_predict.py                     # 1M rows, LR and DeepFM
    /work/main/.venv/bin/python benchmarks/bench_predict.py --rows 200000 --repeats 1 --quick-train
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def ctrkit_cli(*argv: str) -> None:
    command = [sys.executable, "-m", "ctrkit.cli", *map(str, argv)]
    done = subprocess.run(command, cwd=str(ROOT), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")


def prepare(args: argparse.Namespace) -> dict[str, Path]:
    """The raw rows (text and gzip), the store and one run directory per model (cached)."""
    work = args.workdir / f"predict-{args.rows}-{args.train_rows}"
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw.tsv"
    if not raw.exists():
        print(f"generating {args.rows:,} synthetic Criteo rows ...", flush=True)
        ctrkit_cli("synth", "criteo", raw, "--rows", args.rows, "--seed", 1)
    paths = {"raw": raw}
    if args.gzip:
        paths["gzip"] = work / "raw.tsv.gz"
        if not paths["gzip"].exists():
            with open(raw, "rb") as source, gzip.open(work / "raw.tmp.gz", "wb", compresslevel=1) as target:
                shutil.copyfileobj(source, target, 8 << 20)
            os.replace(work / "raw.tmp.gz", paths["gzip"])
    store = work / "store.lmdb"
    if not store.exists():
        train = work / "train.tsv"
        with open(raw, "rb") as source, open(train, "wb") as target:
            for _, line in zip(range(args.train_rows), source):
                target.write(line)
        print(f"preprocessing the first {args.train_rows:,} rows ...", flush=True)
        ctrkit_cli("preprocess", "criteo", train, "--out", store)
        train.unlink()
    for model in args.models:
        run = work / f"run-{model}"
        if not (run / "best.pt").exists():
            print(f"training {model} for one epoch ...", flush=True)
            ctrkit_cli("train", "--model", model, "--data", store, "--epochs", 1, "--batch_size", 4096, "--model_save_dir", run)
        paths[model] = run
    return paths


def time_end_to_end(trainer, encoder, raw: Path, out: Path, batch_rows: int) -> float:
    from ctrkit.commands.predict import score_file

    start = time.perf_counter()
    result = score_file(trainer, encoder, str(raw), str(out), batch_rows=batch_rows, progress=False)
    seconds = time.perf_counter() - start
    assert result.bad_rows.count == 0
    return seconds


def time_parse(encoder, raw: Path) -> tuple[float, int]:
    from ctrkit.data.pipeline import encoded_blocks, open_source

    start = time.perf_counter()
    rows = sum(parsed.rows for _, _, parsed, _ in encoded_blocks(open_source(raw, encoder.spec, streams=True), encoder))
    return time.perf_counter() - start, rows


def encoded_in_memory(encoder, raw: Path) -> list[dict]:
    from ctrkit.data.pipeline import encoded_blocks, open_source

    return [batch for _, _, _, batch in encoded_blocks(open_source(raw, encoder.spec, streams=True), encoder)]


def time_model(trainer, blocks: list[dict], batch_rows: int) -> float:
    from ctrkit.data.pipeline import batch_slices

    start = time.perf_counter()
    for batch in blocks:
        trainer.predict(batch_slices(batch, batch_rows))
    return time.perf_counter() - start


def measure(args: argparse.Namespace, paths: dict[str, Path]) -> list[dict[str, Any]]:
    from ctrkit.commands.evaluate import load_trainer
    from ctrkit.data.encoder import load_encoder

    results = []
    out = paths["raw"].parent / "scores.txt"
    for index, model in enumerate(args.models):
        trainer = load_trainer(str(paths[model]), {"gpu_ids": [], "eval_batch_size": args.batch_size,
                                                   "num_workers": 0, "threads": args.threads})
        encoder = load_encoder(paths[model])
        blocks = encoded_in_memory(encoder, paths["raw"])
        timings: dict[str, list[float]] = {"end_to_end": [], "parse_encode": [], "model": []}
        if args.gzip and index == 0:
            timings["gzip_end_to_end"] = []
        for repeat in range(args.repeats):
            for name in common.rotated(list(timings), repeat):
                if name == "end_to_end":
                    seconds = time_end_to_end(trainer, encoder, paths["raw"], out, args.batch_size)
                elif name == "gzip_end_to_end":
                    seconds = time_end_to_end(trainer, encoder, paths["gzip"], out, args.batch_size)
                elif name == "parse_encode":
                    seconds, rows = time_parse(encoder, paths["raw"])
                    assert rows == args.rows
                else:
                    seconds = time_model(trainer, blocks, args.batch_size)
                timings[name].append(seconds)
                print(f"  {model:8s} {name:16s} {seconds:7.2f} s  ({args.rows / seconds:,.0f} rows/s)", flush=True)
        del blocks
        median = {name: common.median(values) for name, values in timings.items()}
        results.append({
            "model": model,
            "rows": args.rows,
            "seconds": timings,
            "median_s": median,
            "rows_per_s": {name: args.rows / s for name, s in median.items()},
            "parse_share": median["parse_encode"] / (median["parse_encode"] + median["model"]),
        })
    out.unlink(missing_ok=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        rate = r["rows_per_s"]
        rows.append([r["model"], common.format_count(r["rows"]), common.format_count(rate["end_to_end"]),
                     common.format_count(rate.get("gzip_end_to_end")), common.format_count(rate["parse_encode"]),
                     common.format_count(rate["model"]), f"{r['parse_share']:.0%}"])
    headers = ["model", "rows", "predict rows/s", "gzip rows/s", "parse+encode rows/s", "model rows/s", "parse share"]
    return common.format_table(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="raw rows scored (default 1,000,000)")
    parser.add_argument("--train-rows", type=int, default=200_000, help="rows the models are trained on (default 200,000)")
    parser.add_argument("--models", default="lr,deepfm", help="comma-separated models (default lr,deepfm)")
    parser.add_argument("--batch-size", type=int, default=8192, help="rows per model batch, as predict's --batch_size (default 8192)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians reported (default 3)")
    parser.add_argument("--no-gzip", dest="gzip", action="store_false", help="skip the gzip input")
    parser.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR, help="cache of inputs and runs (default benchmarks/out/)")
    parser.add_argument("--json", type=Path, default=None, help="result file (default <workdir>/predict.json)")
    parser.add_argument("--quick-train", action="store_true", help="train on 20,000 rows (setup in seconds)")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    if args.quick_train:
        args.train_rows = 20_000
    args.train_rows = min(args.train_rows, args.rows)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = common.machine_info()
    paths = prepare(args)
    results = measure(args, paths)
    print()
    print(common.describe_machine(machine))
    print(table(results))
    payload = {**common.run_header("predict", machine, common.loadavg()),
               "parameters": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "results": results}
    target = common.write_json(args.json or args.workdir / "predict.json", payload)
    print(f"\nwrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
