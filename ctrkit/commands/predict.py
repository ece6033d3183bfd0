"""``ctrkit predict CKPT RAW.tsv --data STORE --out scores.tsv``: click probabilities of raw rows.

The raw rows (Criteo TSV, 40 fields with a label or 39 without) are encoded with the store's
vocabularies, so that ids match the ones the model was trained on. The output has one probability
per input row, in input order. A regular file appears atomically (written to a temporary file, then
renamed); ``-`` (stdout, the summary then goes to stderr), a device or a FIFO is written in place,
streaming (:func:`ctrkit.fileio.atomic_output`). An ``--out`` that is one of the inputs is refused
before anything is read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctrkit.commands.evaluate import (
    add_inference_arguments,
    inference_inputs,
    inference_overrides,
    load_trainer,
    open_store,
    output_name,
    summary_stream,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="click probabilities for a raw Criteo file",
        description="Score the rows of a raw Criteo TSV file (labeled or not) with a checkpoint.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint, or model_save_dir (uses best.pt / best.tf)")
    parser.add_argument("raw", metavar="RAW.tsv", help="raw rows to score")
    parser.add_argument("--out", required=True, metavar="SCORES.tsv",
                        help="output: one probability per line (- for stdout)")
    parser.add_argument("--data", required=True, metavar="STORE",
                        help="the store the model was trained on (its vocabularies encode the rows)")
    add_inference_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrkit.errors import InputError
    from ctrkit.fileio import check_output_path

    overrides = inference_overrides(args)
    inputs = inference_inputs(args)
    check_output_path(args.out, inputs=inputs)  # before anything is read or written
    if not Path(args.raw).is_file():
        raise InputError(f"no such file: {args.raw}")
    store = open_store(args.data)
    trainer = load_trainer(args.checkpoint, overrides)
    trainer.check_schema(store)
    rows = _write_scores(trainer, store, args.raw, args.out, overrides["eval_batch_size"], inputs)
    print(f"wrote {rows} probabilities to {output_name(args.out)}", file=summary_stream(args.out))
    return 0


def _write_scores(trainer, store, raw: str, out: str, batch_rows: int, inputs: list[Path]) -> int:
    """Stream raw batches through the model into ``out`` (atomically where it is a regular file)."""
    from ctrkit.data.criteo import iter_raw_batches
    from ctrkit.fileio import atomic_output

    rows = 0
    with atomic_output(out, "w", inputs=inputs) as handle:
        for batch in iter_raw_batches(raw, store, batch_rows=batch_rows):
            probs = trainer.predict([batch])
            handle.write("".join(f"{p:.8g}\n" for p in probs))
            rows += len(probs)
    return rows
