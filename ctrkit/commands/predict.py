"""``ctrkit predict CKPT RAW --out SCORES [--id COLUMN] [--data STORE]``: click probabilities of raw rows.

The raw rows (any dataset: the file layout the store was built from, labeled or not) are encoded
with the encoder the model was trained with, so that ids match: the ``encoder.npz`` of the
checkpoint's run directory (written there by training), or the encoder stored in ``--data``
(which wins when given; its schema must be the model's).

Input: a text file (CSV/TSV as the store's), the same gzip-compressed (recognised by its magic
bytes, whatever its name), ``-`` for stdin (text or gzip, streamed: memory stays bounded by one
block), or a Parquet file. Output (:data:`OUTPUT_HELP`): one probability per input data line, in
input order; with ``--id COLUMN`` a CSV with a header ``COLUMN,probability``. A regular file
appears atomically (written to a temporary file, then renamed); ``-`` (stdout, the summary then
goes to stderr), a device or a FIFO is written in place, streaming
(:func:`ctrkit.fileio.atomic_output`). An ``--out`` that is one of the inputs is refused before
anything is read.

Malformed rows are skipped and reported on stderr (how many, the first few as
``file:line field: reason``); ``--strict`` stops at the first. A skipped row is scored ``nan``
(the lines stay aligned with the input), or, with ``--id``, left out. When far more values are
out of vocabulary than in the training data (:func:`ctrkit.data.encoder.oov_shift_warning`), a
warning on stderr names the features that moved most.

Parsing and encoding run in a background thread one block ahead of the model, so ``--threads 0``
(the default) gives the model all cores but one (on 2 cores: torch's default 2 threads made the
model and the reader compete, 35k rows/s for DeepFM against 45k with 1; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
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

OUTPUT_HELP = ("output file (- for stdout): one probability per input data line, in input order, 'nan' for a "
               "malformed row that was skipped; with --id, a CSV with the header 'COLUMN,probability' and one "
               "row per scored input row (skipped rows left out)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="click probabilities for raw rows",
        description="Score the rows of a raw file (any dataset a store was built from; labeled or not) with a "
                    "checkpoint. RAW may be CSV/TSV text, gzip-compressed text (detected by its content), "
                    "- for stdin (text or gzip), or Parquet. Malformed rows are skipped and reported on stderr "
                    "(--strict: stop at the first); a warning says when far more values are out of vocabulary "
                    "than in the training data.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint, model_save_dir (uses best.pt / best.tf), or a bundle of `ctrkit export`")
    parser.add_argument("raw", metavar="RAW",
                        help="raw rows to score, in the layout the training store was built from "
                             "(text, gzip, Parquet, or - for stdin)")
    parser.add_argument("--out", required=True, metavar="SCORES", help=OUTPUT_HELP)
    parser.add_argument("--id", metavar="COLUMN", dest="id_column",
                        help="a raw column copied to the output next to each probability (the output is then a "
                             "CSV with the header 'COLUMN,probability')")
    parser.add_argument("--data", metavar="STORE",
                        help="the store the model was trained on, whose encoder encodes the rows "
                             "[default: the encoder.npz of the checkpoint's run directory]")
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed row instead of skipping it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    add_inference_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrkit.data.rawtext import STDIN
    from ctrkit.errors import InputError
    from ctrkit.fileio import check_output_path

    overrides = inference_overrides(args)
    if overrides["threads"] == 0:  # the reading thread runs beside the model: leave it a core
        overrides["threads"] = max(1, (os.cpu_count() or 1) - 1)
    inputs = inference_inputs(SimpleNamespace(checkpoint=args.checkpoint, data=args.data or args.checkpoint, raw=args.raw))
    check_output_path(args.out, inputs=inputs)  # before anything is read or written
    if args.raw != STDIN and not Path(args.raw).exists():
        raise InputError(f"no such file: {args.raw}")
    if _is_bundle(args.checkpoint):
        trainer, encoder = _bundle(args, overrides)
    else:
        trainer = load_trainer(args.checkpoint, overrides)  # a broken checkpoint is named first
        encoder, schema_source = _encoder(args)
        trainer.check_schema(schema_source)
    result = score_file(trainer, encoder, args.raw, args.out, batch_rows=overrides["eval_batch_size"],
                        id_column=args.id_column, strict=args.strict, progress=False if args.quiet else None,
                        inputs=inputs)
    for line in result.notes():
        print(f"ctrkit predict: {line}", file=sys.stderr)
    print(result.summary(output_name(args.out)), file=summary_stream(args.out))
    return 0


def _is_bundle(path: str) -> bool:
    from ctrkit.export.manifest import is_bundle

    return is_bundle(path)


class BundleScorer:
    """A bundle of ``ctrkit export`` behind the trainers' ``predict(batches)``, for :func:`score_file`."""

    def __init__(self, model):
        self.model = model

    def predict(self, batches):
        import numpy as np

        parts = [self.model.predict_batch(batch) for batch in batches]
        return np.concatenate(parts) if parts else np.zeros(0)


def _bundle(args: argparse.Namespace, overrides: dict):
    """``(scorer, encoder)`` of an export bundle: its artifact, by its runtime, and its own encoder."""
    from ctrkit.export import load_bundle
    from ctrkit.export.loaded import refuse_options

    refuse_options(args.checkpoint, [flag for flag, value in (("--data", args.data), ("--gpu_ids", overrides["gpu_ids"]))
                                     if value])
    model = load_bundle(args.checkpoint, batch_size=overrides["eval_batch_size"], threads=overrides["threads"])
    return BundleScorer(model), model.encoder


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


class ScoringResult(SimpleNamespace):
    """What :func:`score_file` did: ``rows`` scored, ``lines`` read, ``seconds``, ``bad_rows``
    (:class:`~ctrkit.data.rawtext.BadRows`), ``oov`` (:class:`~ctrkit.data.encoder.OovCounter`),
    ``oov_warning`` (str or None), ``with_ids``."""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")

    def summary(self, out_name: str) -> str:
        return f"wrote {self.rows:,} probabilities to {out_name} in {self.seconds:.1f} s ({self.rate:,.0f} rows/s)"

    def notes(self) -> list[str]:
        """Lines for stderr: the skipped rows and the out-of-vocabulary warning."""
        lines = []
        if self.bad_rows.count:
            where = "left out of the output" if self.with_ids else "scored nan in the output"
            lines.append(f"{self.bad_rows.describe()}; they are {where} (--strict stops at the first)")
        if self.oov_warning:
            lines.append(f"warning: {self.oov_warning}")
        return lines


def score_file(trainer, encoder, raw: str, out: str, *, batch_rows: int = 8192, id_column: str | None = None,
               strict: bool = False, progress: bool | None = None, inputs=(), block_bytes: int | None = None) -> ScoringResult:
    """Stream the rows of ``raw`` through ``trainer`` into ``out`` (atomically where it is a regular file).

    ``progress=None`` shows a bar on stderr only when it is a terminal. See the module docstring for
    the formats.
    """
    from tqdm import tqdm

    from ctrkit.data.encoder import OovCounter, oov_shift_warning
    from ctrkit.data.pipeline import DEFAULT_BLOCK_BYTES, batch_slices, encoded_blocks, open_source
    from ctrkit.data.rawtext import BadRows
    from ctrkit.fileio import atomic_output

    started = time.perf_counter()
    bad_rows = BadRows()
    passthrough = (id_column,) if id_column else ()
    source = open_source(raw, encoder.spec, bad_rows, strict, streams=True, passthrough=passthrough)
    oov = OovCounter(encoder.spec)
    rows = lines = 0
    disable = None if progress is None else not progress
    with atomic_output(out, "w", inputs=inputs) as handle, \
            tqdm(total=source.size, unit="B", unit_scale=True, desc="predict", disable=disable, file=sys.stderr) as bar:
        if id_column:
            handle.write(_csv_row([id_column, "probability"]))
        for block_lines, size, parsed, batch in encoded_blocks(source, encoder, block_bytes or DEFAULT_BLOCK_BYTES):
            oov.update(batch["sparse"])
            ids = parsed.passthrough[id_column] if id_column else None
            done = 0  # lines of the block written so far
            for start in range(0, max(parsed.rows, 1), batch_rows):  # written batch by batch: a closed pipe is seen early
                stop = min(start + batch_rows, parsed.rows)
                probs = trainer.predict(batch_slices(batch, batch_rows, start, stop)) if stop > start else []
                if id_column:
                    handle.write(_id_lines(ids[start:stop], probs))
                    continue
                end = block_lines if stop == parsed.rows else int(parsed.line_index[stop])  # up to the next scored row
                handle.write(_aligned_lines(end - done, parsed.line_index[start:stop] - done, probs))
                done = end
            rows += parsed.rows
            lines += block_lines
            bar.update(size)
            bar.set_postfix_str(f"{rows:,} rows", refresh=False)
    return ScoringResult(rows=rows, lines=lines, seconds=time.perf_counter() - started, bad_rows=bad_rows, oov=oov,
                         oov_warning=oov_shift_warning(encoder.train_oov, oov), with_ids=bool(id_column))


def _aligned_lines(lines: int, kept, probs) -> str:
    """One probability per input line of a stretch of ``lines`` lines, whose scored rows are at
    positions ``kept``; ``nan`` where a row was skipped."""
    import numpy as np

    if len(kept) != lines:
        scores = np.full(lines, np.nan)
        scores[kept] = probs
        probs = scores
    return _probability_text(probs).str.join("\n").item() + "\n" if lines else ""


def _id_lines(ids, probs) -> str:
    """CSV rows ``id,probability`` (ids quoted where they hold a comma, a quote or a line break)."""
    import polars as pl

    if not len(ids):
        return ""
    return pl.DataFrame({"id": ids, "p": _probability_text(probs)}).write_csv(include_header=False)


def _probability_text(probs):
    """Probabilities as text (a polars String Series): the shortest decimal that reads back as the
    same float32 (the models compute in float32), ``nan`` for a skipped row. Vectorised: Python's
    ``f"{p:.8g}"`` costs seconds per million rows."""
    import numpy as np
    import polars as pl

    return pl.Series(np.asarray(probs, dtype=np.float32)).fill_nan(None).cast(pl.String).fill_null("nan")


def _csv_row(values: list[str]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()
