"""Rows handed over in memory (pandas or polars DataFrames, dicts of columns, lists of row dicts) →
model batches, by a dataset encoder.

The rows go through the same conversion as a raw file (:class:`~ctrkit.data.readers.Conversion`
and :func:`~ctrkit.data.readers.parse_native`), so a row scores the same whether it came from a
file, a DataFrame or an HTTP request. In-memory values are forgiving where files cannot be:

* numbers may arrive as floats (pandas turns an integer column with a missing value into
  ``float64``): ``1.0`` reads as ``1`` wherever a token is read;
* missing values may be ``None`` or ``NaN``; they become the feature's missing token, as an
  empty field of a raw file does;
* extra columns (an id, the label) are ignored here; the service refuses them itself.

A row that cannot be read (a non-number in a numeric column, a malformed sequence item) raises an
:class:`~ctrkit.errors.InputError` that names its position and column, or with ``strict=False`` is
left out and reported in :attr:`EncodedRows.problems`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

from ctrkit.data.rawtext import BadRows
from ctrkit.data.readers import Conversion, parse_native
from ctrkit.data.spec import Split
from ctrkit.errors import InputError


@dataclass
class EncodedRows:
    """Model batch of the rows that could be read, and what happened to the others."""

    batch: dict[str, np.ndarray]  # sparse ids, dense, seq:<name> ids (no label)
    kept: np.ndarray  # int64 positions (0-based) of the rows in ``batch``, in input order
    rows: int  # rows handed in
    problems: list[dict] = field(default_factory=list)  # {"row", "column", "reason"} of rows left out

    @property
    def oov_share(self) -> float:
        """Share of the sparse values (over all rows kept and sparse features) with the OOV id 0."""
        sparse = self.batch["sparse"]
        return float((sparse == 0).mean()) if sparse.size else 0.0


def required_columns(spec) -> list[str]:
    """The raw columns that ``spec``'s features read, in spec order (no label, no split column)."""
    return list(dict.fromkeys(c for f in spec.features for c in f.raw_columns))


def as_polars(data: Any, where: str = "rows") -> pl.DataFrame:
    """A polars DataFrame of ``data``: polars or pandas DataFrame, dict of columns, or list of row dicts."""
    if isinstance(data, pl.DataFrame):
        return data
    if type(data).__module__.startswith("pandas") and hasattr(data, "to_dict"):
        return _from_pandas(data, where)
    if isinstance(data, Mapping):
        return _from_columns({str(k): _column_values(v) for k, v in data.items()}, where)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if not all(isinstance(row, Mapping) for row in data):
            raise InputError(f"{where}: a list of rows must hold one dict of column -> value per row")
        columns = list(dict.fromkeys(str(k) for row in data for k in row))
        return _from_columns({c: [row.get(c) for row in data] for c in columns}, where)
    raise InputError(f"{where}: expected a pandas or polars DataFrame, a dict of columns or a list of row dicts, "
                     f"got {type(data).__name__}")


def _from_pandas(frame: Any, where: str) -> pl.DataFrame:
    try:
        return pl.from_pandas(frame, include_index=False)
    except (TypeError, ValueError, ImportError, pl.exceptions.PolarsError):
        # mixed object columns that Arrow cannot type: column by column, as Python values
        return _from_columns({str(c): list(frame[c]) for c in frame.columns}, where)


def _column_values(values: Any) -> list:
    if isinstance(values, np.ndarray):
        return values.tolist()
    if isinstance(values, pl.Series):
        return values.to_list()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        return [values]  # one row given as a dict of scalars
    return list(values)


def _from_columns(columns: dict[str, list], where: str) -> pl.DataFrame:
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}: {n}" for name, n in lengths.items())
        raise InputError(f"{where}: columns of different lengths ({shown})")
    return pl.DataFrame({name: _series(name, values) for name, values in columns.items()}, strict=False)


def _series(name: str, values: list) -> pl.Series:
    """One column of Python values: numbers stay numbers, anything else becomes text; NaN is missing."""
    cleaned = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    present = [v for v in cleaned if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pl.Series(name, cleaned, dtype=pl.Float64 if any(isinstance(v, float) for v in present) else pl.Int64)
    return pl.Series(name, [None if v is None else str(v) for v in cleaned], dtype=pl.String)


def encode_rows(encoder, data: Any, *, strict: bool = True, where: str = "rows") -> EncodedRows:
    """Encode in-memory rows with ``encoder`` (a :class:`~ctrkit.data.encoder.DatasetEncoder`).

    Raises:
        InputError: a column the encoder reads is missing (named), or, with ``strict``, the first
            row that cannot be read (``rows: row <number, 1-based>: column <name>: <reason>``).
    """
    from ctrkit.data.pipeline import encoded_block

    frame = as_polars(data, where)
    spec = encoder.spec
    needed = required_columns(spec)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InputError(f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                         f"(the model reads {len(needed)} columns: {', '.join(needed)})")
    types = frame.schema
    native = frame.select([pl.col(c).fill_nan(None) if types[c].is_float() else
                           pl.col(c).cast(pl.String) if types[c] == pl.Null else pl.col(c) for c in needed])
    conversion, exprs = _conversion(encoder, needed)
    bad_rows = BadRows(keep_examples=native.height)
    parsed = parse_native(conversion, exprs, native, where, 1, bad_rows, strict=False)
    if strict and bad_rows.examples:
        first = bad_rows.examples[0]
        raise InputError(f"{where}: row {first['line']}: column {first['field']}: {first['reason']}"
                         + (f" (and {bad_rows.count - 1} more bad rows)" if bad_rows.count > 1 else ""))
    batch = encoded_block(encoder, parsed)  # no rows: zero-row arrays of the right shapes and dtypes
    problems = [{"row": e["line"] - 1, "column": e["field"], "reason": e["reason"]} for e in bad_rows.examples]
    return EncodedRows(batch=batch, kept=parsed.line_index.astype(np.int64), rows=native.height, problems=problems)


def _conversion(encoder, columns: list[str]) -> tuple[Conversion, list[pl.Expr]]:
    """The conversion of ``encoder``'s raw columns and its strict expressions, built once per encoder
    (a service encodes every request with them)."""
    cached = getattr(encoder, "_rows_conversion", None)
    if cached is None:
        # rows being scored belong to no split: a split by time must not ask them for its column
        conversion = Conversion(replace(encoder.spec, split=Split()), columns, labeled=False)
        cached = encoder._rows_conversion = (conversion, conversion.exprs(strict=True))
    return cached
