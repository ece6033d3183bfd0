#!/usr/bin/env python
"""Training speed next to another busy process: torch's threads vs the cores they share.

Each case trains one model through ``Trainer.fit`` for ``--steps`` steps of batch 4096 (the
``ctrkit train`` path, fp32) on a synthetic store, in its own process, with ``--threads`` 2 or 1,
either on an otherwise idle machine or next to ``--neighbours`` processes that spin a core each
(``while True: pass``, the simplest stand-in for someone else's job). Cases are interleaved and
repeated; the table shows the median rows/s of the training loop and its ratio to the same model
with 2 threads on the idle machine.

Why: torch's intra-op threads meet at a barrier after every parallel operation; when one of them
shares its core with another process, every operation waits for the scheduler, which is what the
busy-machine note of the trainers (``ctrkit.runtime.busy_cores_advice``) warns about.

Usage::

    .venv/bin/python benchmarks/bench_contention.py                      # deepfm,autoint+; ~6 min
    .venv/bin/python benchmarks/bench_contention.py --quick              # smoke run
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
import common  # noqa: E402

REPO = common.BENCH_DIR.parent
MODEL_HPARAMS = {
    "deepfm": {"embed_size": 16, "hidden_units": [400, 400, 400]},
    "dcn": {"embed_size": 16, "hidden_units": [400, 400, 400], "cross_layers": 3},
    "autoint+": {"embed_size": 16, "hidden_units": [400, 400, 400], "attention_layers": 3, "num_heads": 2,
                 "attention_dim": 8},
}

# One case, in a fresh interpreter: train ``steps`` steps and print the trainer's rows/s.
CASE = """
import json, sys, tempfile
spec = json.loads(sys.argv[1])
from ctrkit.config import TrainConfig
from ctrkit.pytorch.trainer import train_from_config
with tempfile.TemporaryDirectory() as scratch:  # the run directory's lock file lands inside it too
    config = TrainConfig(model=spec["model"], data=spec["store"], epochs=1, batch_size=4096, optimizer="Adam",
                         lr=1e-3, model_save_dir=scratch + "/run", threads=spec["threads"], max_steps=spec["steps"],
                         log_every=10**9, **spec["hparams"]).validate()
    metrics = train_from_config(config)
print("RESULT " + json.dumps({"rows_per_s": metrics["rows_per_s"]}))
"""


def prepare_store(workdir: Path, rows: int) -> Path:
    from ctrkit.data.criteo import CriteoOptions, preprocess_criteo
    from ctrkit.data.synthetic import write_synthetic_criteo

    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / f"criteo-{rows}-seed0.lmdb"
    if not (store / "data.mdb").exists():
        tsv = workdir / f"synth-criteo-{rows}-seed0.tsv"
        if not tsv.exists():
            write_synthetic_criteo(tsv, rows, 0)
        common.remove_tree(store)
        preprocess_criteo([tsv], store, CriteoOptions(), progress=False)
    return store


def run_case(store: Path, model: str, threads: int, neighbours: int, steps: int) -> dict[str, Any]:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(neighbours)]
    try:
        if spinners:
            time.sleep(0.5)  # let the spinners take their cores
        spec = {"model": model, "store": str(store), "threads": threads, "steps": steps,
                "hparams": MODEL_HPARAMS[model]}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        out = subprocess.run([sys.executable, "-c", CASE, json.dumps(spec)], capture_output=True, text=True,
                             env=env, cwd=REPO, timeout=1800)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        return {"error": f"exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="deepfm,autoint+", help=f"comma-separated, of {', '.join(MODEL_HPARAMS)}")
    parser.add_argument("--neighbours", type=int, default=1, help="spinning processes in the busy cases (default 1)")
    parser.add_argument("--steps", type=int, default=20, help="training steps of batch 4096 per case (default 20)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=200_000, help="synthetic rows of the store (default 200,000)")
    parser.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR / "contention")
    parser.add_argument("--json", type=Path, default=common.DEFAULT_WORKDIR / "contention.json")
    parser.add_argument("--quick", action="store_true", help="smoke run (< 1 min): deepfm, 5 steps, 1 repeat, 60k rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.steps, args.repeats, args.rows = "deepfm", 5, 1, 60_000
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODEL_HPARAMS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODEL_HPARAMS)}")

    info = common.machine_info()
    print(common.describe_machine(info), flush=True)
    store = prepare_store(args.workdir, args.rows)
    cases = [(m, t, n) for m in models for n in (0, args.neighbours) for t in (2, 1)]
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for model, threads, neighbours in common.rotated(cases, repeat):
            result = run_case(store, model, threads, neighbours, args.steps)
            result.update(model=model, threads=threads, neighbours=neighbours, repeat=repeat)
            runs.append(result)
            rate = result.get("rows_per_s")
            print(f"  {model:9s} threads {threads}  neighbours {neighbours}  "
                  + (f"{rate:>9,.0f} rows/s" if rate else result.get("error", "?")), flush=True)

    summary = []
    for model in models:
        rates = {}
        for neighbours in (0, args.neighbours):
            for threads in (2, 1):
                ok = [r["rows_per_s"] for r in runs if (r["model"], r["threads"], r["neighbours"]) ==
                      (model, threads, neighbours) and r.get("rows_per_s")]
                rates[(threads, neighbours)] = common.median(ok) if ok else None
        base = rates[(2, 0)]
        for (threads, neighbours), rate in rates.items():
            summary.append({"model": model, "threads": threads, "neighbours": neighbours, "rows_per_s": rate,
                            "ratio_to_idle_2_threads": rate / base if rate and base else None})
    table = [[s["model"], s["threads"], s["neighbours"], common.format_count(s["rows_per_s"]),
              f"{s['ratio_to_idle_2_threads']:.2f}x" if s["ratio_to_idle_2_threads"] else "-"] for s in summary]
    print()
    print(common.format_table(["model", "threads", "busy neighbours", "rows/s", "vs idle, 2 threads"], table,
                              align="lrrrr"))
    path = common.write_json(args.json, {"benchmark": "contention", "machine": info, "steps": args.steps,
                                         "repeats": args.repeats, "rows": args.rows, "summary": summary,
                                         "runs": runs, "loadavg_at_end": common.loadavg()})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
