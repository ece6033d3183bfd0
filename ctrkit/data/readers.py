"""Raw files → validated, converted blocks of rows, by a dataset spec.

One reader per format: delimited text (Criteo's raw TSV, CSV/TSV with or without a header; see
:class:`DelimitedParser`) and Parquet (:class:`ParquetSource`). Both turn rows into a
:class:`ParsedBlock` with the same conversion (:class:`Conversion`, the polars expressions the
spec's features compile to), so a row gives the same tokens whatever file it came from.

Delimited text is read in blocks of whole lines. The fast path parses and converts a whole block
in one polars query with strict parsers; any failure (a wrong field count, a value a parser
rejects, a label other than 0/1) sends the block to the careful path, which finds every bad row,
names its file, line and field, and converts the rest. Quoted fields may hold the delimiter but
not a line break.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import polars as pl

from ctrkit.data import tokens as tk
from ctrkit.data.rawtext import BadRows, Block, TextStream, first_line, format_bad_row, read_blocks
from ctrkit.data.spec import DatasetSpec, Feature
from ctrkit.errors import InputError

_DELIMITER_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe", " ": "space"}


# ---------------------------------------------------------------------------------------------
# What the reader hands the pipeline
# ---------------------------------------------------------------------------------------------
@dataclass
class ParsedBlock:
    """Valid rows of one block: labels, tokens, dense values, sequences and split times."""

    line_index: np.ndarray  # 0-based index of each valid row within the block
    labels: np.ndarray | None  # float32 [n]; None for an unlabeled file
    tokens: pl.DataFrame  # one int64 column of tokens per sparse feature, in spec order
    dense: np.ndarray | None  # float32 [n, n_dense]
    sequences: dict[str, np.ndarray]  # feature → int64 tokens [n, max_len], left-padded with PADDING
    truncated: dict[str, int]  # feature → rows whose sequence was longer than max_len
    times: np.ndarray | None  # float64 [n]: the split-by-time column
    passthrough: dict[str, pl.Series] = field(default_factory=dict)  # column → its raw text, kept rows only

    @property
    def rows(self) -> int:
        return len(self.line_index)


# ---------------------------------------------------------------------------------------------
# The spec's features as polars expressions over typed columns
# ---------------------------------------------------------------------------------------------
class Conversion:
    """The polars expressions that turn typed raw columns into a :class:`ParsedBlock`.

    Each raw column is read once with one dtype: String where a categorical or sequence feature
    reads it, Float64 where only numbers are read from it (a label of 0/1: Int8).
    """

    def __init__(self, spec: DatasetSpec, columns: Sequence[str], labeled: bool, passthrough: Sequence[str] = ()):
        self.spec = spec
        self.columns = tuple(columns)
        self.labeled = labeled
        self.passthrough = tuple(passthrough)  # raw columns handed through as text (an id for the scores)
        self.read_types = self._read_types()

    # -- typing ----------------------------------------------------------------------------
    def _read_types(self) -> dict[str, pl.DataType]:
        wants: dict[str, set] = {}

        def want(column: str, dtype: pl.DataType) -> None:
            wants.setdefault(column, set()).add(dtype)

        if self.labeled:
            want(self.spec.label.column, pl.Int8 if self.spec.label.threshold is None else pl.Float64)
        for f in self.spec.features:
            for column in f.raw_columns:
                want(column, pl.String if f.type in ("categorical", "sequence") else pl.Float64)
        if self.spec.split.by == "time":
            want(self.spec.split.column, pl.Float64)
        types = {}
        for column in self.columns:
            dtypes = wants.get(column)
            types[column] = next(iter(dtypes)) if dtypes and len(dtypes) == 1 else pl.String
        return types

    @property
    def typed_numbers(self) -> bool:
        """Whether the CSV reader parses some column as a number (it reads spaces as null)."""
        return any(t != pl.String for t in self.read_types.values())

    def _number(self, column: str, strict: bool) -> pl.Expr:
        value = pl.col(column)
        return value if self.read_types[column] != pl.String else value.cast(pl.Float64, strict=strict)

    # -- expressions ---------------------------------------------------------------------------
    def exprs(self, strict: bool = True) -> list[pl.Expr]:
        """Label, ``tok:``/``dense:``/``seq:``/``len:`` columns and ``time``, plus an ``ok`` flag."""
        out = [self._token(f, strict).alias(f"tok:{f.name}") for f in self.spec.sparse]
        out += [self._dense(f).alias(f"dense:{f.name}") for f in self.spec.dense]
        for f in self.spec.sequences:
            items = self._sequence(f, strict)
            out += [items.list.tail(f.max_len).alias(f"seq:{f.name}"), items.list.len().alias(f"len:{f.name}")]
        if self.spec.split.by == "time":
            out.append(self._number(self.spec.split.column, strict).alias("time"))
        checks = self._row_checks()
        if self.labeled:
            out.append(self._label().alias("label"))
        out.append(pl.all_horizontal(checks).alias("ok") if checks else pl.lit(True).alias("ok"))
        out += [self._text(column).alias(f"pass:{column}") for column in self.passthrough]
        return out

    def _text(self, column: str) -> pl.Expr:
        """A column as text, whatever type it was read with (a whole float like 7.0 as ``7``)."""
        value = pl.col(column)
        if self.read_types[column] == pl.String:
            return value
        if self.read_types[column] == pl.Float64:
            whole = (value == value.floor()) & (value.abs() < 2.0**53)
            return pl.when(whole).then(value.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(value.cast(pl.String))
        return value.cast(pl.String)

    def _label(self) -> pl.Expr:
        label = self.spec.label
        if label.threshold is None:
            return pl.col(label.column).cast(pl.Float32)
        return (self._number(label.column, True) >= label.threshold).cast(pl.Float32)

    def _row_checks(self) -> list[pl.Expr]:
        """Row conditions the parsers cannot enforce; null counts as failed."""
        checks = []
        if self.labeled:
            label = self.spec.label
            if label.threshold is None:
                checks.append(pl.col(label.column).is_in([0, 1]).fill_null(False))
            else:
                checks.append(self._number(label.column, True).is_not_null())
        for f in self.spec.features:
            if f.type == "numeric" and f.integer:
                v = self._number(f.source, True)
                checks.append((v.is_null() | ((v == v.floor()) & (v.abs() <= 2.0**53))).fill_null(False))
            if f.type == "derived":
                v = self._number(f.source, True)
                checks.append(v.is_null() | tk.derived(v, f.derive, f.time_format).is_not_null())
        if self.spec.split.by == "time":
            checks.append(self._number(self.spec.split.column, True).is_not_null())
        return checks

    def _token(self, f: Feature, strict: bool) -> pl.Expr:
        if f.type == "vocabulary":  # no column: id 0 in every row
            return pl.lit(tk.PADDING, pl.Int64)
        if f.type == "categorical":
            token = tk.categorical_token(pl.col(f.source), f.tokens, strict=strict, max_bytes=f.max_bytes)
        elif f.type == "derived":
            token = tk.derived(self._number(f.source, strict), f.derive, f.time_format)
        elif f.transform == "bars":
            token = tk.bars_bucket(self._number(f.source, strict))
        else:
            token = tk.bucketize(self._number(f.source, strict), f.boundaries)
        return token.fill_null(tk.MISSING)

    def _dense(self, f: Feature) -> pl.Expr:
        value = self._number(f.source, True)
        return tk.log1p_dense(value) if f.transform == "log1p" else tk.identity_dense(value)

    def _sequence(self, f: Feature, strict: bool) -> pl.Expr:
        shared = self.spec.feature(f.shares)
        if f.columns:
            empty = pl.element().is_in(["", f.padding]) | pl.element().is_null()
            items = pl.concat_list([pl.col(c).fill_null("") for c in f.columns]).list.eval(pl.element().filter(~empty))
        else:
            items = pl.col(f.source).str.split(f.delimiter).list.eval(pl.element().filter(pl.element() != ""))
        if f.order == "newest_first":
            items = items.list.reverse()
        kind = self._item_kind(f)
        if kind == "string":  # tokens of string items come in parsed(), over all items at once
            return items
        return items.list.eval(tk.categorical_token(pl.element(), kind, strict=strict, max_bytes=shared.max_bytes))

    def _item_kind(self, f: Feature) -> str:
        """How the items of sequence ``f`` become tokens: as the feature it shares would read them."""
        shared = self.spec.feature(f.shares)
        return shared.tokens if shared.type in ("categorical", "vocabulary") else "int"

    # -- the careful path: which field of which row is bad ----------------------------------------
    def field_problems(self, typed: pl.DataFrame, raw: pl.DataFrame) -> dict[int, tuple[str, str]]:
        """Row position → (column, reason) of the first invalid column of each bad row, in column order."""
        checks: list[tuple[str, pl.Series, str]] = []
        frame = pl.concat([typed, raw.rename({c: f"raw:{c}" for c in raw.columns})], how="horizontal")

        def flag(column: str, condition: pl.Expr, reason: str) -> None:
            checks.append((column, frame.select(condition.fill_null(False)).to_series(), reason))

        present = lambda column: pl.col(f"raw:{column}").is_not_null()  # noqa: E731
        if self.labeled:
            label = self.spec.label
            if label.threshold is None:
                flag(label.column, ~pl.col(label.column).is_in([0, 1]).fill_null(False), "label is not 0 or 1")
            else:
                flag(label.column, self._number(label.column, False).is_null(), "label is not a number")
        if self.spec.split.by == "time":
            column = self.spec.split.column
            flag(column, self._number(column, False).is_null(), "no time to split by")
        for f in self.spec.features:
            if f.type != "vocabulary":
                self._feature_problems(f, present(f.raw_columns[0]), flag)
        order = {c: i for i, c in enumerate(self.columns)}
        checks.sort(key=lambda check: order.get(check[0], -1))  # stable: per column, checks in the order above
        problems: dict[int, tuple[str, str]] = {}
        for column, flags, reason in checks:
            for position in np.flatnonzero(flags.to_numpy()):
                if int(position) in problems:
                    continue
                value = raw.get_column(column)[int(position)]
                problems[int(position)] = (column, f"{reason}: {'empty field' if value is None else repr(value)}")
        return problems

    def _feature_problems(self, f: Feature, present: pl.Expr, flag) -> None:
        if f.type == "categorical":
            if f.tokens != "string":
                flag(f.source, present & tk.categorical_token(pl.col(f.source), f.tokens, strict=False).is_null(), tk.token_problem(f.tokens))
        elif f.type == "sequence":
            kind = self._item_kind(f)
            if kind != "string" and f.columns:
                for column in f.columns:
                    value = pl.col(column)
                    bad = ~value.is_in(["", f.padding]) & tk.categorical_token(value, kind, strict=False).is_null()
                    flag(column, value.is_not_null() & bad, f"an item is {tk.token_problem(kind)}")
            elif kind != "string":
                bad = self._sequence(f, strict=False).list.eval(pl.element().is_null()).list.any()
                flag(f.source, present & bad, f"an item is {tk.token_problem(kind)}")
        else:
            value = self._number(f.source, False)
            reason = "not an integer" if f.type == "numeric" and f.integer else "not a number"
            flag(f.source, present & value.is_null(), reason)
            if f.type == "numeric" and f.integer:
                flag(f.source, value.is_not_null() & ((value != value.floor()) | (value.abs() > 2.0**53)), "not an integer")
            if f.type == "derived":
                flag(f.source, value.is_not_null() & tk.derived(value, f.derive, f.time_format).is_null(), tk.time_problem(f.time_format))

    # -- converted frame → ParsedBlock --------------------------------------------------------
    def parsed(self, converted: pl.DataFrame, line_index: np.ndarray) -> ParsedBlock:
        spec = self.spec
        dense = converted.select([f"dense:{f.name}" for f in spec.dense]).to_numpy(order="c") if spec.dense else None
        if dense is not None:
            dense = np.ascontiguousarray(dense, dtype=np.float32)
        sequences, truncated = {}, {}
        for f in spec.sequences:
            sequences[f.name] = left_padded(converted.get_column(f"seq:{f.name}"), f.max_len, spec.feature(f.shares).max_bytes)
            truncated[f.name] = int((converted.get_column(f"len:{f.name}") > f.max_len).sum())
        tokens = converted.select([pl.col(f"tok:{f.name}").alias(f.name) for f in spec.sparse])
        return ParsedBlock(
            line_index=line_index,
            labels=converted.get_column("label").to_numpy() if self.labeled else None,
            tokens=tokens,
            dense=dense,
            sequences=sequences,
            truncated=truncated,
            times=converted.get_column("time").to_numpy() if spec.split.by == "time" else None,
            passthrough={column: converted.get_column(f"pass:{column}") for column in self.passthrough},
        )

    def empty(self) -> ParsedBlock:
        frame = pl.DataFrame({c: pl.Series([], dtype=t) for c, t in self.read_types.items()})
        return self.parsed(frame.select(self.exprs(strict=False)), np.zeros(0, np.int64))


def left_padded(lists: pl.Series, max_len: int, max_bytes: int = 64) -> np.ndarray:
    """List[int64] or List[String] (string tokens) of at most ``max_len`` each → int64 ``[n, max_len]``, items at the right end."""
    n = len(lists)
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = lists.explode().drop_nulls()
    if flat.dtype == pl.String:
        flat = tk.string_tokens(flat, max_bytes)
    flat = flat.to_numpy().astype(np.int64, copy=False)
    out = np.full((n, max_len), tk.PADDING, dtype=np.int64)
    if len(flat):
        rows = np.repeat(np.arange(n), lengths)
        starts = np.cumsum(lengths) - lengths
        columns = max_len - lengths[rows] + (np.arange(len(flat)) - starts[rows])
        out[rows, columns] = flat
    return out


# ---------------------------------------------------------------------------------------------
# Delimited text
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextLayout:
    """How one delimited file is laid out: delimiter, quoting, column names, header, label."""

    delimiter: str
    quote: str | None
    columns: tuple[str, ...]
    header: bool
    labeled: bool

    @property
    def delimiter_name(self) -> str:
        return _DELIMITER_NAMES.get(self.delimiter, repr(self.delimiter))


def detect_layout(path: Path, spec: DatasetSpec, head: bytes | None = None) -> TextLayout:
    """Delimiter, header and label column of ``path`` from its first line (``head``, when the
    input is a stream already peeked at) and the spec."""
    head = (first_line(path) if head is None else head).decode("utf-8", errors="replace")
    reader = spec.reader
    delimiter = reader.delimiter if reader.delimiter != "auto" else ("\t" if "\t" in head else ",")
    quote = reader.quote if delimiter != "\t" or reader.delimiter != "auto" else None
    fields = _split_line(head, delimiter, quote)
    label = spec.label.column
    header = reader.header == "true" or (reader.header == "auto" and (label in fields or (bool(reader.columns) and fields == list(reader.columns))))
    if reader.header == "auto" and not header and not reader.columns:
        header = True  # nothing names the columns otherwise
    needed = [c for f in spec.features for c in f.raw_columns] + ([spec.split.column] if spec.split.by == "time" else [])
    if header:
        columns = tuple(fields)
        if len(set(columns)) < len(columns) and len(columns) == len(reader.columns):
            columns = tuple(reader.columns)  # a header repeating names (cont_btag × 50): the spec's names
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise InputError(f"{path}:1: the header names column {duplicated[0]!r} twice")
        missing = [c for c in dict.fromkeys(needed) if c not in columns]
        if missing:
            raise InputError(f"{path}:1: the header has no column {missing[0]!r}, which spec {spec.origin} uses (header: {','.join(columns)[:200]})")
        return TextLayout(delimiter, quote, columns, True, label in columns)
    named = tuple(reader.columns)
    if len(fields) == len(named):
        return TextLayout(delimiter, quote, named, False, True)
    without_label = tuple(c for c in named if c != label)
    if label in named and len(fields) == len(without_label):
        return TextLayout(delimiter, quote, without_label, False, False)
    shown = _DELIMITER_NAMES.get(delimiter, repr(delimiter))
    raise InputError(
        f"{path}:1: expected {len(named)} {shown}-separated fields ({_column_range(named)}) or {len(without_label)} "
        f"without the label, found {len(fields)}; is this a {spec.name} file?"
    )


def _column_range(columns: Sequence[str]) -> str:
    return ", ".join(columns) if len(columns) <= 6 else f"{', '.join(columns[:3])}, ..., {columns[-1]}"


def _split_line(line: str, delimiter: str, quote: str | None) -> list[str]:
    if quote is None or quote not in line:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter, quotechar=quote))


class DelimitedParser:
    """Validates and converts blocks of lines of one delimited file (see the module docstring)."""

    def __init__(self, path: Path, spec: DatasetSpec, layout: TextLayout, bad_rows: BadRows, strict: bool,
                 *, text: TextStream | None = None, passthrough: Sequence[str] = ()):
        self.path = path
        self.layout = layout
        self.text = text  # a stream (stdin, gzip) read instead of memory-mapping ``path``
        _check_passthrough(path, passthrough, layout.columns)
        self.conversion = Conversion(spec, layout.columns, layout.labeled, passthrough)
        self.bad_rows = bad_rows
        self.strict = strict
        self._exprs = self.conversion.exprs(strict=True)
        self._separators = (len(layout.columns) - 1)

    def blocks(self, block_bytes: int) -> Iterator[Block]:
        """The file's blocks of data lines (a header line is not one)."""
        blocks = read_blocks(self.path, block_bytes) if self.text is None else self.text.blocks(block_bytes)
        if not self.layout.header:
            yield from blocks
            return
        for block in blocks:
            if block.first_line == 1:
                cut = block.data.index(b"\n") + 1
                block = Block(block.data[cut:], 2, block.num_lines - 1)
                if block.num_lines == 0:
                    continue
            yield block

    def parse(self, block: Block) -> ParsedBlock:
        if self._fast_path_applies(block):
            try:
                converted = pl.scan_csv(block.data, **self._csv_options(self.conversion.read_types)).select(self._exprs).collect()
                if converted.height == block.num_lines and converted.get_column("ok").all():
                    return self.conversion.parsed(converted, np.arange(block.num_lines))
            except pl.exceptions.PolarsError:
                pass
        return self._parse_carefully(block)

    def _fast_path_applies(self, block: Block) -> bool:
        """Whether every line has the right field count and a null can only mean an empty field.

        The CSV reader reads a number field of spaces as null, exactly like an empty field, so a
        block holding a space goes to the careful path (when some column is read as a number),
        which compares each typed value with the raw text.
        """
        data = block.data
        if self.layout.quote is not None and self.layout.quote.encode() in data:
            return False
        if self.conversion.typed_numbers and b" " in data:
            return False
        return data.count(self.layout.delimiter.encode()) == self._separators * block.num_lines

    def _csv_options(self, schema: dict) -> dict:
        return {
            "has_header": False,
            "separator": self.layout.delimiter,
            "quote_char": self.layout.quote,
            "new_columns": list(self.layout.columns),
            "schema": schema,
        }

    def _field_count(self, line: bytes) -> int:
        quote = self.layout.quote
        if quote is None or quote.encode() not in line:
            return line.count(self.layout.delimiter.encode()) + 1
        return len(_split_line(line.decode("utf-8", errors="replace"), self.layout.delimiter, quote))

    def _parse_carefully(self, block: Block) -> ParsedBlock:
        """Check every line; record (or, when strict, raise on) the first problem of each bad one."""
        lines = block.data.split(b"\n")[: block.num_lines]
        problems: dict[int, tuple[str, str]] = {}
        expected = len(self.layout.columns)
        kept = []
        for index, line in enumerate(lines):
            fields = self._field_count(line)
            if fields != expected:
                problems[index] = ("*", f"expected {expected} {self.layout.delimiter_name}-separated fields, found {fields}")
            else:
                kept.append(index)
        kept_index = np.asarray(kept, dtype=np.int64)
        typed = None
        if kept:
            data = b"\n".join(lines[i] for i in kept) + b"\n"
            typed = pl.read_csv(data, **self._csv_options(self.conversion.read_types), ignore_errors=True)
            raw = pl.read_csv(data, **self._csv_options({name: pl.String for name in self.layout.columns}))
            for position, problem in self.conversion.field_problems(typed, raw).items():
                problems.setdefault(int(kept_index[position]), problem)
        report_problems(self.path, block.first_line, problems, self.bad_rows, self.strict)
        good = np.asarray([i for i, line in enumerate(kept) if line not in problems], dtype=np.int64)
        if typed is None or len(good) == 0:
            return self.conversion.empty()
        return self.conversion.parsed(typed[good].select(self._exprs), kept_index[good])


def _check_passthrough(path: Path, passthrough: Sequence[str], columns: Sequence[str]) -> None:
    missing = [c for c in passthrough if c not in columns]
    if missing:
        raise InputError(f"{path}: has no column {missing[0]!r} to pass through (columns: {_column_range(columns)})")


def report_problems(path: Path, first_line_number: int, problems: dict[int, tuple[str, str]], bad_rows: BadRows, strict: bool) -> None:
    for index in sorted(problems):
        name, reason = problems[index]
        line_number = first_line_number + index
        if strict:
            raise InputError(format_bad_row(path, line_number, name, reason) + " (--strict stops at the first bad row)")
        bad_rows.add(path, line_number, name, reason)


# ---------------------------------------------------------------------------------------------
# Parquet
# ---------------------------------------------------------------------------------------------
PARQUET_MAGIC = b"PAR1"


def is_parquet(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == PARQUET_MAGIC


class ParquetSource:
    """Row batches of a Parquet file (``line`` numbers in messages are 1-based row numbers)."""

    def __init__(self, path: Path, spec: DatasetSpec, bad_rows: BadRows, strict: bool, *, passthrough: Sequence[str] = ()):
        self.path = path
        try:
            self.file_schema = pl.read_parquet_schema(path)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        columns = tuple(self.file_schema)
        needed = [c for f in spec.features for c in f.raw_columns] + ([spec.split.column] if spec.split.by == "time" else [])
        missing = [c for c in dict.fromkeys(needed) if c not in columns]
        if missing:
            raise InputError(f"{path}: has no column {missing[0]!r}, which spec {spec.origin} uses")
        self.labeled = spec.label.column in columns
        _check_passthrough(path, passthrough, columns)
        self.conversion = Conversion(spec, columns, self.labeled, passthrough)
        self.bad_rows = bad_rows
        self.strict = strict
        self.rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        self._exprs = self.conversion.exprs(strict=True)

    def batches(self, batch_rows: int) -> Iterator[tuple[int, int, ParsedBlock]]:
        """``(first row number, rows, parsed)`` for each batch of rows."""
        used = list(self.conversion.read_types)
        for start in range(0, self.rows, batch_rows):
            native = pl.scan_parquet(self.path).select(used).slice(start, batch_rows).collect()
            yield start + 1, native.height, self._parse(native, start + 1)

    def _parse(self, native: pl.DataFrame, first_row: int) -> ParsedBlock:
        return parse_native(self.conversion, self._exprs, native, self.path, first_row, self.bad_rows, self.strict)


def parse_native(conversion: Conversion, exprs: list[pl.Expr], native: pl.DataFrame, where, first_row: int,
                 bad_rows: BadRows, strict: bool) -> ParsedBlock:
    """Typed columns (a Parquet batch, a DataFrame handed to the Python API) → a :class:`ParsedBlock`.

    Bad rows are reported as ``where:<first_row + position>`` (:func:`report_problems`) and left out;
    ``ParsedBlock.line_index`` holds the positions of the rows kept.
    """
    schema = native.schema  # built once: each .schema access builds a new Schema object
    typed = native.select(_cast(schema, c, t) for c, t in conversion.read_types.items())
    try:
        converted = typed.select(exprs)
        if converted.get_column("ok").all() and not _cast_lost_values(native, typed):
            return conversion.parsed(converted, np.arange(native.height))
    except pl.exceptions.PolarsError:
        pass
    raw = native.select(pl.col(c).cast(pl.String) for c in native.columns)
    problems = conversion.field_problems(typed, raw)
    report_problems(where, first_row, problems, bad_rows, strict)
    good = np.asarray([i for i in range(native.height) if i not in problems], dtype=np.int64)
    if len(good) == 0:
        return conversion.empty()
    return conversion.parsed(typed[good].select(exprs), good)


def _cast_lost_values(native: pl.DataFrame, typed: pl.DataFrame) -> bool:
    """Whether a cast to the conversion's dtypes turned a value into null (text that is not a number).

    The strict expressions catch every other bad value (they raise, or clear the ``ok`` flag); this
    one check over all recast columns lets a clean block skip the per-field search, which runs a
    query per column and check (most of the time of encoding a small request).
    """
    before_types, after_types = native.schema, typed.schema
    recast = [c for c in typed.columns if before_types[c] != after_types[c]]
    if not recast:
        return False
    before = native.select(pl.col(recast).null_count()).row(0)
    after = typed.select(pl.col(recast).null_count()).row(0)
    return before != after


def _cast(schema: pl.Schema, column: str, dtype: pl.DataType) -> pl.Expr:
    """A Parquet column as the dtype the conversion reads (numbers as text, text as numbers)."""
    if schema[column] == dtype:
        return pl.col(column)
    if dtype == pl.Int8:  # a 0/1 label stored as another integer or float type
        value = pl.col(column).cast(pl.Float64, strict=False)
        return pl.when(value.is_in([0.0, 1.0])).then(value).cast(pl.Int8, strict=False).alias(column)
    if dtype == pl.String and schema[column].is_float():
        # integers that went through a float column (pandas' ints with NaN, Parquet doubles): 1.0 is "1"
        value = pl.col(column).fill_nan(None)
        whole = (value == value.floor()) & (value.abs() < 2.0**53)
        text = pl.when(whole).then(value.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(value.cast(pl.String))
        return text.alias(column)
    return pl.col(column).cast(dtype, strict=False)
