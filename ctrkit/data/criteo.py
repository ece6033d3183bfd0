"""Raw Criteo TSV → encoded columns → LMDB store (``ctrkit preprocess criteo``).

Format: tab-separated, no header, 40 fields ``label, I1..I13, C1..C26`` (Kaggle train and the
Terabyte day files), or 39 fields without the label (Kaggle test). An empty field is missing.

Defaults follow the BARS Criteo_x4_001 protocol:

* ``I1..I13`` become categorical tokens ``floor(ln(v)^2)`` for ``v > 2`` and ``v`` otherwise; a
  missing value is a token of its own. ``numeric="dense"`` keeps them as float features
  ``log1p(max(v, 0))`` instead (missing → 0).
* ``C1..C26`` are 32-bit hex hashes, kept as the integers they spell; missing is its own token.
* Tokens seen fewer than ``min_count`` times in the *train* split map to the field's OOV id 0;
  the others get ids ``1..V`` by decreasing train frequency (ties by token).
* Rows go to train/valid/test at random with ratios ``8:1:1`` and ``seed`` 2018 (one uniform
  draw per input line, in file order), unless explicit valid/test files are given.

Two passes, memory bounded by the vocabulary, not the rows: pass 1 parses each block of lines
once (polars), validates it, turns it into int64 tokens that go to a temporary file on disk and
counts the train tokens; pass 2 maps the tokens to ids with the final vocabularies and writes
chunks to the store.
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

from ctrkit.data.rawtext import (
    BadRows,
    Block,
    check_text_file,
    fingerprint,
    first_line,
    format_bad_row,
    prefetched,
    read_blocks,
)
from ctrkit.data.store import DEFAULT_CHUNK_ROWS, Store, StoreWriter
from ctrkit.errors import ConfigError, InputError, OutputError
from ctrkit.fileio import clean_debris, os_error_message, target_lock
from ctrkit.schema import Field, Schema

LABEL = "label"
INT_FIELDS = tuple(f"I{i}" for i in range(1, 14))
CAT_FIELDS = tuple(f"C{i}" for i in range(1, 27))
LABELED_COLUMNS = (LABEL, *INT_FIELDS, *CAT_FIELDS)
UNLABELED_COLUMNS = (*INT_FIELDS, *CAT_FIELDS)
MISSING = np.iinfo(np.int64).min  # token of an empty field; no parsed value can take it
SPLITS = ("train", "valid", "test")
NUMERIC_MODES = ("categorical", "dense")


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CriteoOptions:
    """How raw Criteo rows are turned into a store."""

    numeric: str = "categorical"
    min_count: int = 10
    split: tuple[float, float, float] = (8.0, 1.0, 1.0)
    seed: int = 2018
    strict: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    block_bytes: int = 8 << 20

    def __post_init__(self) -> None:
        if self.numeric not in NUMERIC_MODES:
            raise ConfigError(f"--numeric must be one of {NUMERIC_MODES}, got {self.numeric!r}")
        if self.min_count < 1:
            raise ConfigError(f"--min-count must be >= 1, got {self.min_count}")
        if len(self.split) != 3 or min(self.split) < 0 or self.split[0] <= 0:
            raise ConfigError(f"--split needs three ratios train:valid:test with train > 0, got {self.split}")
        if self.chunk_rows < 1:
            raise ConfigError(f"--chunk-rows must be >= 1, got {self.chunk_rows}")

    @property
    def token_fields(self) -> tuple[str, ...]:
        """Fields that become sparse (categorical) columns, in store order."""
        return CAT_FIELDS if self.numeric == "dense" else (*INT_FIELDS, *CAT_FIELDS)

    @property
    def dense_fields(self) -> tuple[str, ...]:
        return INT_FIELDS if self.numeric == "dense" else ()


def parse_split(text: str) -> tuple[float, float, float]:
    """``"8:1:1"`` → ``(8.0, 1.0, 1.0)``."""
    try:
        parts = tuple(float(p) for p in text.split(":"))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ConfigError(f"--split must look like 8:1:1 (train:valid:test), got {text!r}")
    return parts  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Parsing one block of lines
# ---------------------------------------------------------------------------------------------
@dataclass
class ParsedBlock:
    """Valid rows of one block: labels, token matrix (fields × rows) and dense features."""

    line_index: np.ndarray  # 0-based index of each valid row's line within the block
    labels: np.ndarray | None  # float32 [n]
    tokens: pl.DataFrame  # one int64 column of tokens per token field
    dense: np.ndarray | None  # float32 [n, n_dense]

    @property
    def rows(self) -> int:
        return len(self.line_index)


def _bucket(values: pl.Expr) -> pl.Expr:
    """BARS bucketing of a count: ``floor(ln(v)^2)`` for ``v > 2``, else ``v``."""
    squared_log = (values.cast(pl.Float64).log() ** 2).floor().cast(pl.Int64)
    return pl.when(values > 2).then(squared_log).otherwise(values)


def _hex(name: str, strict: bool) -> pl.Expr:
    return pl.col(name).str.to_integer(base=16, strict=strict)


def _typed_schema(columns: Sequence[str]) -> dict[str, pl.DataType]:
    """Label and integer fields are parsed by the CSV reader itself; hashes stay strings."""
    types = {LABEL: pl.Int8, **{n: pl.Int64 for n in INT_FIELDS}, **{n: pl.String for n in CAT_FIELDS}}
    return {name: types[name] for name in columns}


class CriteoParser:
    """Validates and tokenises blocks of raw Criteo lines of one file.

    The fast path parses a whole block strictly; any failure (a wrong field count, a value the
    CSV reader rejects, a label other than 0/1, a bad hash) sends the block to the careful path,
    which finds every bad row with the same parsers and converts the rest.
    """

    def __init__(self, path: Path, labeled: bool, options: CriteoOptions, bad_rows: BadRows):
        self.path = path
        self.labeled = labeled
        self.columns = LABELED_COLUMNS if labeled else UNLABELED_COLUMNS
        self.schema = _typed_schema(self.columns)
        self.options = options
        self.bad_rows = bad_rows

    def parse(self, block: Block) -> ParsedBlock:
        if self._fast_path_applies(block):
            try:
                frame = pl.scan_csv(block.data, **self._csv_options(self.schema))
                converted = frame.select(self._exprs() + self._label_check()).collect()
                if converted.height == block.num_lines and (not self.labeled or converted.get_column("label_ok").all()):
                    return self._parsed(converted, np.arange(block.num_lines))
            except pl.exceptions.PolarsError:
                pass
        return self._parse_carefully(block)

    def _fast_path_applies(self, block: Block) -> bool:
        """Whether every line has the right field count and a null can only mean an empty field.

        The CSV reader reads an integer field of spaces as null, exactly like an empty field, so a
        block holding a space goes to the careful path, which compares each typed value with the
        raw text. Well-formed Criteo rows hold no spaces.
        """
        data = block.data
        return data.count(b"\t") == (len(self.columns) - 1) * block.num_lines and b" " not in data

    def _csv_options(self, schema: dict) -> dict:
        return {"has_header": False, "separator": "\t", "quote_char": None, "new_columns": list(self.columns), "schema": schema}

    def _label_check(self) -> list[pl.Expr]:
        # is_in gives null for a null (empty) label and Series.all() skips nulls: count it as bad
        return [pl.col(LABEL).is_in([0, 1]).fill_null(False).alias("label_ok")] if self.labeled else []

    def _convert(self, frame: pl.DataFrame, line_index: np.ndarray) -> ParsedBlock:
        """Typed rows → tokens (int64, fields × rows), labels and dense features."""
        return self._parsed(frame.select(self._exprs()), line_index)

    def _exprs(self) -> list[pl.Expr]:
        ints = [] if self.options.numeric == "dense" else [_bucket(pl.col(n)).fill_null(MISSING).alias(n) for n in INT_FIELDS]
        exprs = ints + [_hex(n, strict=True).fill_null(MISSING).alias(n) for n in CAT_FIELDS]
        if self.options.numeric == "dense":
            exprs += [pl.col(n).clip(lower_bound=0).cast(pl.Float64).log1p().fill_null(0.0).cast(pl.Float32).alias(f"dense:{n}") for n in INT_FIELDS]
        if self.labeled:
            exprs.append(pl.col(LABEL).cast(pl.Float32))
        return exprs

    def _parsed(self, converted: pl.DataFrame, line_index: np.ndarray) -> ParsedBlock:
        dense = None
        if self.options.numeric == "dense":
            dense = converted.select([f"dense:{n}" for n in INT_FIELDS]).to_numpy(order="c")
        labels = converted.get_column(LABEL).to_numpy() if self.labeled else None
        return ParsedBlock(line_index, labels, converted.select(self.options.token_fields), dense)

    def _parse_carefully(self, block: Block) -> ParsedBlock:
        """Check every line; record (or, with ``strict``, raise on) the first problem of each bad one."""
        lines = block.data.split(b"\n")[: block.num_lines]
        problems: dict[int, tuple[str, str]] = {}
        kept = []
        for index, line in enumerate(lines):
            fields = line.count(b"\t") + 1
            if fields != len(self.columns):
                problems[index] = ("*", f"expected {len(self.columns)} tab-separated fields, found {fields}")
            else:
                kept.append(index)
        kept_index = np.asarray(kept, dtype=np.int64)
        typed = None
        if kept:
            data = b"\n".join(lines[i] for i in kept) + b"\n"
            typed = pl.read_csv(data, **self._csv_options(self.schema), ignore_errors=True)
            raw = pl.read_csv(data, **self._csv_options({name: pl.String for name in self.columns}))
            for position, (name, reason) in self._field_problems(typed, raw).items():
                problems.setdefault(int(kept_index[position]), (name, reason))
        for index in sorted(problems):
            name, reason = problems[index]
            line_number = block.first_line + index
            if self.options.strict:
                raise InputError(format_bad_row(self.path, line_number, name, reason) + " (--strict stops at the first bad row)")
            self.bad_rows.add(self.path, line_number, name, reason)
        good = np.asarray([i for i, line in enumerate(kept) if line not in problems], dtype=np.int64)
        if typed is None or len(good) == 0:
            return self._empty()
        return self._convert(typed[good], kept_index[good])

    def _field_problems(self, typed: pl.DataFrame, raw: pl.DataFrame) -> dict[int, tuple[str, str]]:
        """Row position → (field, reason) of the first invalid field, in column order."""
        checks: list[tuple[str, pl.Series, str]] = []
        if self.labeled:
            checks.append((LABEL, ~typed.get_column(LABEL).is_in([0, 1]).fill_null(False), "label is not 0 or 1"))
        for name in INT_FIELDS:  # the reader nulls what it cannot parse; an empty field is null in both
            checks.append((name, typed.get_column(name).is_null() & raw.get_column(name).is_not_null(), "not an integer"))
        for name in CAT_FIELDS:
            checks.append((name, raw.select(pl.col(name).is_not_null() & _hex(name, strict=False).is_null()).to_series(), "not a hexadecimal hash"))
        problems: dict[int, tuple[str, str]] = {}
        for name, flags, reason in checks:
            for position in np.flatnonzero(flags.to_numpy()):
                value = raw.get_column(name)[int(position)]
                problems.setdefault(int(position), (name, f"{reason}: {'empty field' if value is None else repr(value)}"))
        return problems

    def _empty(self) -> ParsedBlock:
        n_dense = len(self.options.dense_fields)
        return ParsedBlock(
            np.zeros(0, np.int64),
            np.zeros(0, np.float32) if self.labeled else None,
            pl.DataFrame({name: np.zeros(0, np.int64) for name in self.options.token_fields}),
            np.zeros((0, n_dense), np.float32) if n_dense else None,
        )


def detect_labeled(path: Path) -> bool:
    """40 fields → labeled (train format); 39 → unlabeled (Kaggle test format)."""
    head = first_line(path)
    fields = head.count(b"\t") + 1
    if fields == len(LABELED_COLUMNS):
        return True
    if fields == len(UNLABELED_COLUMNS):
        return False
    raise InputError(
        f"{path}:1: expected {len(LABELED_COLUMNS)} tab-separated fields (label, I1-I13, C1-C26) or "
        f"{len(UNLABELED_COLUMNS)} without the label, found {fields}; is this a raw Criteo TSV file?"
    )


# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------
class TokenCounter:
    """Counts tokens per field over many blocks; memory follows the number of distinct tokens."""

    def __init__(self, fields: Sequence[str]):
        self.fields = tuple(fields)
        self._merged: list[pl.DataFrame | None] = [None] * len(fields)
        self._parts: list[list[pl.DataFrame]] = [[] for _ in fields]
        self._part_rows = [0] * len(fields)

    def update(self, frame: pl.DataFrame) -> None:
        """Count the tokens of a block (one column per field); fields are counted in parallel."""
        if frame.height == 0:
            return
        queries = [frame.lazy().group_by(pl.col(name).alias("token")).agg(pl.len().cast(pl.Int64).alias("count")) for name in self.fields]
        for j, counts in enumerate(pl.collect_all(queries)):
            self._parts[j].append(counts)
            self._part_rows[j] += counts.height
            merged_rows = 0 if self._merged[j] is None else self._merged[j].height
            if self._part_rows[j] > max(2 * merged_rows, 1 << 20):  # amortised merging
                self._merge(j)

    def _merge(self, j: int) -> None:
        frames = ([self._merged[j]] if self._merged[j] is not None else []) + self._parts[j]
        if frames:
            combined = pl.concat(frames)
            self._merged[j] = combined.group_by("token").agg(pl.col("count").sum())
        self._parts[j], self._part_rows[j] = [], 0

    def vocabulary(self, j: int, min_count: int) -> np.ndarray:
        """Tokens kept for field ``j`` in id order (most frequent first; id = index + 1)."""
        self._merge(j)
        merged = self._merged[j]
        if merged is None:
            return np.zeros(0, np.int64)
        kept = merged.filter(pl.col("count") >= min_count).sort(["count", "token"], descending=[True, False])
        return kept.get_column("token").to_numpy().astype(np.int64)


class Encoder:
    """Maps raw tokens of each sparse field to ids with that field's vocabulary (0 = OOV).

    Fields whose tokens span a small range (the bucketed integer fields) use a lookup table;
    the others (32-bit hashes) a hash map in polars, all fields in parallel.
    """

    LOOKUP_SPAN = 1 << 16

    def __init__(self, vocabularies: Sequence[np.ndarray]):
        self._keys = [pl.Series("token", vocab, dtype=pl.Int64) for vocab in vocabularies]
        self._ids = [pl.Series("id", np.arange(1, len(vocab) + 1, dtype=np.int32)) for vocab in vocabularies]
        self._tables = [self._lookup_table(vocab) for vocab in vocabularies]

    def _lookup_table(self, vocab: np.ndarray) -> tuple[int, np.ndarray, int] | None:
        """``(lowest token, ids by token - lowest with OOV last, id of MISSING)`` or None."""
        present = vocab[vocab != MISSING]
        low = int(present.min()) if len(present) else 0
        span = int(present.max()) - low + 1 if len(present) else 1
        if span > self.LOOKUP_SPAN:
            return None
        table = np.zeros(span + 1, dtype=np.int32)  # the extra slot answers out-of-range tokens
        ids = np.arange(1, len(vocab) + 1, dtype=np.int32)
        table[present - low] = ids[vocab != MISSING]
        missing_id = int(ids[vocab == MISSING][0]) if (vocab == MISSING).any() else 0
        return low, table, missing_id

    @staticmethod
    def _look_up(tokens: np.ndarray, low: int, table: np.ndarray, missing_id: int) -> np.ndarray:
        offset = tokens - low
        outside = (offset < 0) | (offset >= len(table) - 1)
        ids = table[np.where(outside, len(table) - 1, offset)]
        ids[tokens == MISSING] = missing_id
        return ids

    def encode(self, tokens: Sequence[np.ndarray]) -> np.ndarray:
        """int64 tokens, one array per field → int32 ids [n, fields] (row-major, ready for a chunk)."""
        n = len(tokens[0]) if len(tokens) else 0
        out = np.empty((n, len(tokens)), dtype=np.int32)
        hashed = [j for j, table in enumerate(self._tables) if table is None]
        if hashed and n:
            frame = pl.DataFrame({f"f{j}": tokens[j] for j in hashed})
            ids = frame.select(
                pl.col(f"f{j}").replace_strict(self._keys[j], self._ids[j], default=0, return_dtype=pl.Int32) for j in hashed
            )
            out[:, hashed] = ids.to_numpy(order="c")
        for j, table in enumerate(self._tables):
            if table is not None:
                out[:, j] = self._look_up(tokens[j], *table)
        return out


def vocab_array_name(field_name: str) -> str:
    return f"vocab/{field_name}"


def load_encoder(store: Store, options: CriteoOptions) -> Encoder:
    return Encoder([store.vocabulary(name) for name in options.token_fields])


# ---------------------------------------------------------------------------------------------
# Pass 1: parse, split, spill tokens to disk, count train tokens
# ---------------------------------------------------------------------------------------------
@dataclass
class SpilledBlock:
    """Parsed rows of one block as written to disk, with the split index of each row."""

    split: np.ndarray  # int8 [n]: index into SPLITS
    tokens: list[np.ndarray]  # int64 [n] per token field
    labels: np.ndarray | None  # float32 [n]
    dense: np.ndarray | None  # float32 [n, n_dense]


class Spill:
    """Parsed blocks kept on disk between the two passes (memory stays bounded by one block)."""

    def __init__(self, directory: Path, n_token_fields: int, n_dense: int):
        self.path = directory / "blocks.bin"
        self.n_token_fields = n_token_fields
        self.n_dense = n_dense
        self.blocks: list[tuple[int, bool]] = []  # (rows, labeled)
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
        self.blocks.append((rows, block.labels is not None))

    def _write(self, array: np.ndarray, dtype: type) -> None:
        # file.write, not ndarray.tofile: a full disk then raises OSError with its errno (ENOSPC)
        self._handle.write(memoryview(np.ascontiguousarray(array, dtype=dtype)).cast("B"))

    def __iter__(self) -> Iterator[SpilledBlock]:
        self._handle.close()
        with open(self.path, "rb") as handle:
            for rows, labeled in self.blocks:
                split = np.fromfile(handle, np.int8, rows)
                tokens = [np.fromfile(handle, np.int64, rows) for _ in range(self.n_token_fields)]
                labels = np.fromfile(handle, np.float32, rows) if labeled else None
                dense = np.fromfile(handle, np.float32, rows * self.n_dense).reshape(rows, self.n_dense) if self.n_dense else None
                yield SpilledBlock(split, tokens, labels, dense)

    def close(self) -> None:
        self._handle.close()


@dataclass
class SourceStats:
    """What one input file contributed."""

    role: str
    info: dict
    lines: int = 0
    rows: int = 0
    skipped: int = 0


@dataclass
class PreprocessResult:
    store: Store
    seconds: float
    rows_read: int
    bad_rows: BadRows
    sources: list[SourceStats]


def split_assignment(rng: np.random.Generator, num_lines: int, ratios: np.ndarray) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of each line, from one uniform draw per line."""
    thresholds = np.cumsum(ratios)[:-1] / ratios.sum()
    return np.searchsorted(thresholds, rng.random(num_lines), side="right").astype(np.int8)


def preprocess_criteo(
    raw: Sequence[str | Path],
    out: str | Path,
    options: CriteoOptions = CriteoOptions(),
    *,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    notify: Callable[[str], None] | None = None,
) -> PreprocessResult:
    """Build a store at ``out`` from raw Criteo files (see the module docstring for the rules).

    ``raw`` rows are split at random by ``options.split``; a split given as its own file
    (``valid``/``test``) is not drawn from ``raw``. ``progress=None`` shows bars on a terminal.

    ``out`` is locked for the whole run (:func:`ctrkit.fileio.target_lock`), so a second build of
    the same path fails at once; what killed runs left beside ``out`` is cleaned up first, and each
    action is passed to ``notify``. A file-system failure (disk full, read-only, …) becomes an
    :class:`OutputError` saying what was kept; the spill and the temporary store are removed.
    """
    started = time.perf_counter()
    jobs, labeled = _check_inputs(raw, valid, test)
    out = Path(out)
    _check_output(out, overwrite)
    try:
        with target_lock(out, "preprocessing"):  # writing the holder's name fails on a full disk too
            for action in clean_debris(out):
                if notify is not None:
                    notify(action)
            if out.exists() and not overwrite:
                raise InputError(f"{out} already exists; remove it or pass --overwrite")
            return _build(jobs, labeled, out, options, overwrite, progress, started)
    except OSError as exc:
        kept = f"the existing {out} is unchanged" if out.exists() else f"nothing was written at {out}"
        raise OutputError(f"cannot build {out}: {os_error_message(exc)}; {kept}") from None


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


def _build(jobs, labeled, out: Path, options: CriteoOptions, overwrite: bool, progress, started: float) -> PreprocessResult:
    """The two passes, with the spill in a directory beside ``out`` that is always removed."""
    split_labeled = {name: all(labeled[p] for p, role in jobs if role in ("raw", name)) for name in SPLITS}
    bad_rows = BadRows()
    # named .<out>.spill-<pid>-… so that a later run can remove it once this process is dead
    spill_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.spill-{os.getpid()}-", dir=out.parent))
    try:
        spill = Spill(spill_dir, len(options.token_fields), len(options.dense_fields))
        counter = TokenCounter(options.token_fields)
        sources = _first_pass(jobs, labeled, options, spill, counter, bad_rows, progress)
        train_rows = sum(s.rows for s in sources if s.role == "raw")
        if train_rows == 0:
            raise InputError(f"no valid rows in {', '.join(str(p) for p, r in jobs if r == 'raw')} ({bad_rows.describe()})")
        vocabularies = [counter.vocabulary(j, options.min_count) for j in range(len(options.token_fields))]
        meta = _metadata(options, sources, bad_rows)
        store = _second_pass(out, options, vocabularies, spill, split_labeled, meta, overwrite, progress)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    return PreprocessResult(store, time.perf_counter() - started, sum(s.lines for s in sources), bad_rows, sources)


def _check_inputs(raw, valid, test) -> tuple[list[tuple[Path, str]], dict[Path, bool]]:
    """Validate every input file before any work; return ``(path, role)`` jobs and labeledness."""
    if not raw:
        raise InputError("no raw input file given")
    jobs = [(check_text_file(p), "raw") for p in raw]
    jobs += [(check_text_file(p), role) for role, p in (("valid", valid), ("test", test)) if p]
    labeled = {path: detect_labeled(path) for path, _ in jobs}
    for path, role in jobs:
        if role != "test" and not labeled[path]:
            raise InputError(f"{path}: has no label column (39 fields); unlabeled rows can only be a --test file")
    return jobs, labeled


def _first_pass(jobs, labeled, options, spill, counter, bad_rows, progress) -> list[SourceStats]:
    """Parse every file once: split, spill tokens to disk, count the train split's tokens."""
    ratios = np.asarray(options.split, dtype=np.float64)
    for path, role in jobs:
        if role != "raw":
            ratios[SPLITS.index(role)] = 0.0  # that split comes from its own file
    rng = np.random.default_rng(options.seed)
    sources = []
    total_bytes = sum(path.stat().st_size for path, _ in jobs)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="pass 1/2 parse", disable=_bar_disabled(progress)) as bar:
        for path, role in jobs:
            stats = SourceStats(role, fingerprint(path))
            parser = CriteoParser(path, labeled[path], options, bad_rows)
            blocks = prefetched(((block, parser.parse(block)) for block in read_blocks(path, options.block_bytes)), depth=1)
            for block, parsed in blocks:
                if role == "raw":
                    split = split_assignment(rng, block.num_lines, ratios)[parsed.line_index]
                    counter.update(parsed.tokens.filter(pl.Series(split == 0)))
                else:
                    split = np.full(parsed.rows, SPLITS.index(role), dtype=np.int8)
                columns = [series.to_numpy() for series in parsed.tokens.get_columns()]
                spill.append(SpilledBlock(split, columns, parsed.labels, parsed.dense))
                stats.lines += block.num_lines
                stats.rows += parsed.rows
                bar.update(len(block.data))
            stats.skipped = stats.lines - stats.rows
            sources.append(stats)
    return sources


def _second_pass(out, options, vocabularies, spill, split_labeled, meta, overwrite, progress) -> Store:
    """Encode the spilled tokens with the final vocabularies and write the store."""
    encoder = Encoder(vocabularies)
    schema = _schema(options, vocabularies)
    total_rows = sum(rows for rows, _ in spill.blocks)
    with StoreWriter(out, schema, chunk_rows=options.chunk_rows, overwrite=overwrite) as writer:
        for name in SPLITS:
            writer.declare_split(name, labeled=split_labeled[name])
        with tqdm(total=total_rows, unit="rows", unit_scale=True, desc="pass 2/2 encode", disable=_bar_disabled(progress)) as bar:
            for block, ids in prefetched(((block, encoder.encode(block.tokens)) for block in spill), depth=1):
                columns = {"sparse": ids}
                if block.labels is not None:
                    columns["label"] = block.labels
                if block.dense is not None:
                    columns["dense"] = block.dense
                _append_by_split(writer, block.split, columns)
                bar.update(len(block.split))
        for field_name, vocab in zip(options.token_fields, vocabularies):
            writer.put_array(vocab_array_name(field_name), vocab)
        return writer.commit(meta)


def _append_by_split(writer: StoreWriter, split: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    """Append each split's rows of a block, keeping file order within a split (one gather)."""
    order = np.argsort(split, kind="stable")
    bounds = np.searchsorted(split[order], np.arange(len(SPLITS) + 1))
    gathered = {key: np.take(array, order, axis=0) for key, array in columns.items()}
    for index, name in enumerate(SPLITS):
        lo, hi = bounds[index], bounds[index + 1]
        if hi > lo:
            writer.append(name, {key: array[lo:hi] for key, array in gathered.items()})


def _schema(options: CriteoOptions, vocabularies: Sequence[np.ndarray]) -> Schema:
    sparse = [Field(name, "sparse", vocab_size=len(vocab) + 1) for name, vocab in zip(options.token_fields, vocabularies)]
    dense = [Field(name, "dense") for name in options.dense_fields]
    return Schema(tuple(sparse + dense), label=LABEL)


def _bar_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: ``None`` shows a bar only on a terminal."""
    return None if progress is None else not progress


def _metadata(options: CriteoOptions, sources: list[SourceStats], bad_rows: BadRows) -> dict:
    return {
        "source_format": "criteo",
        "options": {
            "numeric": options.numeric,
            "min_count": options.min_count,
            "split": list(options.split),
            "seed": options.seed,
            "strict": options.strict,
            "chunk_rows": options.chunk_rows,
        },
        "encoder": {
            "format": "criteo",
            "token_fields": list(options.token_fields),
            "dense_fields": list(options.dense_fields),
            "missing_token": int(MISSING),
            "integer_tokens": "floor(ln(v)^2) if v > 2 else v" if options.numeric == "categorical" else "log1p(max(v, 0))",
            "vocabulary_order": "decreasing train count, then token; id = index + 1; 0 = OOV",
        },
        "sources": [{**s.info, "role": s.role, "lines": s.lines, "rows": s.rows, "skipped": s.skipped} for s in sources],
        "bad_rows": {"count": bad_rows.count, "examples": bad_rows.examples},
    }


# ---------------------------------------------------------------------------------------------
# Encoding new raw rows with an existing store's vocabularies (prediction)
# ---------------------------------------------------------------------------------------------
def store_options(store: Store) -> CriteoOptions:
    """The preprocessing options a Criteo store was built with."""
    if store.meta.get("source_format") != "criteo":
        raise InputError(f"{store.path} was not built from Criteo rows (source format {store.meta.get('source_format')!r})")
    saved = store.meta["options"]
    return CriteoOptions(numeric=saved["numeric"], min_count=saved["min_count"], split=tuple(saved["split"]), seed=saved["seed"])


def iter_raw_batches(path: str | Path, store: Store, batch_rows: int = 65_536) -> Iterator[dict[str, np.ndarray]]:
    """Encode a raw Criteo file (labeled or not) with ``store``'s vocabularies, in file order.

    Unseen values map to the OOV id 0. A malformed row raises :class:`InputError` naming the
    file, line and field, since a score file must stay aligned with its input lines.
    """
    path = check_text_file(path)
    options = store_options(store)
    options = CriteoOptions(numeric=options.numeric, strict=True)
    encoder = load_encoder(store, options)
    parser = CriteoParser(path, detect_labeled(path), options, BadRows())
    for block in read_blocks(path, options.block_bytes):
        parsed = parser.parse(block)
        ids = encoder.encode([series.to_numpy() for series in parsed.tokens.get_columns()])
        for start in range(0, parsed.rows, batch_rows):
            rows = slice(start, start + batch_rows)
            batch = {"sparse": ids[rows]}
            if parsed.dense is not None:
                batch["dense"] = parsed.dense[rows]
            if parsed.labels is not None:
                batch["label"] = parsed.labels[rows]
            yield batch
