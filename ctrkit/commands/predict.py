"""``ctrkit predict CKPT RAW.tsv --data STORE --out scores.tsv``: click probabilities of raw rows.

The raw rows (Criteo TSV, 40 fields with a label or 39 without) are encoded with the store's
vocabularies, so that ids match the ones the model was trained on. The output has one probability
per input row, in input order, and appears atomically (written to a temporary file, then renamed).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ctrkit.commands.evaluate import add_inference_arguments, inference_overrides, load_trainer, open_store


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="click probabilities for a raw Criteo file",
        description="Score the rows of a raw Criteo TSV file (labeled or not) with a checkpoint.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint file or model_save_dir (uses best.pt)")
    parser.add_argument("raw", metavar="RAW.tsv", help="raw rows to score")
    parser.add_argument("--out", required=True, metavar="SCORES.tsv", help="output: one probability per line")
    parser.add_argument("--data", required=True, metavar="STORE",
                        help="the store the model was trained on (its vocabularies encode the rows)")
    add_inference_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrkit.errors import ConfigError, InputError

    overrides = inference_overrides(args)
    if not Path(args.raw).is_file():
        raise InputError(f"no such file: {args.raw}")
    out = Path(args.out)
    if not out.resolve().parent.is_dir():
        raise ConfigError(f"--out {args.out}: directory {out.parent} does not exist")
    store = open_store(args.data)
    trainer = load_trainer(args.checkpoint, overrides)
    trainer._check_schema(store)
    rows = _write_scores(trainer, store, args.raw, out, overrides["eval_batch_size"])
    print(f"wrote {rows} probabilities to {out}")
    return 0


def _write_scores(trainer, store, raw: str, out: Path, batch_rows: int) -> int:
    """Stream raw batches through the model into a temporary file, then rename it to ``out``."""
    from ctrkit.data.criteo import iter_raw_batches

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    rows = 0
    try:
        with open(tmp, "w") as handle:
            for batch in iter_raw_batches(raw, store, batch_rows=batch_rows):
                probs = trainer.predict([batch])
                handle.write("".join(f"{p:.8g}\n" for p in probs))
                rows += len(probs)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows
