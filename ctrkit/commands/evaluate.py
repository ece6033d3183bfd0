"""``ctrkit evaluate CKPT... [--data STORE]``: AUC, gAUC and logloss of checkpoints on one split, as one table.

Each checkpoint (a ``best.pt``/``best.tf`` file, or a run directory) is evaluated on ``--data``, or
without it on the store it was trained on (the ``data`` of its training options), so runs on
different stores can be compared in one call. ``--out`` writes the metrics as JSON: a dict for one
checkpoint, a list of dicts for several.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

#: The table's columns: (heading, key of a result, format of a number).
TABLE_COLUMNS = (("model", "model", ""), ("framework", "framework", ""), ("checkpoint", "checkpoint", ""),
                 ("split", "split", ""), ("auc", "auc", ".6f"), ("gauc", "gauc", ".6f"),
                 ("logloss", "logloss", ".6f"), ("rows", "rows", ","))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="metrics of checkpoints on a split of a store",
        description="Evaluate checkpoints (PyTorch or TensorFlow; a checkpoint, or a model_save_dir holding "
                    "best.pt or best.tf) on a store split and print one table. Without --data, each checkpoint "
                    "is evaluated on the store it was trained on.",
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT",
                        help="checkpoints, or model_save_dirs (uses best.pt / best.tf), e.g. runs/*")
    parser.add_argument("--data", metavar="STORE",
                        help="store built by `ctrkit preprocess` [default: the store each checkpoint was trained on]")
    parser.add_argument("--split", default="test", help="split to evaluate [default: test]")
    parser.add_argument("--out", metavar="JSON",
                        help="also write the metrics to this JSON file (- for stdout): a dict for one checkpoint, "
                             "a list for several")
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


def checkpoint_files(checkpoint: str | Path) -> list[Path]:
    """A checkpoint and, for a run directory, the best checkpoints in it: what ``--out`` must not be."""
    from ctrkit.training.rundir import CHECKPOINT_NAMES

    checkpoint = Path(checkpoint)
    return [checkpoint, *(checkpoint / names["best"] for names in CHECKPOINT_NAMES.values())]


def store_files(store: str | Path) -> list[Path]:
    """The files of a store, which an ``--out`` must not replace."""
    return [Path(store) / "data.mdb", Path(store) / "lock.mdb"]


def inference_inputs(args: argparse.Namespace) -> list[Path]:
    """The files ``predict`` reads (``args.checkpoint``, ``args.data``, ``args.raw``): ``--out`` must be none of them."""
    raw = getattr(args, "raw", None)
    return checkpoint_files(args.checkpoint) + store_files(args.data) + ([Path(raw)] if raw else [])


def summary_stream(out: str | None):
    """Where a command's summary goes: stderr when its output itself is stdout (``-``)."""
    from ctrkit.fileio import STDOUT

    return sys.stderr if out == STDOUT else sys.stdout


def output_name(out: str) -> str:
    """``out`` as the summary names it."""
    from ctrkit.fileio import STDOUT

    return "stdout" if out == STDOUT else str(out)


def recorded_store(trainer: Any, checkpoint: str | Path):
    """The store ``checkpoint`` was trained on (its training options' ``data``), opened; one line
    naming the checkpoint and the store, ending with ``give --data``, when it is gone or broken."""
    from ctrkit.data.store import Store
    from ctrkit.errors import StoreError

    recorded = getattr(trainer.config, "data", "")
    if not recorded:
        raise StoreError(f"{checkpoint}: its training options record no store; give --data")
    if not Path(recorded).exists():
        raise StoreError(f"{checkpoint} was trained on {recorded}, which no longer exists; give --data")
    try:
        return Store(recorded)
    except StoreError as exc:
        raise StoreError(f"{checkpoint} was trained on {recorded}: {exc}; give --data") from None


def check_split(store: Any, split: str) -> None:
    from ctrkit.errors import StoreError

    if split not in store.splits:
        raise StoreError(f"--split {split}: store {store.path} has splits {', '.join(sorted(store.splits))}")


class Stores:
    """The stores of one ``evaluate`` call: ``--data``, or each checkpoint's own, each opened once."""

    def __init__(self, data: str | None, split: str):
        self.split = split
        self.shared = open_store(data) if data else None
        if self.shared is not None:
            check_split(self.shared, split)
        self.opened: dict[Path, Any] = {}

    def for_checkpoint(self, trainer: Any, checkpoint: str) -> Any:
        if self.shared is not None:
            return self.shared
        key = Path(getattr(trainer.config, "data", "") or ".").resolve()
        if key not in self.opened:
            store = recorded_store(trainer, checkpoint)
            check_split(store, self.split)
            self.opened[key] = store
        return self.opened[key]


def evaluate_checkpoint(checkpoint: str, stores: Stores, overrides: dict, out: str | None) -> dict[str, Any]:
    """One checkpoint's metrics on its store (``--out`` checked against that store first)."""
    from ctrkit.fileio import check_output_path

    trainer = load_trainer(checkpoint, overrides)
    store = stores.for_checkpoint(trainer, checkpoint)
    if out:  # the recorded store is known only now; still before any evaluation of it
        check_output_path(out, inputs=store_files(store.path))
    metrics = trainer.evaluate(store, stores.split)
    metrics.update(checkpoint=str(checkpoint), model=trainer.config.model, framework=trainer.config.framework,
                   data=str(store.path))
    return metrics


def format_table(results: list[dict[str, Any]]) -> str:
    """The results as aligned text columns (``gauc`` only when some result has it; ``-`` where missing)."""
    columns = [c for c in TABLE_COLUMNS if c[1] != "gauc" or any("gauc" in r for r in results)]

    def cell(result: dict[str, Any], key: str, number: str) -> str:
        value = result.get(key)
        if value is None:
            return "-"
        return format(value, number) if number else str(value)

    grid = [[heading for heading, _, _ in columns]]
    grid += [[cell(r, key, number) for _, key, number in columns] for r in results]
    widths = [max(len(row[i]) for row in grid) for i in range(len(columns))]
    numeric = [bool(number) for _, _, number in columns]
    lines = ["  ".join(text.rjust(w) if right else text.ljust(w) for text, w, right in zip(row, widths, numeric))
             for row in grid]
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    from ctrkit.fileio import check_output_path, write_json_atomic

    overrides = inference_overrides(args)
    checkpoints = [str(c) for c in args.checkpoints]
    inputs = [path for c in checkpoints for path in checkpoint_files(c)] + (store_files(args.data) if args.data else [])
    if args.out:  # before anything is read: a bad --out must not cost an evaluation
        check_output_path(args.out, inputs=inputs)
    stores = Stores(args.data, args.split)
    results = [evaluate_checkpoint(c, stores, overrides, args.out) for c in checkpoints]
    print(format_table(results), file=summary_stream(args.out))
    if args.out:
        inputs += [f for store in {r["data"] for r in results} for f in store_files(store)]
        write_json_atomic(args.out, results[0] if len(results) == 1 else results, inputs=inputs)
    return 0
