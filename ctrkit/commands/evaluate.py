"""``ctrkit evaluate CKPT --data STORE``: AUC and logloss of a checkpoint on one split."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="metrics of a checkpoint on a split of a store",
        description="Evaluate a checkpoint (PyTorch or TensorFlow; a checkpoint, or a model_save_dir holding "
                    "best.pt or best.tf) on a store split.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint, or model_save_dir (uses best.pt / best.tf)")
    parser.add_argument("--data", required=True, metavar="STORE", help="store built by `ctrkit preprocess`")
    parser.add_argument("--split", default="test", help="split to evaluate [default: test]")
    parser.add_argument("--out", metavar="JSON", help="also write the metrics to this JSON file (- for stdout)")
    add_inference_arguments(parser)
    parser.set_defaults(func=run)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``evaluate`` and ``predict``."""
    parser.add_argument("--batch_size", default="8192", help="rows per batch [default: 8192]")
    parser.add_argument("--gpu_ids", default="", help='one GPU to run on, e.g. "0" [default: CPU]')
    parser.add_argument("--num_workers", default="0", help="DataLoader worker processes [default: 0]")
    parser.add_argument("--threads", default="0", help="intra-op threads of the framework (0: its default)")


def inference_overrides(args: argparse.Namespace) -> dict:
    """Validated training-option overrides for inference (one device, one process)."""
    from ctrkit.config import parse_gpu_ids, parse_int
    from ctrkit.errors import ConfigError

    gpu_ids = parse_gpu_ids(args.gpu_ids)
    if len(gpu_ids) > 1:
        raise ConfigError(f"--gpu_ids {args.gpu_ids}: inference runs on one GPU; give one id")
    return {
        "gpu_ids": gpu_ids,
        "eval_batch_size": parse_int("batch_size", args.batch_size, minimum=1),
        "num_workers": parse_int("num_workers", args.num_workers, minimum=0),
        "threads": parse_int("threads", args.threads, minimum=0),
    }


def open_store(path: str):
    """The store named by ``--data``; its errors name the flag."""
    from ctrkit.data.store import Store
    from ctrkit.errors import StoreError

    try:
        return Store(path)
    except StoreError as exc:
        raise StoreError(f"--data: {exc}") from None


def load_trainer(checkpoint: str, overrides: dict):
    """The trainer of the checkpoint, in its framework (PyTorch or TensorFlow), on the device asked for."""
    from ctrkit.training.frameworks import load_for_inference

    return load_for_inference(checkpoint, **overrides)


def inference_inputs(args: argparse.Namespace) -> list[Path]:
    """The files ``evaluate``/``predict`` read: ``--out`` must be none of them."""
    from ctrkit.training.rundir import CHECKPOINT_NAMES

    checkpoint, store = Path(args.checkpoint), Path(args.data)
    bests = [checkpoint / names["best"] for names in CHECKPOINT_NAMES.values()]
    inputs = [checkpoint, *bests, store / "data.mdb", store / "lock.mdb"]
    raw = getattr(args, "raw", None)
    return inputs + ([Path(raw)] if raw else [])


def summary_stream(out: str | None):
    """Where a command's summary goes: stderr when its output itself is stdout (``-``)."""
    from ctrkit.fileio import STDOUT

    return sys.stderr if out == STDOUT else sys.stdout


def output_name(out: str) -> str:
    """``out`` as the summary names it."""
    from ctrkit.fileio import STDOUT

    return "stdout" if out == STDOUT else str(out)


def run(args: argparse.Namespace) -> int:
    from ctrkit.errors import StoreError
    from ctrkit.fileio import check_output_path, write_json_atomic

    overrides = inference_overrides(args)
    inputs = inference_inputs(args)
    if args.out:  # before anything is read: a bad --out must not cost an evaluation
        check_output_path(args.out, inputs=inputs)
    store = open_store(args.data)
    if args.split not in store.splits:
        raise StoreError(f"--split {args.split}: store {store.path} has splits {', '.join(sorted(store.splits))}")
    trainer = load_trainer(args.checkpoint, overrides)
    metrics = trainer.evaluate(store, args.split)
    metrics["checkpoint"] = str(args.checkpoint)
    gauc = f"  gauc {metrics['gauc']:.6f}" if "gauc" in metrics else ""  # the rows carry group ids
    print(f"{args.split}: auc {metrics['auc']:.6f}  logloss {metrics['logloss']:.6f}{gauc}  rows {metrics['rows']}",
          file=summary_stream(args.out))
    if args.out:
        write_json_atomic(args.out, metrics, inputs=inputs)
    return 0
