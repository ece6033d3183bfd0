#!/usr/bin/env python
"""Training speed, memory and AUC of ctrkit's DIN and DIEN (PyTorch and TensorFlow) against
DeepCTR-Torch and DeepCTR (TensorFlow), on the same Taobao store with 50-step histories (issue 10,
target 3: >= 2x the fastest peer's rows/s, the same test AUC within noise).

Protocol:

* data: ``ctrkit synth taobao`` + ``ctrkit preprocess taobao`` (``bench_sequence.build_store``; cached
  in ``--workdir`` by rows and seed): 16 sparse fields, the price as one dense field, and three
  behaviour sequences (``hist_btag``, ``hist_cate``, ``hist_brand``, 50 steps, left-padded with 0,
  sharing the vocabularies of ``btag``, ``cate_id``, ``brand``); days 1-6 train, 7 valid, 8 test.
* the store's train split is dumped to ``.npy`` in the trainer's epoch-0 order (``BatchReader(...,
  shuffle=True, seed=--train-seed, even_shards=True)``, an order that does not depend on the batch
  size) and capped at ``--row-cap`` rows (a whole number of batches); every contender trains one
  epoch on exactly these rows, in this order (the peers with ``shuffle=False``), so that every batch
  holds the same rows for every contender -- which also gives DeepCTR's DIEN the negatives of our
  auxiliary loss (the behaviour at the same step of the next row of the batch; see the runners).
* recipe, the same for all: embedding 16, attention unit (80, 40), DNN (200, 80) ReLU, no dropout,
  no L2, Adam ``--lr`` (default 1e-2, as bench_sequence.py: 1e-3 barely moves 1e-4-scale embeddings
  in one epoch), batch ``--batch-size`` (1024), ``--threads`` intra-op threads (default 1: the
  machine is shared); DIN with Dice in the attention unit and unnormalised weights; DIEN with a GRU
  interest extractor, the auxiliary loss (weight 1, sigmoid net (100, 50)) on next-behaviour
  positives and the next-row negatives, a softmax attention with a sigmoid unit, and AUGRU.
* contenders, each in its own process (``peak RSS`` is its own ``VmHWM``): ``ours-fp32``/``ours-bf16``
  (``peers/run_ours.py``: ``ctrkit.pytorch.trainer.Trainer.fit`` as ``ctrkit train`` runs it; bf16 =
  autocast), ``ours-tf-fp32``/``ours-tf-bf16`` (``peers/run_ours_tf.py``; ``mixed_bfloat16``),
  ``deepctr-torch`` (``peers/run_deepctr_torch_seq.py``, DeepCTR-Torch 0.3.0), ``deepctr-tf``
  (``peers/run_deepctr_tf_seq.py``, DeepCTR 0.9.4 under tf_keras in Keras 2's TF 1 graph mode, the
  mode DeepCTR was written for, in which its DIEN builds -- with aliases of TF functions that 2.21
  moved -- and its DIN runs ~2x faster than in TF 2 mode) and ``deepctr-tf2`` (the same in the
  default TF 2 mode: DIN runs, DIEN fails to build, recorded as such), the peers under
  ``--peers-python``. How each library's arguments map onto our models: the runners' docstrings.
* rates as in ``bench_models.py``: ``rows/s`` = train rows / seconds of the training call;
  ``steady`` = rows of steps 2..n / time from the end of step 1 (not for Keras); ``ratio`` = rows/s /
  the fastest peer's on the same model. AUC, logloss and gAUC (per user) of the test predictions are
  computed here, by one function, for every contender. With ``--repeats N`` the contenders are
  interleaved in rotated rounds and the table shows medians (and each contender's best run).

A peer that cannot run is not hidden: its row says ``error`` and the JSON keeps the last lines of its
stderr (``error``) and the log's path.

Usage::

    .venv/bin/python benchmarks/bench_sequence_speed.py                 # 150k impressions, ~20 min
    .venv/bin/python benchmarks/bench_sequence_speed.py --quick         # smoke run (a few minutes)
    .venv/bin/python benchmarks/bench_sequence_speed.py --models dien --contenders ours-fp32,deepctr-torch
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models  # noqa: E402
import bench_sequence  # noqa: E402
import common  # noqa: E402

from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.data.store import Store  # noqa: E402
from ctrkit.metrics import binary_metrics, gauc  # noqa: E402

PEERS_DIR = bench_models.PEERS_DIR
REPO = bench_models.REPO
MODELS = ("din", "dien")
CONTENDERS = ("ours-fp32", "ours-bf16", "ours-tf-fp32", "ours-tf-bf16", "deepctr-torch", "deepctr-tf", "deepctr-tf2")
#: deepctr-tf: DeepCTR under Keras 2's TF 1 graph mode (sessions), the mode it was written for and its
#: fastest (DIN ~2x its TF 2 rate); deepctr-tf2: the default TF 2 mode (eager + tf.function), in which
#: its DIEN does not build (see peers/run_deepctr_tf_seq.py)
PEERS = ("deepctr-torch", "deepctr-tf", "deepctr-tf2")
RUNNERS = {
    "ours-fp32": "run_ours.py",
    "ours-bf16": "run_ours.py",
    "ours-tf-fp32": "run_ours_tf.py",
    "ours-tf-bf16": "run_ours_tf.py",
    "deepctr-torch": "run_deepctr_torch_seq.py",
    "deepctr-tf": "run_deepctr_tf_seq.py",
    "deepctr-tf2": "run_deepctr_tf_seq.py",
}
COMMON_HPARAMS = {"embed_size": 16, "hidden_units": [200, 80], "dropout": 0.0, "batch_norm": False,
                  "attention_units": [80, 40]}
MODEL_HPARAMS = {
    "din": {"attention_activation": "dice"},
    "dien": {"attention_activation": "sigmoid", "aux_loss_weight": 1.0, "aux_hidden_units": [100, 50]},
}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def dump_split(store: Store, split: str, reader: BatchReader, out: Path, limit: int | None = None) -> int:
    """Every array of ``split``'s batches, concatenated in the reader's order, as ``{split}_{key}.npy``
    (keys ``sparse``, ``dense``, ``label``, ``group``, ``seq_<field>``); the first ``limit`` rows."""
    batches = list(reader.iter_epoch(0))
    rows = 0
    for key in batches[0]:
        array = np.concatenate([b[key] for b in batches])[:limit]
        rows = len(array)
        np.save(out / f"{split}_{key.replace('seq:', 'seq_')}.npy", np.ascontiguousarray(array))
    return rows


def prepare_data(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    """Synthetic Taobao tables -> store -> ``.npy`` dump (both cached in ``--workdir``)."""
    base = args.workdir / f"taobao-{args.rows}-seed{args.seed}"
    store_path = base / "taobao.lmdb"
    timings: dict[str, Any] = {}
    if not (store_path / "data.mdb").exists():
        common.remove_tree(base)
        base.mkdir(parents=True)
        timings["build_store_s"], _ = common.timed(lambda: bench_sequence.build_store(base, args))
    store = Store(store_path)
    schema = store.schema
    full_train = int(store.split("train").rows)
    cap = full_train if not args.row_cap else min(full_train, args.row_cap)
    train_rows = cap if cap == full_train else max(args.batch_size, cap // args.batch_size * args.batch_size)
    dump = base / f"dump-order{args.train_seed}-rows{train_rows}"
    if not (dump / "meta.json").exists():
        dump.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        train = BatchReader(store, "train", 65_536, shuffle=True, seed=args.train_seed, even_shards=True)
        dump_split(store, "train", train, dump, train_rows)
        dump_split(store, "test", BatchReader(store, "test", 65_536), dump)
        meta = {
            "field_names": [f.name for f in schema.sparse],
            "vocab_sizes": [int(f.vocab_size) for f in schema.sparse],
            "dense_names": [f.name for f in schema.dense],
            "sequences": [{"name": f.name, "shares": f.shares, "max_len": int(f.max_len)} for f in schema.sequence],
            "train_rows": train_rows,
            "full_train_rows": full_train,
            "test_rows": int(store.split("test").rows),
            "train_order_seed": args.train_seed,
        }
        (dump / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        timings["dump_s"] = time.perf_counter() - start
    meta = json.loads((dump / "meta.json").read_text())
    info = {"rows": args.rows, "seed": args.seed, "store": str(store_path),
            "splits": {k: v.rows for k, v in store.splits.items()}, "train_rows": train_rows,
            "sequences": meta["sequences"], "sparse_fields": len(meta["field_names"]),
            "dense_fields": len(meta["dense_names"]), **timings}
    return store_path, dump, info


# ---------------------------------------------------------------------------------------------
# Running one contender
# ---------------------------------------------------------------------------------------------
def run_contender(args: argparse.Namespace, contender: str, model: str, train_rows: int, store: Path, dump: Path,
                  scratch: Path, repeat: int) -> dict[str, Any]:
    tag = f"{model}-{contender}-{repeat}"
    spec = {
        "contender": contender, "model": model, "registry_model": model, "store": str(store), "data_dir": str(dump),
        "train_rows": train_rows, "batch_size": args.batch_size, "lr": args.lr, "threads": args.threads,
        "seed": args.train_seed, "precision": "bf16" if contender.endswith("-bf16") else "fp32",
        "hparams": {**COMMON_HPARAMS, **MODEL_HPARAMS[model]}, "init": "xavier_normal",
        "predictions": str(scratch / f"pred-{tag}.npy"), "tf_warmup": not args.no_tf_warmup,
        "tf_shim": not args.no_tf_shim,
        "tf_graph_mode": contender == "deepctr-tf",
    }
    spec_path = scratch / f"spec-{tag}.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    ours = contender.startswith("ours")
    env = dict(os.environ)
    if ours:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    python = sys.executable if ours else str(args.peers_python)
    cmd = ["timeout", str(args.timeout), python, "-u", str(PEERS_DIR / RUNNERS[contender]), "--spec", str(spec_path)]
    load = common.loadavg()
    measured = common.run_measured(cmd, env=env, cwd=REPO)
    log_path = scratch / f"log-{tag}.txt"
    log_path.write_text(measured["stdout"] + "\n--- stderr ---\n" + measured["stderr"])
    result = next((json.loads(line[len("RESULT "):]) for line in reversed(measured["stdout"].splitlines())
                   if line.startswith("RESULT ")), None)
    if measured["returncode"] != 0 or result is None:
        reason = "timeout" if measured["returncode"] in (124, 137) else f"exit {measured['returncode']}"
        tail = [line for line in measured["stderr"].strip().splitlines() if line.strip()][-3:] or ["(no output)"]
        return {"contender": contender, "model": model, "error": f"failed: {reason}: " + " | ".join(tail),
                "log": str(log_path), "loadavg_before": load}
    probs = np.load(spec["predictions"])
    labels = np.load(dump / "test_label.npy").astype(np.float64)
    if len(probs) != len(labels):
        result["error"] = f"failed: {len(probs)} test predictions for {len(labels)} rows"
    else:
        result.update({f"test_{k}": v for k, v in binary_metrics(labels, probs).items()})
        result["test_gauc"] = gauc(labels, probs, np.load(dump / "test_group.npy"))
    result.update(process_wall_s=measured["wall_s"], process_cpu_s=measured["user_s"] + measured["sys_s"],
                  loadavg_before=load, log=str(log_path))
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def add_gauc(summary: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    """The first successful run's test gAUC on each summary row (bench_models' summary has AUC only)."""
    for row in summary:
        first = next((r for r in runs if r["model"] == row["model"] and r["contender"] == row["contender"]
                      and "error" not in r), None)
        if first is not None:
            row["test_gauc"] = first.get("test_gauc")


def verdicts(summary: list[dict[str, Any]], margin: float) -> list[str]:
    """Per model and contender of ours: the speed ratio against the 2x target and the AUC gap."""
    lines = []
    for model in MODELS:
        mine = [g for g in summary if g["model"] == model and "error" not in g]
        if not any(g["contender"] in PEERS for g in mine):
            if mine:
                lines.append(f"{model}: no peer ran, no ratio")
            continue
        for g in mine:
            if g["contender"] in PEERS:
                continue
            ratio, gap = g.get("ratio_to_fastest_peer"), g.get("auc_minus_best_peer")
            fast = ratio is not None and ratio >= 2.0
            close = gap is not None and gap >= -margin
            steady = g.get("steady_ratio_to_fastest_peer")
            lines.append(f"{model:4s} {g['contender']:13s} {ratio:.2f}x the fastest peer (steady "
                         f"{'-' if steady is None else f'{steady:.2f}x'}; target >= 2x: "
                         f"{'met' if fast else 'MISSED'}); test AUC {gap:+.4f} vs the best peer "
                         f"(within -{margin}: {'yes' if close else 'NO'})")
    return lines


def format_report(summary: list[dict[str, Any]]) -> str:
    text = bench_models.format_report(summary)
    gaucs = [f"{g['model']}/{g['contender']} {g['test_gauc']:.4f}" for g in summary if g.get("test_gauc") is not None]
    return text + ("\ntest gAUC: " + ", ".join(gaucs) if gaucs else "")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of din, dien")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help=f"comma-separated, of {', '.join(CONTENDERS)}")
    parser.add_argument("--rows", type=int, default=150_000, help="synthetic impressions (default 150,000)")
    parser.add_argument("--row-cap", type=int, default=0,
                        help="train on the first N train rows only (whole batches), for every contender (0: all)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every contender (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per (model, contender), interleaved; median rate")
    parser.add_argument("--seed", type=int, default=2018, help="seed of the synthetic tables")
    parser.add_argument("--train-seed", type=int, default=2018, help="seed of the training order and the models")
    parser.add_argument("--auc-margin", type=float, default=0.005, help="'same AUC within noise' (default 0.005)")
    parser.add_argument("--peers-python", type=Path, default=bench_models.DEFAULT_PEERS_PYTHON)
    parser.add_argument("--no-tf-warmup", action="store_true",
                        help="time DeepCTR-TF's first fit with its graph tracing (default: trace on two batches first)")
    parser.add_argument("--no-tf-shim", action="store_true",
                        help="run DeepCTR (TF) without aliasing array_ops.stack/unstack (its DIEN then fails on TF 2.21)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per contender run")
    parser.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR / "sequence-speed")
    parser.add_argument("--json", type=Path, default=common.DEFAULT_WORKDIR / "sequence_speed.json")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20k impressions, 4 batches of train rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.row_cap = 20_000, args.row_cap or 4 * args.batch_size
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    contenders = [c.strip().lower() for c in args.contenders.split(",") if c.strip()]
    for name, known, given in (("--models", MODELS, models), ("--contenders", CONTENDERS, contenders)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise SystemExit(f"{name}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    if any(c in PEERS for c in contenders) and not args.peers_python.exists():
        raise SystemExit(f"no peers' python at {args.peers_python}; make bench-peers, or --peers-python")
    info = common.machine_info()
    print(common.describe_machine(info), flush=True)
    store, dump, data_info = prepare_data(args)
    train_rows = data_info["train_rows"]
    print(f"data: {args.rows:,} impressions -> {data_info['splits']}; training on {train_rows:,} rows "
          f"({data_info['sparse_fields']} sparse, {data_info['dense_fields']} dense, "
          f"{len(data_info['sequences'])} sequences of {data_info['sequences'][0]['max_len']}) in {store}", flush=True)
    scratch = common.make_scratch(args.workdir, "run-")

    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for repeat in range(args.repeats):
        for index, model in enumerate(models):
            for contender in common.rotated(contenders, index + repeat):
                result = run_contender(args, contender, model, train_rows, store, dump, scratch, repeat)
                runs.append(result)
                print(bench_models.run_line(model, contender, result, model_width=5), flush=True)

    bench_models.PEERS = PEERS  # summarise() takes the peers from its module's PEERS
    summary = bench_models.summarise(runs, models, contenders)
    add_gauc(summary, runs)
    lines = verdicts(summary, args.auc_margin)
    print()
    print(format_report(summary))
    print("\n" + "\n".join(lines))
    payload = {
        **common.run_header("sequence_speed", info, common.loadavg()),
        "data": data_info,
        "settings": {"batch_size": args.batch_size, "threads": args.threads, "lr": args.lr, "optimizer": "Adam",
                     "epochs": 1, "common_hparams": COMMON_HPARAMS, "model_hparams": MODEL_HPARAMS,
                     "repeats": args.repeats, "train_seed": args.train_seed, "auc_margin": args.auc_margin,
                     "tf_warmup": not args.no_tf_warmup, "tf_shim": not args.no_tf_shim},
        "summary": summary,
        "verdicts": lines,
        "runs": runs,
        "wall_seconds": time.perf_counter() - started,
        "scratch": str(scratch),
    }
    print(f"\nwrote {common.write_json(args.json, payload)}  (logs and predictions in {scratch})")
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
