#!/usr/bin/env python
"""Load test of ``ctrkit serve`` on loopback: throughput and latency at 1, 8 and 64 concurrent clients.

Protocol: synthetic Criteo rows (``write_synthetic_criteo``) → a store → each model (DeepFM, DCN;
embedding 16, DNN 400-400-400 as in ``bench_models.py``) trained one epoch with ``ctrkit.train``.
For each model and precision (``ctrkit serve --precision fp32|bf16``) a real ``ctrkit serve``
process is started on a free loopback port (``--threads``, ``--max-wait-ms``); a client in this
process (httpx, asyncio) first sends a few warm-up requests, then, for each concurrency C, C
clients each post requests of ``--rows-per-request`` raw rows back to back (bodies serialised in
advance) until ``--requests`` requests are answered or ``--seconds`` have passed.

Reported per level: requests/s and rows/s (answered requests / wall time of the level), p50 and
p99 latency (client side: send to full response), and the service's own counters (rows per
model call on average: how much the micro-batcher merged).

Scores: every response of the load phase is compared with ``Model.predict`` (``ctrkit.load`` with
the same precision, in this process) on the same rows, request by request (so a merged model call
must give each request the scores it would get alone); ``max |diff|`` is the largest difference
over all of them, checked against ``--tolerance``.

The client shares the machine with the service (on the 2-core development machine, it takes a
good part of one core at 64 clients), so the numbers are those of client and service together.

Usage::

    .venv/bin/python benchmarks/bench_serve.py                       # DeepFM, DCN × fp32, bf16 × 1, 8, 64
    .venv/bin/python benchmarks/bench_serve.py --quick               # smoke run (< 2 min)
    .venv/bin/python benchmarks/bench_serve.py --rows-per-request 100 --models deepfm --precisions fp32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL_OPTIONS = {"embed_size": 16, "hidden_units": [400, 400, 400], "batch_size": 4096, "epochs": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="deepfm,dcn", help="comma-separated models [default: deepfm,dcn]")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated [default: fp32,bf16]")
    parser.add_argument("--concurrency", default="1,8,64", help="concurrent clients per level [default: 1,8,64]")
    parser.add_argument("--rows-per-request", type=int, default=16, help="raw rows in each request [default: 16]")
    parser.add_argument("--requests", type=int, default=600, help="requests per level at most [default: 600]")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per level at most [default: 10]")
    parser.add_argument("--train-rows", type=int, default=20_000, help="synthetic training rows [default: 20000]")
    parser.add_argument("--threads", type=int, default=1, help="the service's torch threads [default: 1]")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="ctrkit serve --max-wait-ms [default: 2]")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="largest |served - Model.predict| allowed")
    parser.add_argument("--workdir", default=str(common.DEFAULT_WORKDIR), help="scratch and output folder")
    parser.add_argument("--out", help="JSON results [default: WORKDIR/serve.json]")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4,000 training rows, 60 requests per level")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_rows, args.requests, args.seconds = 4000, 60, 3.0
    return args


# ---------------------------------------------------------------------------------------------
# Models and rows
# ---------------------------------------------------------------------------------------------
def train_models(models: list[str], rows: int, scratch: Path) -> dict[str, Path]:
    import ctrkit
    from ctrkit.data.synthetic import write_synthetic_criteo

    write_synthetic_criteo(scratch / "train.tsv", rows=rows, seed=0)
    store = ctrkit.preprocess("criteo", scratch / "train.tsv", out=scratch / "store.lmdb", min_count=2)
    runs = {}
    for model in models:
        run = ctrkit.train(model, store, threads=1, model_save_dir=str(scratch / model), **MODEL_OPTIONS)
        runs[model] = run.directory
    return runs


def request_bodies(rows: list[dict], per_request: int, count: int) -> list[tuple[list[dict], bytes]]:
    """``count`` distinct requests of ``per_request`` rows (wrapping around ``rows``), pre-serialised."""
    bodies = []
    for i in range(count):
        part = [rows[(i * per_request + j) % len(rows)] for j in range(per_request)]
        bodies.append((part, json.dumps({"rows": part}).encode()))
    return bodies


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(run_dir: Path, precision: str, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "ctrkit.cli", "serve", str(run_dir), "--port", str(port),
               "--precision", precision, "--threads", str(args.threads), "--max-wait-ms", str(args.max_wait_ms),
               "--max-rows-per-request", str(max(10_000, args.rows_per_request))]
    handle = open(log, "w")
    process = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy_or_exit(process, url, log)
    return process, url


def wait_healthy_or_exit(process: subprocess.Popen, url: str, log: Path) -> None:
    from ctrkit.serving.client import wait_healthy

    try:
        wait_healthy(url, process, timeout=120)
    except RuntimeError as exc:
        process.kill()
        raise SystemExit(f"{exc}:\n{log.read_text()}") from None


def stop_service(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------
async def load_level(url: str, bodies: list[tuple[list[dict], bytes]], concurrency: int, max_requests: int,
                     seconds: float) -> dict[str, Any]:
    """``concurrency`` clients posting back to back; latencies and the scores of each body."""
    import httpx

    latencies: list[float] = []
    served: dict[int, np.ndarray] = {}
    errors: list[str] = []
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        stats_before = (await client.get("/health")).json()["batcher"]
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            nonlocal next_index
            while next_index < max_requests and time.perf_counter() < deadline:
                index = next_index
                next_index += 1
                _, body = bodies[index % len(bodies)]
                sent = time.perf_counter()
                response = await client.post("/predict", content=body, headers=headers)
                latencies.append(time.perf_counter() - sent)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                else:
                    served.setdefault(index % len(bodies), np.array(response.json()["probabilities"]))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        stats_after = (await client.get("/health")).json()["batcher"]
    calls = stats_after["calls"] - stats_before["calls"]
    rows = stats_after["rows"] - stats_before["rows"]
    answered = len(latencies)
    per_request = len(bodies[0][0])
    lat_ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": answered,
        "errors": errors[:5],
        "error_count": len(errors),
        "seconds": wall,
        "requests_per_s": answered / wall,
        "rows_per_s": answered * per_request / wall,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "model_calls": calls,
        "rows_per_model_call": rows / calls if calls else float("nan"),
        "served": served,
    }


def check_scores(served: dict[int, np.ndarray], expected: list[np.ndarray]) -> float:
    """Largest |served - Model.predict| over the bodies answered."""
    return max((float(np.abs(scores - expected[i]).max()) for i, scores in served.items()), default=float("nan"))


# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    import ctrkit
    from ctrkit.data.synthetic import write_synthetic_criteo
    from ctrkit.serving.client import criteo_json_rows

    args = parse_args(argv)
    machine = common.machine_info()
    models = args.models.split(",")
    precisions = args.precisions.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    scratch = common.make_scratch(args.workdir, "serve-")
    results: list[dict[str, Any]] = []
    try:
        print(f"training {', '.join(models)} on {args.train_rows:,} synthetic Criteo rows ...", flush=True)
        runs = train_models(models, args.train_rows, scratch)
        write_synthetic_criteo(scratch / "score.tsv", rows=2000, seed=7, unlabeled=True)
        rows = criteo_json_rows(scratch / "score.tsv")
        bodies = request_bodies(rows, args.rows_per_request, count=64)
        for model_name in models:
            for precision in precisions:
                reference = ctrkit.load(runs[model_name], precision=precision, threads=args.threads)
                expected = [reference.predict(part) for part, _ in bodies]
                del reference
                process, url = start_service(runs[model_name], precision, args, scratch / f"{model_name}-{precision}.log")
                try:
                    asyncio.run(load_level(url, bodies, 1, 5, 30))  # warm-up
                    for concurrency in levels:
                        level = asyncio.run(load_level(url, bodies, concurrency, args.requests, args.seconds))
                        served = level.pop("served")
                        level.update(model=model_name, precision=precision, rows_per_request=args.rows_per_request,
                                     max_abs_diff=check_scores(served, expected), bodies_checked=len(served))
                        results.append(level)
                        print(f"  {model_name} {precision} C={concurrency}: {level['requests_per_s']:,.0f} req/s, "
                              f"p50 {level['p50_ms']:.1f} ms, p99 {level['p99_ms']:.1f} ms, "
                              f"max|diff| {level['max_abs_diff']:.1e}", flush=True)
                finally:
                    exit_code = stop_service(process)
                if exit_code != 0:
                    print(f"warning: ctrkit serve exited with {exit_code}", file=sys.stderr)
    finally:
        common.remove_tree(scratch)

    print()
    print(format_results(results, args))
    ok = all(r["max_abs_diff"] <= args.tolerance and r["error_count"] == 0 for r in results)
    print(f"\nscores equal Model.predict within {args.tolerance:g} and no errors: {'yes' if ok else 'NO'}")
    payload = {**common.run_header("serve", machine, common.loadavg()),
               "options": {k: v for k, v in vars(args).items()}, "model_options": MODEL_OPTIONS, "results": results,
               "scores_match": ok}
    path = common.write_json(args.out or Path(args.workdir) / "serve.json", payload)
    print(f"wrote {path}")
    return 0 if ok else 1


def format_results(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    headers = ["model", "precision", "clients", "requests", "req/s", "rows/s", "p50 ms", "p99 ms",
               "rows/call", "max |diff|"]
    table = [[r["model"], r["precision"], r["concurrency"], r["requests"], common.format_count(r["requests_per_s"]),
              common.format_count(r["rows_per_s"]), f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
              f"{r['rows_per_model_call']:.0f}", f"{r['max_abs_diff']:.1e}"] for r in results]
    title = (f"ctrkit serve, {args.rows_per_request} rows per request, --threads {args.threads}, "
             f"--max-wait-ms {args.max_wait_ms:g}")
    return title + "\n" + common.format_table(headers, table, align="ll" + "r" * 8)


if __name__ == "__main__":
    sys.exit(main())
