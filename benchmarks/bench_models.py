#!/usr/bin/env python
"""Training speed, memory and AUC of ctrkit's CTR models (PyTorch and TensorFlow) against DeepCTR-Torch,
torch-rechub, DeepCTR (TensorFlow) and FuxiCTR, side by side on the same encoded rows.

Protocol (the issue's): synthetic Criteo rows (``write_synthetic_criteo``) preprocessed into a store
(39 sparse fields, BARS tokens, 8:1:1 split); every contender trains one epoch on the same train
rows with embedding 16, DNN (400, 400, 400), no dropout, no L2, Adam lr 1e-3, batch 4096 and
``--threads`` threads (TF: intra-op ``--threads``, inter-op 1), then predicts the test split; the
AUC and logloss of every contender are computed here, by one function, from the predictions.

* ours: ``ctrkit.pytorch.trainer.Trainer(model, TrainConfig(...)).fit(store)`` (fp32, and bf16 =
  ``--precision bf16``, i.e. ``torch.autocast`` on CPU); rows/s is the trainer's own rate of the
  training loop (batches read from the store, forward, backward, Adam).
* ``ours-fp32-bn`` (only when asked for with ``--contenders``): ours fp32 with ``BatchNorm1d`` in
  the DNN, the layout torch-rechub's MLP always has.
* ``ours-fp32-rechub`` (only when asked for): torch-rechub's whole recipe -- ``BatchNorm1d`` in the
  DNN and ``--init torch_default`` (PyTorch's default initialisation of the Linear layers instead of
  our Xavier normal); together they explain torch-rechub's higher one-epoch AUC.
* ``ours-tf-fp32-xla``/``ours-tf-bf16-xla`` (only when asked for): the same with ``--xla`` (the
  training step compiled by XLA).
* ``ours-tf-fp32``/``ours-tf-bf16``: ``ctrkit.tensorflow.trainer.Trainer`` the way ``ctrkit train
  --framework tf`` runs it (``peers/run_ours_tf.py``; bf16 = Keras ``mixed_bfloat16``); its rate is
  the trainer's own and includes the tracing of the compiled step (``steady`` excludes it).
* the newer models (``--models dcnv2,fibinet,onn,onn-inner``): DCN-V2 full-rank, parallel, 3 cross
  layers; FiBiNET ``field_interaction``, reduction 3; ONN with Hadamard pair products (``onn``, the
  only ONN of DeepCTR and DeepCTR-Torch) or inner products plus the copy embeddings (``onn-inner``,
  ours by default and FuxiCTR's); all with the common embedding 16 and DNN (400, 400, 400). Which
  library builds what: ``MISSING``; how each maps the recipe: the runners' docstrings.
* peers: the store's train split is dumped to ``.npy`` in the trainer's epoch-0 order and each peer
  gets the same rows and the same vocabulary sizes (see ``benchmarks/peers/run_*.py`` for how each
  library is driven; torch-rechub gets whole-batch loading, its best case).

Each contender runs in its own process (so ``peak RSS`` is its own ``VmHWM``) under the right
virtualenv (``--peers-python``, default ``benchmarks/.peers-venv/bin/python``). Contenders are
interleaved: the order rotates from model to model, and with ``--repeats N`` every (model,
contender) runs N times in rotated rounds: the table shows the median rate, and the best one (the
least disturbed run: other processes only ever slow a run down) with its own ratio.

Rates: ``rows/s`` = train rows / seconds of the training call (one epoch: reading batches,
forward, backward, optimiser; DeepCTR-TF's graph tracing is done on two untimed batches first,
see ``peers/run_deepctr_tf.py``, ``--no-tf-warmup`` times it too); ``steady`` = rows of steps
2..n / time from the end of step 1 to the end of step n (no first-step warm-up; not available for
Keras, whose batch callbacks run ahead of the work); ``ratio`` = rows/s / the fastest peer's rows/s
on the same model (``steady ratio`` likewise, a peer without a steady rate counting with rows/s).

Usage::

    .venv/bin/python benchmarks/bench_models.py                 # 500k rows, all four models
    .venv/bin/python benchmarks/bench_models.py --quick         # smoke run (< 2 min)
    .venv/bin/python benchmarks/bench_models.py --models deepfm,dcn --skip-peers
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
import common  # noqa: E402

from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.data.criteo import CriteoOptions, preprocess_criteo  # noqa: E402
from ctrkit.data.store import Store  # noqa: E402
from ctrkit.data.synthetic import write_synthetic_criteo  # noqa: E402
from ctrkit.metrics import binary_metrics  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / "peers"
REPO = BENCH_DIR.parent
DEFAULT_PEERS_PYTHON = BENCH_DIR / ".peers-venv" / "bin" / "python"
DEFAULT_FUXICTR_ZOO = BENCH_DIR / ".peers-venv" / "FuxiCTR" / "model_zoo"

MODELS = ("deepfm", "dcn", "xdeepfm", "autoint+", "dcnv2", "fibinet", "onn", "onn-inner")
#: run when --models is not given (the three newer models are asked for by name)
DEFAULT_MODELS = ("deepfm", "dcn", "xdeepfm", "autoint+")
CONTENDERS = ("ours-fp32", "ours-bf16", "ours-tf-fp32", "ours-tf-bf16", "deepctr-torch", "torch-rechub",
              "deepctr-tf", "fuxictr")
#: not run by default: ours with BatchNorm1d in the DNN, the layout torch-rechub always uses
EXTRA_CONTENDERS = ("ours-fp32-bn", "ours-fp32-rechub", "ours-tf-fp32-xla", "ours-tf-bf16-xla")
PEERS = ("deepctr-torch", "torch-rechub", "deepctr-tf", "fuxictr")
RUNNERS = {
    "ours-fp32": "run_ours.py",
    "ours-bf16": "run_ours.py",
    "ours-fp32-bn": "run_ours.py",
    "ours-fp32-rechub": "run_ours.py",
    "ours-tf-fp32": "run_ours_tf.py",
    "ours-tf-bf16": "run_ours_tf.py",
    "ours-tf-fp32-xla": "run_ours_tf.py",
    "ours-tf-bf16-xla": "run_ours_tf.py",
    "deepctr-torch": "run_deepctr_torch.py",
    "torch-rechub": "run_rechub.py",
    "deepctr-tf": "run_deepctr_tf.py",
    "fuxictr": "run_fuxictr.py",
}
#: peers that do not implement a model
MISSING = {("torch-rechub", "xdeepfm"), ("torch-rechub", "onn"), ("torch-rechub", "onn-inner"),
           ("deepctr-torch", "onn-inner"), ("deepctr-tf", "onn-inner"), ("fuxictr", "onn")}
MISSING |= {("fuxictr", m) for m in ("deepfm", "dcn", "xdeepfm", "autoint+")}  # run_fuxictr.py has the new three
#: benchmark models that are a registry model with other settings
REGISTRY_MODEL = {"onn-inner": "onn"}

COMMON_HPARAMS = {"embed_size": 16, "hidden_units": [400, 400, 400], "dropout": 0.0, "batch_norm": False}
MODEL_HPARAMS = {
    "deepfm": {},
    "dcn": {"cross_layers": 3},
    "xdeepfm": {"cin_layer_units": [16, 16, 16]},
    # 2 heads of d' = 8 = embed_size / heads: the only AutoInt shape torch-rechub and DeepCTR-Torch
    # build (they split the embedding into the heads); DeepCTR-TF and ours take it as a parameter.
    "autoint+": {"attention_layers": 3, "num_heads": 2, "attention_dim": 8},
    # DCN-V2: full-rank cross layers, cross network and DNN in parallel on x_0 (the paper's and
    # FuxiCTR's default structure; DeepCTR's DCN with cross_parameterization="matrix").
    "dcnv2": {"cross_layers": 3, "model_structure": "parallel", "use_low_rank_mixture": False},
    # FiBiNET: SENET reduction 3, bilinear "field_interaction" (DeepCTR's "interaction")
    "fibinet": {"reduction_ratio": 3, "bilinear_type": "field_interaction"},
    # ONN with element-wise (Hadamard) pair products: the only ONN DeepCTR-Torch builds, and DeepCTR's
    # with reduce_sum=False (ours: product="hadamard", FuxiCTR's ONNv2; "inner" is our default)
    "onn": {"product": "hadamard"},
    # ONN with inner products and the copy embeddings in the DNN: the paper's, our default, FuxiCTR's
    "onn-inner": {"product": "inner"},
}
#: default cap on the training rows of a model, for every contender (same rows for the AUC):
#: DeepCTR-Torch's xDeepFM runs ~2k rows/s, a full 400k-row epoch would take over 3 minutes.
#: FiBiNET's DNN input is F (F - 1) D = 23,712 wide and ONN's 741 D = 11,856 (+ 624 for ours):
#: ~40-60 MFLOP per row forward and backward, a few thousand rows/s.
DEFAULT_ROW_CAPS = {"xdeepfm": 200_704, "fibinet": 102_400, "onn": 200_704, "onn-inner": 200_704}  # 49 and 25 batches of 4096


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def prepare_data(workdir: Path, rows: int, seed: int, train_seed: int) -> tuple[Path, Path, dict[str, Any]]:
    """Synthetic rows -> store -> ``.npy`` dumps (cached in ``workdir`` by rows and seeds)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tsv = workdir / f"synth-criteo-{rows}-seed{seed}.tsv"
    timings: dict[str, Any] = {}
    if not tsv.exists():
        timings["synth_s"], _ = common.timed(lambda: write_synthetic_criteo(tsv, rows, seed))
    store_path = workdir / f"criteo-{rows}-seed{seed}.lmdb"
    if not (store_path / "data.mdb").exists():
        common.remove_tree(store_path)
        timings["preprocess_s"], _ = common.timed(
            lambda: preprocess_criteo([tsv], store_path, CriteoOptions(), progress=False)
        )
    store = Store(store_path)
    dump = workdir / f"dump-{rows}-seed{seed}-order{train_seed}"
    if not (dump / "meta.json").exists():
        dump.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        # The trainer's epoch-0 order (Trainer._train: shuffle=True, seed=config.seed, even_shards).
        train = BatchReader(store, "train", 65_536, shuffle=True, seed=train_seed, even_shards=True)
        test = BatchReader(store, "test", 65_536)
        for name, reader in (("train", train), ("test", test)):
            batches = list(reader.iter_epoch(0))
            sparse = np.concatenate([b["sparse"] for b in batches]).astype(np.int32)
            label = np.concatenate([b["label"] for b in batches]).astype(np.float32)
            np.save(dump / f"{name}_sparse.npy", sparse)
            np.save(dump / f"{name}_label.npy", label)
        meta = {
            "field_names": [f.name for f in store.schema.sparse],
            "vocab_sizes": [int(v) for v in store.schema.vocab_sizes],
            "train_rows": int(store.split("train").rows),
            "test_rows": int(store.split("test").rows),
            "train_order_seed": train_seed,
        }
        (dump / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        timings["dump_s"] = time.perf_counter() - start
    if store.schema.dense or store.schema.sequence:
        raise SystemExit("bench_models expects an all-sparse store (CriteoOptions(numeric='categorical'))")
    info = {
        "rows": rows,
        "seed": seed,
        "store": str(store_path),
        "splits": {k: v.rows for k, v in store.splits.items()},
        "total_vocab": int(store.schema.total_vocab),
        "fields": len(store.schema.sparse),
        **timings,
    }
    return store_path, dump, info


# ---------------------------------------------------------------------------------------------
# Running one contender
# ---------------------------------------------------------------------------------------------
def run_contender(args: argparse.Namespace, contender: str, model: str, train_rows: int, store: Path, dump: Path,
                  scratch: Path, repeat: int) -> dict[str, Any]:
    tag = f"{model.replace('+', 'plus')}-{contender}-{repeat}"
    spec = {
        "contender": contender,
        "model": model,
        "registry_model": REGISTRY_MODEL.get(model, model),
        "store": str(store),
        "data_dir": str(dump),
        "train_rows": train_rows,
        "batch_size": args.batch_size,
        "lr": 1e-3,
        "threads": args.threads,
        "seed": args.train_seed,
        "precision": "bf16" if "-bf16" in contender else "fp32",
        "xla": contender.endswith("-xla"),
        "hparams": {**COMMON_HPARAMS, **MODEL_HPARAMS[model],
                    **({"batch_norm": True} if contender.endswith(("-bn", "-rechub")) else {})},
        "init": "torch_default" if contender.endswith("-rechub") else "xavier_normal",
        "predictions": str(scratch / f"pred-{tag}.npy"),
        "tf_warmup": not args.no_tf_warmup,
        "fuxictr_zoo": str(args.fuxictr_zoo),
    }
    spec_path = scratch / f"spec-{tag}.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    ours = contender.startswith("ours")
    python = sys.executable if ours else str(args.peers_python)
    env = dict(os.environ)
    if ours:  # ctrkit is installed editable in .venv; the path also covers a plain checkout
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    cmd = ["timeout", str(args.timeout), python, "-u", str(PEERS_DIR / RUNNERS[contender]), "--spec", str(spec_path)]
    load = common.loadavg()
    measured = common.run_measured(cmd, env=env, cwd=REPO)
    log_path = scratch / f"log-{tag}.txt"
    log_path.write_text(measured["stdout"] + "\n--- stderr ---\n" + measured["stderr"])
    result: dict[str, Any] | None = None
    for line in measured["stdout"].splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if measured["returncode"] != 0 or result is None:
        tail = (measured["stderr"].strip().splitlines() or ["(no output)"])[-3:]
        return {"contender": contender, "model": model, "error": f"exit {measured['returncode']}: " + " | ".join(tail),
                "log": str(log_path)}
    probs = np.load(spec["predictions"])
    labels = np.load(dump / "test_label.npy").astype(np.float64)
    if len(probs) != len(labels):
        result["error"] = f"{len(probs)} test predictions for {len(labels)} rows"
    else:
        metrics = binary_metrics(labels, probs)
        result["test_auc"], result["test_logloss"] = metrics["auc"], metrics["logloss"]
    result.update(process_wall_s=measured["wall_s"], loadavg_before=load, log=str(log_path))
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def summarise(runs: list[dict[str, Any]], models: list[str], contenders: list[str]) -> list[dict[str, Any]]:
    """One row per (model, contender): median rates over repeats, first repeat's AUC, max RSS."""
    rows = []
    for model in models:
        group: dict[str, dict[str, Any]] = {}
        for contender in contenders:
            mine = [r for r in runs if r["model"] == model and r["contender"] == contender]
            ok = [r for r in mine if "error" not in r]
            if not mine:
                continue
            if not ok:
                group[contender] = {"model": model, "contender": contender, "error": mine[0]["error"]}
                continue
            group[contender] = {
                "model": model,
                "contender": contender,
                "train_rows": ok[0]["train_rows"],
                "rows_per_s": common.median(r["rows_per_s"] for r in ok),
                "best_rows_per_s": max(r["rows_per_s"] for r in ok),
                "steady_rows_per_s": _none_if_nan(common.median(r["steady_rows_per_s"] for r in ok
                                                                if r.get("steady_rows_per_s"))),
                "all_rows_per_s": [round(r["rows_per_s"], 1) for r in ok],
                "test_auc": ok[0].get("test_auc"),
                "test_logloss": ok[0].get("test_logloss"),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
                "rss_before_train_mb": ok[0].get("rss_before_train_mb"),
                "params": ok[0].get("params"),
                "library": ok[0].get("library"),
                "repeats": len(ok),
            }
        peers = [g for c, g in group.items() if c in PEERS and "error" not in g]
        best = max((g["rows_per_s"] for g in peers), default=None)
        best_of_best = max((g["best_rows_per_s"] for g in peers), default=None)
        # a peer without a step clock (DeepCTR-TF) counts with its epoch rate
        best_steady = max((g["steady_rows_per_s"] if g["steady_rows_per_s"] is not None else g["rows_per_s"]
                           for g in peers), default=None)
        best_auc = max((g["test_auc"] for g in peers if g.get("test_auc") is not None), default=None)
        for g in group.values():
            if "error" in g:
                continue
            g["ratio_to_fastest_peer"] = g["rows_per_s"] / best if best else None
            g["best_ratio_to_fastest_peer"] = g["best_rows_per_s"] / best_of_best if best_of_best else None
            steady = g["steady_rows_per_s"]
            g["steady_ratio_to_fastest_peer"] = steady / best_steady if best_steady and steady is not None else None
            g["auc_minus_best_peer"] = g["test_auc"] - best_auc if best_auc is not None and g.get("test_auc") else None
        rows.extend(group.values())
    return rows


def _none_if_nan(value: float | None) -> float | None:
    return None if value is None or value != value else value


def format_report(summary: list[dict[str, Any]]) -> str:
    """Rates are medians over repeats; ``best`` is each contender's fastest repeat (the least
    disturbed one on a shared machine) and ``best ratio`` compares best with best."""
    headers = ["model", "contender", "train rows", "rows/s", "ratio", "best rows/s", "best ratio", "steady rows/s",
               "test AUC", "logloss", "peak RSS MB"]

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    table = []
    for g in summary:
        if "error" in g:
            table.append([g["model"], g["contender"], "-", "error"] + ["-"] * (len(headers) - 4))
            continue
        table.append([
            g["model"], g["contender"], common.format_count(g["train_rows"]), common.format_count(g["rows_per_s"]),
            ratio(g.get("ratio_to_fastest_peer")), common.format_count(g["best_rows_per_s"]),
            ratio(g.get("best_ratio_to_fastest_peer")), common.format_count(g["steady_rows_per_s"]),
            "-" if g.get("test_auc") is None else f"{g['test_auc']:.5f}",
            "-" if g.get("test_logloss") is None else f"{g['test_logloss']:.5f}",
            common.format_count(g["peak_rss_mb"]),
        ])
    text = common.format_table(headers, table, align="llrrrrrrrrr")
    errors = [f"  {g['model']} / {g['contender']}: {g['error']}" for g in summary if "error" in g]
    return text + ("\nerrors:\n" + "\n".join(errors) if errors else "")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_caps(text: str | None) -> dict[str, int]:
    caps = dict(DEFAULT_ROW_CAPS)
    if text:
        for item in text.split(","):
            if not item.strip():
                continue
            name, _, value = item.partition("=")
            caps[name.strip()] = int(value) if value.strip() not in ("", "0", "none") else 0
    return {k: v for k, v in caps.items() if v}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated, of {', '.join(MODELS)} (default {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated, of {', '.join(CONTENDERS + EXTRA_CONTENDERS)} "
                             f"(default: all but {', '.join(EXTRA_CONTENDERS)})")
    parser.add_argument("--rows", type=int, default=500_000, help="synthetic rows before the 8:1:1 split (default 500,000)")
    parser.add_argument("--row-caps", default=None,
                        help="MODEL=N,...: train on the first N train rows only, for every contender of MODEL "
                             f"(default {','.join(f'{k}={v}' for k, v in DEFAULT_ROW_CAPS.items())}; MODEL=0 lifts a cap)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every contender (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per (model, contender), interleaved; median rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic rows")
    parser.add_argument("--train-seed", type=int, default=2018, help="seed of the training order and the models")
    parser.add_argument("--skip-peers", action="store_true", help="run only ours (torch and TF)")
    parser.add_argument("--peers-python", type=Path, default=DEFAULT_PEERS_PYTHON)
    parser.add_argument("--fuxictr-zoo", type=Path, default=DEFAULT_FUXICTR_ZOO,
                        help="model_zoo folder of a FuxiCTR checkout (default: the one make bench-peers makes)")
    parser.add_argument("--no-tf-warmup", action="store_true",
                        help="time DeepCTR-TF's first fit, graph tracing included (default: trace on two batches, "
                             "restore the initial weights and optimiser state, then time the epoch)")
    parser.add_argument("--exclude", default="",
                        help="MODEL:CONTENDER,...: pairs not to run (e.g. a peer too slow for the time at hand)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per contender run")
    parser.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR / "models")
    parser.add_argument("--json", type=Path, default=common.DEFAULT_WORKDIR / "models.json")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (< 2 min): 60k rows, 3 batches of 4096, models deepfm,xdeepfm unless --models")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = 60_000
        args.row_caps = args.row_caps or ",".join(f"{m}=12288" for m in MODELS)
        if not any(a == "--models" or a.startswith("--models=") for a in (argv if argv is not None else sys.argv[1:])):
            args.models = "deepfm,xdeepfm"
    return args


def run_line(model: str, contender: str, result: dict[str, Any], model_width: int = 9) -> str:
    """One contender run as the progress line the benchmarks print."""
    if "error" in result:
        return f"  {model:{model_width}s} {contender:14s} ERROR {result['error']}  (log {result['log']})"
    steady = result.get("steady_rows_per_s")
    return (f"  {model:{model_width}s} {contender:14s} {result['rows_per_s']:>9,.0f} rows/s "
            f"(steady {steady or float('nan'):>9,.0f})  auc {result.get('test_auc', float('nan')):.5f}  "
            f"peak RSS {result['peak_rss_mb']:,.0f} MB  load {result['loadavg_before'][0]:.1f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    contenders = [c.strip().lower() for c in args.contenders.split(",") if c.strip()]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"--models: unknown model {m!r} (known: {', '.join(MODELS)})")
    for c in contenders:
        if c not in CONTENDERS + EXTRA_CONTENDERS:
            raise SystemExit(f"--contenders: unknown contender {c!r} (known: {', '.join(CONTENDERS + EXTRA_CONTENDERS)})")
    if args.skip_peers:
        contenders = [c for c in contenders if c not in PEERS]
    if any(c in PEERS for c in contenders) and not args.peers_python.exists():
        raise SystemExit(f"no peers' python at {args.peers_python}; use --skip-peers or --peers-python")
    caps = parse_caps(args.row_caps)
    excluded = {tuple(item.strip().lower().split(":", 1)) for item in args.exclude.split(",") if ":" in item}
    info = common.machine_info()
    print(common.describe_machine(info), flush=True)

    store, dump, data_info = prepare_data(args.workdir, args.rows, args.seed, args.train_seed)
    full_train = data_info["splits"]["train"]
    print(f"data: {args.rows:,} synthetic rows -> {data_info['splits']} (vocabulary {data_info['total_vocab']:,}, "
          f"{data_info['fields']} sparse fields) in {store}", flush=True)
    scratch = common.make_scratch(args.workdir, "run-")

    plan = []
    for index, model in enumerate(models):
        train_rows = min(full_train, caps.get(model, full_train))
        if train_rows < full_train:
            train_rows = max(args.batch_size, train_rows // args.batch_size * args.batch_size)
        mine = [c for c in contenders if (c, model) not in MISSING and (model, c) not in excluded]
        plan.append((model, train_rows, mine, index))
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for repeat in range(args.repeats):
        for model, train_rows, mine, index in plan:
            for contender in common.rotated(mine, index + repeat):
                result = run_contender(args, contender, model, train_rows, store, dump, scratch, repeat)
                runs.append(result)
                print(run_line(model, contender, result), flush=True)

    summary = summarise(runs, models, contenders)
    report = format_report(summary)
    print()
    print(report)
    capped = {m: r for m, r, _, _ in plan if r < full_train}
    if capped:
        print("capped (every contender trains on the same first rows of the trainer's order): "
              + ", ".join(f"{m} {r:,} of {full_train:,} train rows" for m, r in capped.items()))
    payload = {
        "benchmark": "models",
        "machine": info,
        "loadavg_at_end": common.loadavg(),
        "data": data_info,
        "settings": {
            "batch_size": args.batch_size, "threads": args.threads, "lr": 1e-3, "optimizer": "Adam", "epochs": 1,
            "common_hparams": COMMON_HPARAMS, "model_hparams": MODEL_HPARAMS, "row_caps": caps,
            "repeats": args.repeats, "train_seed": args.train_seed, "excluded": sorted(":".join(p) for p in excluded),
        },
        "summary": summary,
        "runs": runs,
        "wall_seconds": time.perf_counter() - started,
        "scratch": str(scratch),
    }
    path = common.write_json(args.json, payload)
    print(f"\nwrote {path}  (logs and predictions in {scratch})")
    return 0 if all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
