"""Raw values → int64 tokens: the transforms a dataset spec can name, as polars expressions.

A *token* is the int64 a raw value becomes before it meets a vocabulary. Every rule here is fixed
by its definition (never by a library's hash function), so the same raw value gives the same token
in any later process, polars or numpy version: a store's vocabularies keep encoding new rows.

* ``hex``: the integer a hexadecimal string spells (Criteo's 32-bit hashes).
* ``int``: the integer a decimal string spells.
* ``string``: a string of at most 8 UTF-8 bytes is the big-endian integer of its bytes (exact:
  text holds no NUL byte, so two strings never share it); a longer one folds its 8-byte pieces
  through the splitmix64 finaliser (a 64-bit hash: two of a million distinct long strings share
  a token with probability ~3e-8).
* ``bars``: BARS bucketing of a count, ``floor(ln(v)^2)`` for ``v > 2`` and ``floor(v)`` otherwise.
* ``bucketize``: the number of boundaries ``<= v``.
* a missing (empty) value is the token :data:`MISSING`, which no parsed value can take; a sequence
  pads with :data:`PADDING`, which never enters a vocabulary (id 0).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import polars as pl

MISSING = np.iinfo(np.int64).min  # token of an empty field: no parsed value can take it
PADDING = MISSING + 1  # sequence padding: never counted, so it always encodes to id 0
TOKEN_KINDS = ("string", "hex", "int")

_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB
_GOLDEN = 0x9E3779B97F4A7C15


# ---------------------------------------------------------------------------------------------
# Categorical tokens (polars)
# ---------------------------------------------------------------------------------------------
def hex_token(value: pl.Expr, *, strict: bool) -> pl.Expr:
    return value.str.to_integer(base=16, strict=strict)


def int_token(value: pl.Expr, *, strict: bool) -> pl.Expr:
    return value.str.to_integer(base=10, strict=strict)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (multiplication wraps)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX_1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX_2)
    return z ^ (z >> np.uint64(31))


def string_tokens(values: pl.Series, max_bytes: int) -> pl.Series:
    """The token of each string (see the module docstring); ``max_bytes`` bounds the fold.

    A string of at most 8 bytes is its hex spelling parsed as an integer, in polars; the fold of
    the longer ones runs in numpy once per distinct value (a polars expression of the fold grows
    exponentially with the number of pieces). Null and "" give null.
    """
    lengths = values.str.len_bytes()
    short = values.str.encode("hex").str.to_integer(base=16, dtype=pl.UInt64, strict=False).reinterpret(signed=True)
    long = (lengths > 8).fill_null(False)
    if not long.any():
        return pl.select(pl.when(lengths > 0).then(short)).to_series().alias(values.name)
    distinct = values.filter(long).unique()
    folded = pl.Series(_folded(distinct, max_bytes), dtype=pl.Int64)
    mapped = values.replace_strict(distinct, folded, default=None, return_dtype=pl.Int64)
    return pl.select(pl.when(long).then(mapped).when(lengths > 0).then(short)).to_series().alias(values.name)


def _folded(distinct: pl.Series, max_bytes: int) -> np.ndarray:
    """The splitmix64 fold of strings longer than 8 bytes (their first ``max_bytes`` bytes)."""
    lengths = distinct.str.len_bytes().to_numpy().astype(np.int64)
    width = 8 * max(1, math.ceil(max_bytes / 8))
    fixed = np.array(distinct.cast(pl.Binary).to_list(), dtype=f"S{width}").reshape(-1)  # prefix, NUL-padded
    words = np.frombuffer(fixed.tobytes(), dtype=">u8").reshape(len(distinct), width // 8).astype(np.uint64)
    with np.errstate(over="ignore"):
        folded = _mix(lengths.astype(np.uint64) * np.uint64(_GOLDEN))
        for k in range(width // 8):
            have = np.clip(lengths - 8 * k, 0, 8)  # bytes of piece k: its integer is right-aligned
            piece = np.where(have > 0, words[:, k] >> (np.uint64(8) * (8 - have).astype(np.uint64)), np.uint64(0))
            folded = np.where(lengths > 8 * k, _mix(folded ^ piece), folded)
    return folded.view(np.int64)


def string_token(value: pl.Expr, max_bytes: int) -> pl.Expr:
    """:func:`string_tokens` as an expression."""
    return value.map_batches(lambda s: string_tokens(s, max_bytes), return_dtype=pl.Int64)


def categorical_token(value: pl.Expr, kind: str, *, strict: bool, max_bytes: int = 64) -> pl.Expr:
    """String values → int64 tokens by ``kind``; null stays null. ``strict`` raises on a bad value."""
    if kind == "hex":
        return hex_token(value, strict=strict)
    if kind == "int":
        return int_token(value, strict=strict)
    return string_token(value, max_bytes)


def token_problem(kind: str) -> str:
    return {"hex": "not a hexadecimal hash", "int": "not an integer", "string": "not a string"}[kind]


# ---------------------------------------------------------------------------------------------
# Numeric transforms
# ---------------------------------------------------------------------------------------------
def bars_bucket(values: pl.Expr) -> pl.Expr:
    """BARS bucketing of a count: ``floor(ln(v)^2)`` for ``v > 2``, else ``floor(v)`` (Int64)."""
    squared_log = (values.cast(pl.Float64).log() ** 2).floor().cast(pl.Int64)
    return pl.when(values > 2).then(squared_log).otherwise(values.cast(pl.Float64).floor().cast(pl.Int64))


def bars_bucket_numpy(values: np.ndarray) -> np.ndarray:
    """:func:`bars_bucket` for an integer numpy array (the synthetic data's click model uses it)."""
    v = np.asarray(values).astype(np.int64, copy=False)
    safe = np.maximum(v, 3).astype(np.float64)
    return np.where(v > 2, np.floor(np.log(safe) ** 2).astype(np.int64), v)


def bucketize(values: pl.Expr, boundaries: Sequence[float]) -> pl.Expr:
    """Index of the bucket: the number of boundaries ``<= v`` (Int64; null stays null)."""
    count = pl.lit(0, pl.Int64)
    for bound in boundaries:
        count = count + (values >= bound).cast(pl.Int64)
    return pl.when(values.is_not_null()).then(count)


def log1p_dense(values: pl.Expr) -> pl.Expr:
    """``log1p(max(v, 0))`` as float32, missing → 0."""
    return values.clip(lower_bound=0).cast(pl.Float64).log1p().fill_null(0.0).cast(pl.Float32)


def identity_dense(values: pl.Expr) -> pl.Expr:
    return values.cast(pl.Float32).fill_null(0.0)


# ---------------------------------------------------------------------------------------------
# Derived time columns
# ---------------------------------------------------------------------------------------------
TIME_FORMATS = ("yymmddhh", "unix_seconds")
DERIVATIONS = ("hour_of_day", "weekday", "weekend", "date")


def _datetime(values: pl.Expr, time_format: str) -> pl.Expr:
    """A datetime from ``YYMMDDHH`` (20YY) or Unix seconds (UTC); null where it is no valid time."""
    if time_format == "unix_seconds":
        return pl.from_epoch(values.cast(pl.Int64), time_unit="s")
    v = values.cast(pl.Int64)
    year, month, day, hour = 2000 + v // 1_000_000, v // 10_000 % 100, v // 100 % 100, v % 100
    ok = (v >= 0) & (v < 100_000_000) & month.is_between(1, 12) & day.is_between(1, 31) & hour.is_between(0, 23)
    stamp = pl.datetime(year, month, day, hour)
    # a day past its month's end (31 Nov) rolls over in pl.datetime: compare the day back
    return pl.when(ok & (stamp.dt.day() == day)).then(stamp)


def derived(values: pl.Expr, derivation: str, time_format: str) -> pl.Expr:
    """A categorical token derived from a time value (Int64, null where the time is invalid)."""
    stamp = _datetime(values, time_format)
    if derivation == "hour_of_day":
        return stamp.dt.hour().cast(pl.Int64)
    if derivation == "weekday":  # 1 = Monday .. 7 = Sunday
        return stamp.dt.weekday().cast(pl.Int64)
    if derivation == "weekend":
        return (stamp.dt.weekday() >= 6).cast(pl.Int64)
    return stamp.dt.date().cast(pl.Int64)  # days since 1970-01-01


def time_problem(time_format: str) -> str:
    return "not a YYMMDDHH time" if time_format == "yymmddhh" else "not a Unix time in seconds"


# ---------------------------------------------------------------------------------------------
# Hash buckets (numpy)
# ---------------------------------------------------------------------------------------------
def hash_bucket_ids(tokens: np.ndarray, buckets: int) -> np.ndarray:
    """Ids ``1 .. buckets`` from int64 tokens by splitmix64 (missing is a token like any other)."""
    z = tokens.astype(np.int64, copy=False).view(np.uint64) * np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX_1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX_2)
    z ^= z >> np.uint64(31)
    return (z % np.uint64(buckets)).astype(np.int32) + 1
