"""The generic preprocessing pipeline: raw files + a dataset spec → LMDB store.

read → validate → tokens → train-only vocabularies → encode → store, in two passes with memory
bounded by the vocabularies, not the rows:

* pass 1 reads each file in blocks (:mod:`ctrkit.data.readers`: delimited text or Parquet),
  validates and converts every block to int64 tokens, dense values and sequences
  (:mod:`ctrkit.data.tokens`), assigns each row its split, writes the block to a temporary spill
  file beside the output and counts the train split's tokens (sequence items count towards the
  feature they share a vocabulary with);
* pass 2 maps the spilled tokens to ids with the final vocabularies
  (:class:`~ctrkit.data.encoder.Encoder`) and writes chunks to the store, whose ``__meta__``
  holds the encoder (the spec), so that raw rows can be encoded later for prediction.

Splits: ``random`` (one uniform draw per data line, in file order, with the spec's ratios and
seed), ``time`` (rows at or after ``test_from`` are test, at or after ``valid_from`` valid) or
``files`` (all raw rows are train). A split given as its own file (``valid=``/``test=``) is never
drawn from the raw files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import polars as pl
from tqdm import tqdm

from ctrkit.data import tokens as tk
from ctrkit.data.encoder import (
    OOV_RECORD_KEY, Encoder, OovCounter, TokenCounter, encoder_record, load_encoder, schema_of, vocab_array_name,
)
from ctrkit.data.rawtext import BadRows, TextStream, check_text_file, fingerprint, is_stream_input, prefetched
from ctrkit.data.readers import DelimitedParser, ParquetSource, ParsedBlock, detect_layout, is_parquet
from ctrkit.data.spec import DatasetSpec
from ctrkit.data.store import DEFAULT_CHUNK_ROWS, Store, StoreWriter
from ctrkit.errors import ConfigError, InputError, OutputError
from ctrkit.fileio import clean_debris, os_error_message, target_lock

SPLITS = ("train", "valid", "test")
DEFAULT_BLOCK_BYTES = 8 << 20
PARQUET_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class PipelineOptions:
    """How the rows are read and written (the spec says what they become)."""

    strict: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    block_bytes: int = DEFAULT_BLOCK_BYTES

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ConfigError(f"--chunk-rows must be >= 1, got {self.chunk_rows}")
        if self.block_bytes < 1:
            raise ConfigError(f"block_bytes must be >= 1, got {self.block_bytes}")


def split_assignment(rng: np.random.Generator, num_lines: int, ratios: np.ndarray) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of each line, from one uniform draw per line."""
    thresholds = np.cumsum(ratios)[:-1] / ratios.sum()
    return np.searchsorted(thresholds, rng.random(num_lines), side="right").astype(np.int8)


# ---------------------------------------------------------------------------------------------
# Sources: one file, read block by block
# ---------------------------------------------------------------------------------------------
@dataclass
class SourceStats:
    """What one input file contributed."""

    role: str
    info: dict
    lines: int = 0
    rows: int = 0
    skipped: int = 0
    truncated: dict[str, int] = field(default_factory=dict)


class Source:
    """One input file: its format, whether it has the label, and its parsed blocks.

    ``text`` (a :class:`~ctrkit.data.rawtext.TextStream`: stdin or a gzip file) is read as a
    stream instead of memory-mapping ``path``; ``passthrough`` columns are handed through as text
    (:attr:`ParsedBlock.passthrough`).
    """

    def __init__(self, path: Path, spec: DatasetSpec, bad_rows: BadRows, strict: bool,
                 *, text: TextStream | None = None, passthrough: Sequence[str] = ()):
        self.path = path if text is None else text.name
        self.text = text
        self.parquet = text is None and is_parquet(path)
        if self.parquet:
            self._parquet = ParquetSource(path, spec, bad_rows, strict, passthrough=passthrough)
            self.labeled = self._parquet.labeled
        else:
            layout = detect_layout(self.path, spec, head=None if text is None else text.head())
            self._parser = DelimitedParser(self.path, spec, layout, bad_rows, strict, text=text, passthrough=passthrough)
            self.labeled = layout.labeled

    @property
    def size(self) -> int | None:
        """Bytes of the file (compressed, for gzip); None for stdin."""
        return self.path.stat().st_size if self.text is None else self.text.size

    def blocks(self, block_bytes: int) -> Iterator[tuple[int, int, ParsedBlock]]:
        """``(lines, bytes, parsed)`` per block, parsed one block ahead in a background thread
        (``bytes``: of the file read for it, compressed for gzip)."""
        if self.parquet:
            rows = max(1, self._parquet.rows)
            for _, count, parsed in self._parquet.batches(PARQUET_BATCH_ROWS):
                yield count, self.size * count // rows, parsed
            return
        parser, text = self._parser, self.text
        if text is None:
            items = ((b.num_lines, len(b.data), parser.parse(b)) for b in parser.blocks(block_bytes))
        else:
            items = ((b.num_lines, text.consumed, parser.parse(b)) for b in parser.blocks(block_bytes))
            items = _consumed_deltas(items)
        yield from prefetched(items, depth=1)


def _consumed_deltas(items: Iterator[tuple[int, int, ParsedBlock]]) -> Iterator[tuple[int, int, ParsedBlock]]:
    """Running totals of bytes read → bytes read per block."""
    before = 0
    for lines, consumed, parsed in items:
        yield lines, consumed - before, parsed
        before = consumed


def open_source(path: str | Path, spec: DatasetSpec, bad_rows: BadRows | None = None, strict: bool = False,
                *, streams: bool = False, passthrough: Sequence[str] = ()) -> Source:
    """The :class:`Source` of a file (text or Parquet). With ``streams``, also ``-`` (stdin) and
    gzip-compressed text (by its magic bytes), read as streams; without, these are refused."""
    if streams and is_stream_input(path):
        text = TextStream.open(path)
        text.check_text()
        return Source(Path(path), spec, bad_rows or BadRows(), strict, text=text, passthrough=passthrough)
    path = Path(path)
    if not (path.is_file() and _looks_parquet(path)):
        check_text_file(path)  # names a missing, empty, compressed or binary file
    return Source(path, spec, bad_rows or BadRows(), strict, passthrough=passthrough)


def _looks_parquet(path: Path) -> bool:
    try:
        return is_parquet(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror}") from None


# ---------------------------------------------------------------------------------------------
# The spill between the passes
# ---------------------------------------------------------------------------------------------
@dataclass
class SpilledBlock:
    """Parsed rows of one block as written to disk, with the split index of each row."""

    split: np.ndarray  # int8 [n]: index into SPLITS
    tokens: list[np.ndarray]  # int64 [n] per sparse feature
    labels: np.ndarray | None  # float32 [n]
    dense: np.ndarray | None  # float32 [n, n_dense]
    sequences: list[np.ndarray] = field(default_factory=list)  # int64 [n, max_len] per sequence feature


class Spill:
    """Parsed blocks kept on disk between the two passes (memory stays bounded by one block)."""

    def __init__(self, directory: Path, n_token_fields: int, n_dense: int, sequence_lengths: Sequence[int] = ()):
        self.path = directory / "blocks.bin"
        self.n_token_fields = n_token_fields
        self.n_dense = n_dense
        self.sequence_lengths = tuple(sequence_lengths)
        self.blocks: list[tuple[int, bool, tuple[bool, ...]]] = []  # (rows, labeled, each sequence narrowed to int32)
        self._handle = open(self.path, "wb")

    def append(self, block: SpilledBlock) -> None:
        rows = len(block.split)
        if rows == 0:
            return
        self._write(block.split, np.int8)
        for column in block.tokens:
            self._write(column, np.int64)
        if block.labels is not None:
            self._write(block.labels, np.float32)
        if self.n_dense:
            self._write(block.dense, np.float32)
        narrowed = []
        for sequence in block.sequences:
            narrow = _narrowed(sequence)
            narrowed.append(narrow is not None)
            self._write(sequence if narrow is None else narrow, np.int64 if narrow is None else np.int32)
        self.blocks.append((rows, block.labels is not None, tuple(narrowed)))

    def _write(self, array: np.ndarray, dtype: type) -> None:
        # file.write, not ndarray.tofile: a full disk then raises OSError with its errno (ENOSPC)
        self._handle.write(memoryview(np.ascontiguousarray(array, dtype=dtype)).cast("B"))

    def __iter__(self) -> Iterator[SpilledBlock]:
        self._handle.close()
        with open(self.path, "rb") as handle:
            for rows, labeled, narrowed in self.blocks:
                split = np.fromfile(handle, np.int8, rows)
                tokens = [np.fromfile(handle, np.int64, rows) for _ in range(self.n_token_fields)]
                labels = np.fromfile(handle, np.float32, rows) if labeled else None
                dense = np.fromfile(handle, np.float32, rows * self.n_dense).reshape(rows, self.n_dense) if self.n_dense else None
                sequences = [
                    _widened(np.fromfile(handle, np.int32, rows * length)) if narrow else np.fromfile(handle, np.int64, rows * length)
                    for length, narrow in zip(self.sequence_lengths, narrowed)
                ]
                sequences = [sequence.reshape(rows, length) for sequence, length in zip(sequences, self.sequence_lengths)]
                yield SpilledBlock(split, tokens, labels, dense, sequences)

    def close(self) -> None:
        self._handle.close()


_I32 = np.iinfo(np.int32)
_NARROW_PADDING, _NARROW_MISSING = _I32.min, _I32.min + 1


def _narrowed(tokens: np.ndarray) -> np.ndarray | None:
    """Sequence tokens as int32 (PADDING and MISSING as the two lowest int32) when every other
    token fits, else None: small ids (categories, brands) halve the spill."""
    special = (tokens == tk.PADDING) | (tokens == tk.MISSING)
    rest = tokens[~special]
    if rest.size and (rest.min() <= _NARROW_MISSING or rest.max() > _I32.max):
        return None
    out = np.where(special, 0, tokens).astype(np.int32)
    out[tokens == tk.PADDING] = _NARROW_PADDING
    out[tokens == tk.MISSING] = _NARROW_MISSING
    return out


def _widened(narrow: np.ndarray) -> np.ndarray:
    out = narrow.astype(np.int64)
    out[narrow == _NARROW_PADDING] = tk.PADDING
    out[narrow == _NARROW_MISSING] = tk.MISSING
    return out


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
@dataclass
class PreprocessResult:
    store: Store
    seconds: float
    rows_read: int
    bad_rows: BadRows
    sources: list[SourceStats]

    @property
    def truncated(self) -> dict[str, int]:
        """Rows per sequence feature whose sequence was cut to ``max_len`` (the most recent kept)."""
        total: dict[str, int] = {}
        for source in self.sources:
            for name, count in source.truncated.items():
                total[name] = total.get(name, 0) + count
        return total


def preprocess(
    spec: DatasetSpec,
    raw: Sequence[str | Path],
    out: str | Path,
    options: PipelineOptions = PipelineOptions(),
    *,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    notify: Callable[[str], None] | None = None,
    extra_meta: dict | None = None,
    sources: Sequence | None = None,
) -> PreprocessResult:
    """Build a store at ``out`` from raw files by ``spec`` (see the module docstring for the rules).

    ``out`` is locked for the whole run (:func:`ctrkit.fileio.target_lock`), so a second build of
    the same path fails at once; what killed runs left beside ``out`` is cleaned up first, and each
    action is passed to ``notify``. A file-system failure (disk full, read-only, …) becomes an
    :class:`OutputError` saying what was kept; the spill and the temporary store are removed.
    ``progress=None`` shows bars on a terminal. ``sources`` replaces ``raw`` with ready sources (a
    join's output, :mod:`ctrkit.data.taobao`): objects with ``path``, ``size``, ``labeled`` and
    ``blocks(block_bytes)`` like :class:`Source`.
    """
    started = time.perf_counter()
    bad_rows = BadRows()
    if sources is not None:
        jobs = [(source, "raw") for source in sources]
    else:
        jobs = _check_inputs(spec, raw, valid, test, bad_rows, options.strict)
    out = Path(out)
    _check_output(out, overwrite)
    try:
        with target_lock(out, "preprocessing"):  # writing the holder's name fails on a full disk too
            for action in clean_debris(out):
                if notify is not None:
                    notify(action)
            if out.exists() and not overwrite:
                raise InputError(f"{out} already exists; remove it or pass --overwrite")
            return _build(spec, jobs, out, options, overwrite, progress, started, bad_rows, extra_meta or {})
    except OSError as exc:
        kept = f"the existing {out} is unchanged" if out.exists() else f"nothing was written at {out}"
        raise OutputError(f"cannot build {out}: {os_error_message(exc)}; {kept}") from None


def _check_inputs(spec, raw, valid, test, bad_rows, strict) -> list[tuple[Source, str]]:
    """Open every input file before any work; ``(source, role)`` jobs."""
    if not raw:
        raise InputError("no raw input file given")
    jobs = [(open_source(p, spec, bad_rows, strict), "raw") for p in raw]
    jobs += [(open_source(p, spec, bad_rows, strict), role) for role, p in (("valid", valid), ("test", test)) if p]
    for source, role in jobs:
        if role != "test" and not source.labeled:
            raise InputError(f"{source.path}: has no label column ({spec.label.column}); unlabeled rows can only be a --test file")
    return jobs


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, a store path that cannot be built or must not be replaced."""
    parent = out.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise OutputError(f"--out {out}: {parent} {what}")
    if os.path.lexists(out) and not out.is_dir():
        raise OutputError(f"--out {out}: is a file, not a store directory; remove it or choose another path")
    if overwrite and out.is_dir() and any(out.iterdir()) and not (out / "data.mdb").is_file():
        raise OutputError(f"--out {out}: is a directory that is not a ctrkit store; --overwrite replaces stores only")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"--out {out}: directory {parent} is not writable")


def _build(spec, jobs, out: Path, options: PipelineOptions, overwrite: bool, progress, started: float, bad_rows: BadRows, extra_meta: dict) -> PreprocessResult:
    """The two passes, with the spill in a directory beside ``out`` that is always removed."""
    split_labeled = {name: all(s.labeled for s, role in jobs if role in ("raw", name)) for name in SPLITS}
    # named .<out>.spill-<pid>-… so that a later run can remove it once this process is dead
    spill_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.spill-{os.getpid()}-", dir=out.parent))
    try:
        spill = Spill(spill_dir, len(spec.sparse), len(spec.dense), [f.max_len for f in spec.sequences])
        counter = TokenCounter([f.name for f in spec.sparse])
        sources = _first_pass(spec, jobs, options, spill, counter, progress)
        train_rows = sum(s.rows for s in sources if s.role == "raw")
        if train_rows == 0:
            raise InputError(f"no valid rows in {', '.join(str(s.path) for s, r in jobs if r == 'raw')} ({bad_rows.describe()})")
        vocabularies = [
            np.arange(f.hash_buckets, dtype=np.int64) if f.hash_buckets else counter.vocabulary(j, f.min_count)
            for j, f in enumerate(spec.sparse)
        ]
        meta = _metadata(spec, sources, bad_rows, options, extra_meta)
        store = _second_pass(spec, out, options, vocabularies, spill, split_labeled, meta, overwrite, progress)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    return PreprocessResult(store, time.perf_counter() - started, sum(s.lines for s in sources), bad_rows, sources)


class _Splitter:
    """The split of each parsed row of the raw files (given files are their own split)."""

    def __init__(self, spec: DatasetSpec, roles: Sequence[str]):
        self.spec = spec
        ratios = np.asarray(spec.split.ratios if spec.split.by == "random" else (1.0, 0.0, 0.0), dtype=np.float64)
        for role in roles:
            if role != "raw":
                ratios[SPLITS.index(role)] = 0.0  # that split comes from its own file
        self.ratios = ratios
        self.rng = np.random.default_rng(spec.split.seed)

    def assign(self, role: str, lines: int, parsed: ParsedBlock) -> np.ndarray:
        if role != "raw":
            return np.full(parsed.rows, SPLITS.index(role), dtype=np.int8)
        split = self.spec.split
        if split.by == "random":
            return split_assignment(self.rng, lines, self.ratios)[parsed.line_index]
        if split.by == "time":
            times = parsed.times
            return ((times >= split.valid_from).astype(np.int8) + (times >= split.test_from).astype(np.int8)).astype(np.int8)
        return np.zeros(parsed.rows, dtype=np.int8)


def _first_pass(spec, jobs, options, spill, counter, progress) -> list[SourceStats]:
    """Parse every file once: split, spill tokens to disk, count the train split's tokens."""
    splitter = _Splitter(spec, [role for _, role in jobs])
    counted = [j for j, f in enumerate(spec.sparse) if not f.hash_buckets and f.type != "vocabulary"]
    counted_names = [spec.sparse[j].name for j in counted]
    shared = [(f.name, next(j for j, s in enumerate(spec.sparse) if s.name == f.shares)) for f in spec.sequences]
    sources = []
    total_bytes = sum(source.size for source, _ in jobs)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="pass 1/2 parse", disable=_bar_disabled(progress)) as bar:
        for source, role in jobs:
            stats = SourceStats(role, fingerprint(source.path))
            for lines, size, parsed in source.blocks(options.block_bytes):
                split = splitter.assign(role, lines, parsed)
                train = split == 0
                if train.any():
                    train_tokens = parsed.tokens if train.all() else parsed.tokens.filter(pl.Series(train))
                    counter.update(train_tokens.select(counted_names), counted)
                    for name, j in shared:
                        if not spec.sparse[j].hash_buckets:
                            items = parsed.sequences[name][train]
                            counter.update_values(j, items[items != tk.PADDING])
                columns = [series.to_numpy() for series in parsed.tokens.get_columns()]
                sequences = [parsed.sequences[f.name] for f in spec.sequences]
                spill.append(SpilledBlock(split, columns, parsed.labels, parsed.dense, sequences))
                stats.lines += lines
                stats.rows += parsed.rows
                for name, count in parsed.truncated.items():
                    stats.truncated[name] = stats.truncated.get(name, 0) + count
                bar.update(size)
            stats.skipped = stats.lines - stats.rows
            sources.append(stats)
    return sources


def _second_pass(spec, out, options, vocabularies, spill, split_labeled, meta, overwrite, progress) -> Store:
    """Encode the spilled tokens with the final vocabularies and write the store."""
    encoder = Encoder(vocabularies, [f.hash_buckets for f in spec.sparse])
    shared = [next(j for j, s in enumerate(spec.sparse) if s.name == f.shares) for f in spec.sequences]
    group = next((j for j, f in enumerate(spec.sparse) if f.name == spec.group), None) if spec.group else None
    schema = schema_of(spec, vocabularies)
    total_rows = sum(rows for rows, _, _ in spill.blocks)
    train_oov = OovCounter(spec)  # the train split's OOV share per feature, for predict's shift warning

    def encoded(block: SpilledBlock) -> dict[str, np.ndarray]:
        columns = {"sparse": encoder.encode(block.tokens)}
        train_oov.update(columns["sparse"][block.split == 0])
        if block.labels is not None:
            columns["label"] = block.labels
        if block.dense is not None:
            columns["dense"] = block.dense
        for f, j, tokens in zip(spec.sequences, shared, block.sequences):
            columns[f"seq:{f.name}"] = encoder.encode_sequence(j, tokens)
        if group is not None:
            columns["group"] = np.ascontiguousarray(block.tokens[group], dtype=np.int64)
        return columns

    with StoreWriter(out, schema, chunk_rows=options.chunk_rows, overwrite=overwrite) as writer:
        for name in SPLITS:
            writer.declare_split(name, labeled=split_labeled[name])
        with tqdm(total=total_rows, unit="rows", unit_scale=True, desc="pass 2/2 encode", disable=_bar_disabled(progress)) as bar:
            for block, columns in prefetched(((block, encoded(block)) for block in spill), depth=1):
                _append_by_split(writer, block.split, columns)
                bar.update(len(block.split))
        for f, vocab in zip(spec.sparse, vocabularies):
            writer.put_array(vocab_array_name(f.name), vocab)
        if isinstance(meta.get("encoder"), dict):
            meta["encoder"][OOV_RECORD_KEY] = train_oov.record()
        return writer.commit(meta)


def _append_by_split(writer: StoreWriter, split: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    """Append each split's rows of a block, keeping file order within a split (one gather)."""
    if (split == split[0]).all():
        writer.append(SPLITS[split[0]], columns)
        return
    order = np.argsort(split, kind="stable")
    bounds = np.searchsorted(split[order], np.arange(len(SPLITS) + 1))
    gathered = {key: np.take(array, order, axis=0) for key, array in columns.items()}
    for index, name in enumerate(SPLITS):
        lo, hi = bounds[index], bounds[index + 1]
        if hi > lo:
            writer.append(name, {key: array[lo:hi] for key, array in gathered.items()})


def _bar_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: ``None`` shows a bar only on a terminal."""
    return None if progress is None else not progress


def _metadata(spec: DatasetSpec, sources: list[SourceStats], bad_rows: BadRows, options: PipelineOptions, extra: dict) -> dict:
    meta = {
        "source_format": spec.name,
        "options": {"strict": options.strict, "chunk_rows": options.chunk_rows},
        "encoder": encoder_record(spec),
        "sources": [
            {**s.info, "role": s.role, "lines": s.lines, "rows": s.rows, "skipped": s.skipped, **({"truncated_sequences": s.truncated} if s.truncated else {})}
            for s in sources
        ],
        "bad_rows": {"count": bad_rows.count, "examples": bad_rows.examples},
    }
    for key, value in extra.items():
        meta[key] = {**meta.get(key, {}), **value} if isinstance(value, dict) and isinstance(meta.get(key), dict) else value
    return meta


# ---------------------------------------------------------------------------------------------
# Encoding new raw rows (prediction)
# ---------------------------------------------------------------------------------------------
def iter_raw_batches(path: str | Path, encoder, batch_rows: int = 65_536, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[dict[str, np.ndarray]]:
    """Encode a raw file (labeled or not) like the rows of the store ``encoder`` came from, in file order.

    ``encoder`` is a :class:`~ctrkit.data.encoder.DatasetEncoder`, a Store, a store path or an
    ``encoder.npz``; ``path`` a text or Parquet file, a gzip-compressed text file, or ``-`` (stdin).
    Unseen values map to the OOV id 0. A malformed row raises :class:`InputError` naming the
    file, line and field (:func:`encoded_blocks` skips and reports them instead).
    """
    if not hasattr(encoder, "encoder"):
        encoder = load_encoder(encoder)
    source = open_source(path, encoder.spec, strict=True, streams=True)
    for _, _, parsed, batch in encoded_blocks(source, encoder, block_bytes):
        yield from batch_slices(batch, batch_rows)


def encoded_blocks(source: Source, encoder, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[tuple[int, int, ParsedBlock, dict[str, np.ndarray]]]:
    """``(lines, bytes, parsed, batch)`` per block of ``source``: the block's valid rows encoded by
    ``encoder`` as one model batch (:func:`encoded_block`). Blocks are parsed and encoded in
    background threads, one block ahead of the caller (who runs the model meanwhile)."""
    items = ((lines, size, parsed, encoded_block(encoder, parsed)) for lines, size, parsed in source.blocks(block_bytes))
    yield from prefetched(items, depth=1)


def encoded_block(encoder, parsed: ParsedBlock) -> dict[str, np.ndarray]:
    """All rows of ``parsed`` as one model batch: ``sparse`` ids by ``encoder`` (a
    :class:`~ctrkit.data.encoder.DatasetEncoder`), ``dense``, ``seq:<name>`` ids and, for a
    labeled block, ``label``."""
    spec = encoder.spec
    batch = {"sparse": encoder.encoder.encode([series.to_numpy() for series in parsed.tokens.get_columns()])}
    if parsed.dense is not None:
        batch["dense"] = parsed.dense
    for f in spec.sequences:
        batch[f"seq:{f.name}"] = encoder.encoder.encode_sequence(encoder.sparse_index(f.shares), parsed.sequences[f.name])
    if parsed.labels is not None:
        batch["label"] = parsed.labels
    return batch


def batch_slices(batch: dict[str, np.ndarray], batch_rows: int, start: int = 0, stop: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Rows ``start:stop`` of ``batch`` cut into batches of at most ``batch_rows`` rows (views, no copies)."""
    stop = len(batch["sparse"]) if stop is None else stop
    for first in range(start, stop, batch_rows):
        yield {key: values[first:min(first + batch_rows, stop)] for key, values in batch.items()}

