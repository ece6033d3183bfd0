"""``ctrkit predict CKPT RAW --out scores.csv [--data STORE]``: click probabilities of raw rows.

The raw rows (any dataset: the file layout the store was built from, labeled or not) are encoded
with the encoder the model was trained with, so that ids match: the ``encoder.npz`` of the
checkpoint's run directory (written there by training), or the encoder stored in ``--data``
(which wins when given; its schema must be the model's). The output has one probability per input
row, in input order. A regular file appears atomically (written to a temporary file, then renamed);
``-`` (stdout, the summary then goes to stderr), a device or a FIFO is written in place, streaming
(:func:`ctrkit.fileio.atomic_output`). An ``--out`` that is one of the inputs is refused before
anything is read.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

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
        help="click probabilities for raw rows",
        description="Score the rows of a raw file (any dataset a store was built from; labeled or not) with a checkpoint.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint, or model_save_dir (uses best.pt / best.tf)")
    parser.add_argument("raw", metavar="RAW", help="raw rows to score, in the layout the training store was built from")
    parser.add_argument("--out", required=True, metavar="SCORES", help="output: one probability per line (- for stdout)")
    parser.add_argument("--data", metavar="STORE",
                        help="the store the model was trained on, whose encoder encodes the rows "
                             "[default: the encoder.npz of the checkpoint's run directory]")
    add_inference_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrkit.errors import InputError
    from ctrkit.fileio import check_output_path

    overrides = inference_overrides(args)
    inputs = inference_inputs(SimpleNamespace(checkpoint=args.checkpoint, data=args.data or args.checkpoint, raw=args.raw))
    check_output_path(args.out, inputs=inputs)  # before anything is read or written
    if not Path(args.raw).is_file():
        raise InputError(f"no such file: {args.raw}")
    trainer = load_trainer(args.checkpoint, overrides)  # a broken checkpoint is named first
    encoder, schema_source = _encoder(args)
    trainer.check_schema(schema_source)
    rows = _write_scores(trainer, encoder, args.raw, args.out, overrides["eval_batch_size"], inputs)
    print(f"wrote {rows} probabilities to {output_name(args.out)}", file=summary_stream(args.out))
    return 0


def _encoder(args: argparse.Namespace):
    """``(encoder, what check_schema compares)`` from ``--data`` or the checkpoint's run directory."""
    from ctrkit.data.encoder import ENCODER_FILE, load_encoder, run_dir_encoder
    from ctrkit.errors import InputError

    if args.data:
        store = open_store(args.data)
        return load_encoder(store), store
    found = run_dir_encoder(args.checkpoint)
    if found is None:
        raise InputError(f"{args.checkpoint}: no {ENCODER_FILE} in its run directory (trained before encoders were "
                         "saved there?); give --data STORE, the store it was trained on")
    encoder = load_encoder(found)
    return encoder, SimpleNamespace(schema=encoder.schema, path=found)


def _write_scores(trainer, encoder, raw: str, out: str, batch_rows: int, inputs: list[Path]) -> int:
    """Stream raw batches through the model into ``out`` (atomically where it is a regular file)."""
    from ctrkit.data.pipeline import iter_raw_batches
    from ctrkit.fileio import atomic_output

    rows = 0
    with atomic_output(out, "w", inputs=inputs) as handle:
        for batch in iter_raw_batches(raw, encoder, batch_rows=batch_rows):
            probs = trainer.predict([batch])
            handle.write("".join(f"{p:.8g}\n" for p in probs))
            rows += len(probs)
    return rows
