"""Taobao ad display/click data (Tianchi 56): the four raw tables → a store with behaviour sequences.

``ctrkit preprocess taobao --raw-sample R --ad-feature A --user-profile U --behavior-log B --out S``

Each impression of ``raw_sample`` gets its ad's features (``ad_feature``), its user's profile
(``user_profile``; empty where the user has none, as for some users of the real data) and the
user's last ``max_seq_len`` behaviours of ``behavior_log`` *strictly before* the impression's second
(category, brand and behaviour type, oldest first, left-padded): a behaviour at the impression's
own second or later never enters its sequence (the click's own page view is logged at that
second). The rows are those of the built-in ``taobao`` spec (``ctrkit/data/specs/taobao.yaml``),
encoded by the generic pipeline (train-only vocabularies, the encoder in the store).

**Split by time**, as the DMR / TaobaoAd_x1 protocol: day 8 (counted in UTC+8 from the first
impression's day) is test. The protocol's train is days 1-7 and has no validation split; this
command keeps day 7 as the validation split (the day just before test, so that early stopping
sees the same one-day-ahead shift as the test), so train is days 1-6.

**Memory.** The behaviour log (about 700M rows, 23 GB in the real data) is never loaded whole:
one streaming polars pass parses it, flags each row's first problem and writes it into
``buckets`` Parquet partitions by ``user % buckets``, beside the store (impressions likewise, joined
with their ads and profiles in the same pass); the checks then read the Parquet files, not the CSV;
then each bucket's behaviours (about ``log size / buckets``) are loaded, sorted by (user, time),
and each impression's history is a ``searchsorted`` of its (user, time) in them. The bucket count
defaults to one per 128 MB of behaviour log (or 32 MB of raw_sample, if more), and histories are
gathered 65,536 impressions at a time.

**Bad input** is a one-line error naming the file, line and column, before anything is written:
a non-integer or implausible (before 2000 or after 2100) ``time_stamp``, a non-integer user or
ad id, a ``clk`` other than 0/1, an impression whose ad is not in ``ad_feature``, a behaviour
whose user is in neither ``raw_sample`` nor ``user_profile``. Histories longer than
``max_seq_len`` are cut to the most recent items and counted (``truncated_sequences`` in the
store's metadata).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl

from ctrkit.data import pipeline
from ctrkit.data import tokens as tk
from ctrkit.data.rawtext import check_text_file, first_line
from ctrkit.data.readers import Conversion, ParsedBlock, _cast
from ctrkit.data.spec import DatasetSpec, Split, load_spec, with_overrides
from ctrkit.errors import ConfigError, InputError

DAY = 86_400
UTC8 = 8 * 3600
TRAIN_DAYS = 7  # the protocol's train days; the last of them is our valid split
TIME_RANGE = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01
BUCKET_LOG_BYTES = 128 << 20
BUCKET_SAMPLE_BYTES = 32 << 20
BLOCK_ROWS = 65_536
SEQUENCES = ("hist_btag", "hist_cate", "hist_brand")
_COLUMNS = {
    "raw_sample": ("user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"),
    "ad_feature": ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"),
    "user_profile": ("userid", "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
                     "shopping_level", "occupation", "new_user_class_level"),
    "behavior_log": ("user", "time_stamp", "btag", "cate", "brand"),
}
_FLAGS = {"raw_sample": "--raw-sample", "ad_feature": "--ad-feature", "user_profile": "--user-profile",
          "behavior_log": "--behavior-log"}


@dataclass(frozen=True)
class TaobaoTables:
    raw_sample: str | os.PathLike
    ad_feature: str | os.PathLike
    user_profile: str | os.PathLike
    behavior_log: str | os.PathLike

    def paths(self) -> dict[str, Path]:
        return {name: Path(getattr(self, name)) for name in _COLUMNS}


def taobao_spec(max_seq_len: int = 50, min_count: int = 1) -> DatasetSpec:
    """The built-in spec with ``--max-seq-len`` and ``--min-count`` applied."""
    if max_seq_len < 1:
        raise ConfigError(f"--max-seq-len must be >= 1, got {max_seq_len}")
    spec = with_overrides(load_spec("taobao"), min_count=min_count)
    return spec.with_features(replace(f, max_len=max_seq_len) if f.type == "sequence" else f for f in spec.features)


def time_split(first_time: int) -> Split:
    """Valid = day 7, test = day 8, days counted in UTC+8 from the day of ``first_time``."""
    day0 = (first_time + UTC8) // DAY * DAY - UTC8
    return Split("time", column="time_stamp", valid_from=float(day0 + (TRAIN_DAYS - 1) * DAY),
                 test_from=float(day0 + TRAIN_DAYS * DAY))


# ---------------------------------------------------------------------------------------------
# Reading and checking the tables
# ---------------------------------------------------------------------------------------------
def _header(path: Path, table: str) -> list[str]:
    names = [c.strip() for c in first_line(path).decode("utf-8", errors="replace").split(",")]
    missing = [c for c in _COLUMNS[table] if c not in names]
    if missing:
        raise InputError(f"{path}:1: {table} has no column {missing[0]!r} (expected {','.join(_COLUMNS[table])}; "
                         f"header: {','.join(names)[:200]})")
    return names


def _scan(path: Path, table: str) -> pl.LazyFrame:
    """A table as strings with trimmed column names and its 1-based ``line`` numbers."""
    names = _header(path, table)
    frame = pl.scan_csv(path, has_header=True, new_columns=names, infer_schema=False)
    return frame.with_row_index("line", offset=2)


def _as_int(column: str) -> pl.Expr:
    return pl.col(column).str.strip_chars().str.to_integer(strict=False)


def _first_problem(frame: pl.LazyFrame, checks: list[tuple[str, pl.Expr, str]]) -> tuple[int, str, str, str] | None:
    """``(line, column, reason, value)`` of the first row failing a check, in one streaming pass."""
    bad = pl.any_horizontal([condition for _, condition, _ in checks])
    found = frame.filter(bad).head(1).collect(engine="streaming")
    if found.height == 0:
        return None
    row = found.row(0, named=True)
    flags = found.select([condition.alias(str(i)) for i, (_, condition, _) in enumerate(checks)]).row(0)
    index = next(i for i, flag in enumerate(flags) if flag)
    column, _, reason = checks[index]
    return int(row["line"]), column, reason, row.get(column)


def _check(path: Path, frame: pl.LazyFrame, checks: list[tuple[str, pl.Expr, str]]) -> None:
    problem = _first_problem(frame, checks)
    if problem is not None:
        line, column, reason, value = problem
        shown = "empty field" if value in (None, "") else repr(value)
        raise InputError(f"{path}:{line}: {column}: {reason}: {shown}")


def _time_checks(column: str = "time_stamp") -> list[tuple[str, pl.Expr, str]]:
    value = _as_int(column)
    return [(column, value.is_null() | ~value.is_between(*TIME_RANGE).fill_null(False),
             "not a Unix time in seconds between 2000 and 2100")]


def _id_check(column: str) -> tuple[str, pl.Expr, str]:
    return (column, _as_int(column).is_null(), "not an integer id")


# ---------------------------------------------------------------------------------------------
# Staging: the tables joined and partitioned by user into Parquet files
# ---------------------------------------------------------------------------------------------
@dataclass
class Staged:
    directory: Path
    buckets: int
    first_time: int
    impressions: int
    behaviours: int


def stage(tables: TaobaoTables, directory: Path, buckets: int | None = None,
          notify: Callable[[str], None] | None = None) -> Staged:
    """Check the four tables and write impressions (with ad and profile) and behaviours by user bucket."""
    paths = tables.paths()
    for table, path in paths.items():
        try:
            check_text_file(path)
        except InputError as exc:
            raise InputError(f"{_FLAGS[table]}: {exc}") from None
    log_bytes = paths["behavior_log"].stat().st_size
    sample_bytes = paths["raw_sample"].stat().st_size
    buckets = buckets or max(1, math.ceil(log_bytes / BUCKET_LOG_BYTES), math.ceil(sample_bytes / BUCKET_SAMPLE_BYTES))

    ads = _scan(paths["ad_feature"], "ad_feature")
    _check(paths["ad_feature"], ads, [_id_check("adgroup_id")])
    ads = ads.select(_as_int("adgroup_id").alias("adgroup_id"), *[pl.col(c) for c in _COLUMNS["ad_feature"][1:]],
                     pl.lit(True).alias("ad_known"))
    ads = ads.with_columns(pl.col("brand").replace("NULL", None)).unique("adgroup_id", keep="first")
    profiles = _scan(paths["user_profile"], "user_profile")
    _check(paths["user_profile"], profiles, [_id_check("userid")])
    profiles = profiles.select(_as_int("userid").alias("user"), *[pl.col(c) for c in _COLUMNS["user_profile"][1:]])
    profiles = profiles.unique("user", keep="first")

    # one CSV pass per big table: parse, flag the first problem of each row, join, partition
    sample_path, log_path = paths["raw_sample"], paths["behavior_log"]
    sample_checks = [_id_check("user"), *_time_checks(), _id_check("adgroup_id"),
                     ("clk", ~pl.col("clk").str.strip_chars().is_in(["0", "1"]).fill_null(False), "not 0 or 1")]
    sample = _scan(sample_path, "raw_sample").select(
        "line", *[_as_int(c).alias(c) for c in ("user", "time_stamp", "adgroup_id")], pl.col("pid"),
        pl.col("clk").str.strip_chars(), _problem(sample_checks))
    joined = sample.join(ads, on="adgroup_id", how="left").join(profiles, on="user", how="left")
    impressions_dir = directory / "impressions"
    _sink_buckets(joined, impressions_dir, buckets)
    staged_sample = _check_staged(sample_path, "raw_sample", impressions_dir, sample_checks)
    unknown_ad = staged_sample.filter(pl.col("ad_known").is_null()).sort("line").head(1).collect()
    if unknown_ad.height:
        row = unknown_ad.row(0, named=True)
        raise InputError(f"{sample_path}:{row['line']}: adgroup_id: {row['adgroup_id']} is not in {paths['ad_feature']}")
    impressions, first_time = staged_sample.select(pl.len(), pl.col("time_stamp").min()).collect().row(0)
    if not impressions:
        raise InputError(f"{sample_path}: has no impressions")

    log_checks = [_id_check("user"), *_time_checks(),
                  ("btag", pl.col("btag").is_null() | (pl.col("btag").str.strip_chars() == ""), "no behaviour type")]
    log = _scan(log_path, "behavior_log").select(
        "line", _as_int("user").alias("user"), _as_int("time_stamp").alias("time_stamp"), pl.col("btag").str.strip_chars(),
        _as_int("cate").alias("cate"), _as_int("brand").alias("brand"), _problem(log_checks))
    behaviours_dir = directory / "behaviours"
    _sink_buckets(log, behaviours_dir, buckets)
    staged_log = _check_staged(log_path, "behavior_log", behaviours_dir, log_checks)
    known = pl.concat([staged_sample.select("user"), profiles.select("user")]).unique()
    stranger = staged_log.join(known, on="user", how="anti").sort("line").head(1).collect()
    if stranger.height:
        row = stranger.row(0, named=True)
        raise InputError(f"{log_path}:{row['line']}: user: {row['user']} is in neither {sample_path} nor {paths['user_profile']}")
    behaviours = staged_log.join(staged_sample.select("user").unique(), on="user", how="semi").select(pl.len()).collect().item()
    if notify is not None:
        notify(f"joined {impressions:,} impressions with {behaviours:,} behaviours of their users in {buckets} bucket(s)")
    return Staged(directory, buckets, int(first_time), int(impressions), int(behaviours))


def _problem(checks: list[tuple[str, pl.Expr, str]]) -> pl.Expr:
    """Index of the first check a row fails (null: none)."""
    return pl.coalesce([pl.when(condition).then(pl.lit(i, pl.Int16)) for i, (_, condition, _) in enumerate(checks)]).alias("problem")


def _sink_buckets(frame: pl.LazyFrame, directory: Path, buckets: int) -> None:
    """Stream ``frame`` into Parquet files partitioned by ``user % buckets`` (``bucket=K/``)."""
    bucket = (pl.col("user").fill_null(0) % buckets).alias("bucket")
    frame.with_columns(bucket).sink_parquet(pl.PartitionBy(directory, key="bucket", include_key=False), mkdir=True)


def _staged(directory: Path) -> pl.LazyFrame:
    return pl.scan_parquet(sorted(directory.rglob("*.parquet")), hive_partitioning=False)


def _check_staged(path: Path, table: str, directory: Path, checks: list[tuple[str, pl.Expr, str]]) -> pl.LazyFrame:
    """The staged rows, or an InputError naming the first bad line (its raw value read back from ``path``)."""
    staged = _staged(directory)
    bad = staged.filter(pl.col("problem").is_not_null()).sort("line").head(1).select("line", "problem").collect()
    if bad.height:
        line, index = bad.row(0)
        column, _, reason = checks[index]
        value = _scan(path, table).filter(pl.col("line") == line).select(column).collect().item()
        shown = "empty field" if value in (None, "") else repr(value)
        raise InputError(f"{path}:{line}: {column}: {reason}: {shown}")
    return staged


def _bucket_files(directory: Path, bucket: int) -> list[Path]:
    return sorted((directory / f"bucket={bucket}").glob("*.parquet")) if (directory / f"bucket={bucket}").is_dir() else []


# ---------------------------------------------------------------------------------------------
# Histories of one bucket
# ---------------------------------------------------------------------------------------------
class History:
    """One bucket's behaviours sorted by (user, time), to look up each impression's history."""

    def __init__(self, log: pl.DataFrame):
        order = np.lexsort((log.get_column("time_stamp").to_numpy(), log.get_column("user").to_numpy()))
        self.user = log.get_column("user").to_numpy()[order].astype(np.int64)
        self.key = (self.user << 32) + log.get_column("time_stamp").to_numpy()[order].astype(np.int64)
        self.tokens = {
            "hist_btag": tk.string_tokens(log.get_column("btag"), 64).fill_null(tk.MISSING).to_numpy()[order].astype(np.int64),
            "hist_cate": log.get_column("cate").fill_null(tk.MISSING).to_numpy()[order].astype(np.int64),
            "hist_brand": log.get_column("brand").fill_null(tk.MISSING).to_numpy()[order].astype(np.int64),
        }
        self.order = order

    def lookup(self, users: np.ndarray, times: np.ndarray, max_len: int) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        """Each impression's last ``max_len`` behaviours strictly before its time.

        Returns ``({"hist_btag"|"hist_cate"|"hist_brand": int64 tokens [n, max_len]}, index [n, max_len]
        into the bucket's log rows (-1 = padding), rows truncated)``; items are left-padded with
        :data:`~ctrkit.data.tokens.PADDING`, the most recent last.
        """
        users = users.astype(np.int64)
        end = np.searchsorted(self.key, (users << 32) + times.astype(np.int64), side="left")  # strictly before
        first = np.searchsorted(self.user, users, side="left")
        positions = end[:, None] - max_len + np.arange(max_len)[None, :]  # (n, L): oldest .. most recent
        valid = positions >= first[:, None]
        positions = np.where(valid, positions, 0)
        out = {}
        for name, values in self.tokens.items():
            out[name] = np.where(valid, values[positions], tk.PADDING) if len(values) else np.full(valid.shape, tk.PADDING)
        index = np.where(valid, self.order[positions], -1) if len(self.order) else np.full(valid.shape, -1)
        return out, index, int((end - first > max_len).sum())


def histories(log: pl.DataFrame, users: np.ndarray, times: np.ndarray, max_len: int) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """:meth:`History.lookup` over ``log`` (one bucket, or a whole small log)."""
    return History(log).lookup(users, times, max_len)


def _raw_items(log: pl.DataFrame) -> dict[str, np.ndarray]:
    """The log's btag/cate/brand as text, for the joined rows (a missing value: empty)."""
    return {name: log.get_column(column).cast(pl.String).fill_null("").to_numpy()
            for name, column in zip(SEQUENCES, ("btag", "cate", "brand"))}


def _joined_lists(raw_items: dict[str, np.ndarray], index: np.ndarray) -> list[pl.Series]:
    """``|``-joined histories (oldest first) of each row, from indices into the log (-1: none)."""
    valid = index >= 0
    rows = np.repeat(np.arange(len(index)), valid.sum(axis=1))
    out = []
    for name, values in raw_items.items():
        items = pl.DataFrame({"row": rows, "item": values[index[valid]] if len(values) else np.zeros(0, str)})
        joined = items.group_by("row", maintain_order=True).agg(pl.col("item").str.join("|"))
        full = pl.DataFrame({"row": np.arange(len(index))}).join(joined, on="row", how="left", maintain_order="left")
        out.append(full.get_column("item").fill_null("").alias(name))
    return out


class TaobaoSource:
    """The staged buckets as parsed blocks for the pipeline (a :class:`~ctrkit.data.pipeline.Source`)."""

    labeled = True

    def __init__(self, staged: Staged, spec: DatasetSpec, raw_sample: Path, joined_parts: Path | None = None):
        self.staged = staged
        self.joined_parts = joined_parts  # where to write the joined rows, one Parquet file per block
        self.spec = spec
        self.path = raw_sample
        self.max_len = spec.feature("hist_cate").max_len
        self._scalar_spec = spec.with_features(f for f in spec.features if f.type != "sequence")
        self._conversion: Conversion | None = None

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def blocks(self, block_bytes: int) -> Iterator[tuple[int, int, ParsedBlock]]:
        staged = self.staged
        for bucket in range(staged.buckets):
            files = _bucket_files(staged.directory / "impressions", bucket)
            if not files:
                continue
            impressions = pl.read_parquet(files, hive_partitioning=False).sort("line").drop("problem", "ad_known")
            log_files = _bucket_files(staged.directory / "behaviours", bucket)
            log = pl.read_parquet(log_files, hive_partitioning=False) if log_files else pl.DataFrame(
                schema={"user": pl.Int64, "time_stamp": pl.Int64, "btag": pl.String, "cate": pl.Int64, "brand": pl.Int64})
            log = log.filter(pl.col("user").is_in(impressions.get_column("user").unique().implode()))
            history = History(log)
            raw_items = _raw_items(log) if self.joined_parts is not None else None
            del log
            for start in range(0, impressions.height, BLOCK_ROWS):  # histories block by block: memory per block
                rows = impressions.slice(start, BLOCK_ROWS)
                parsed = self._parse(rows)
                sequences, index, truncated = history.lookup(rows.get_column("user").to_numpy(),
                                                         rows.get_column("time_stamp").to_numpy(), self.max_len)
                parsed.sequences = {name: sequences[name] for name in SEQUENCES}
                if raw_items is not None:
                    joined = rows.drop("line").with_columns(_joined_lists(raw_items, index))
                    joined.write_parquet(self.joined_parts / f"{bucket:06d}-{start:012d}.parquet")
                parsed.truncated = {name: truncated for name in SEQUENCES}
                yield rows.height, self.size * rows.height // max(1, staged.impressions), parsed

    def _parse(self, rows: pl.DataFrame) -> ParsedBlock:
        if self._conversion is None:
            columns = [c for c in rows.columns if c != "line"]
            self._conversion = Conversion(self._scalar_spec, columns, labeled=True)
        schema = rows.schema
        typed = rows.select(_cast(schema, c, t) for c, t in self._conversion.read_types.items())
        converted = typed.select(self._conversion.exprs(strict=False))
        bad = converted.filter(~pl.col("ok"))
        if bad.height:
            line = int(rows.get_column("line")[int(np.flatnonzero(~converted.get_column("ok").to_numpy())[0])])
            raise InputError(f"{self.path}:{line}: a field of this impression (or of its ad or user profile) is not valid")
        return self._conversion.parsed(converted, np.arange(rows.height))


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def preprocess_taobao(
    tables: TaobaoTables,
    out: str | os.PathLike,
    *,
    max_seq_len: int = 50,
    min_count: int = 1,
    strict: bool = False,
    chunk_rows: int = 65_536,
    overwrite: bool = False,
    buckets: int | None = None,
    joined_out: str | os.PathLike | None = None,
    progress: bool | None = None,
    notify: Callable[[str], None] | None = None,
) -> pipeline.PreprocessResult:
    """Build a store at ``out`` from the four raw tables (see the module docstring).

    ``joined_out``: also write the joined rows (the ``taobao`` spec's columns, histories
    ``|``-joined) to this Parquet file, in store-building order: ``ctrkit predict`` scores them.
    """
    spec = taobao_spec(max_seq_len, min_count)
    out = Path(out)
    pipeline._check_output(out, overwrite)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; remove it or pass --overwrite")
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.spill-{os.getpid()}-", dir=out.parent))
    try:
        staged = stage(tables, work, buckets, notify)
        spec = replace(spec, split=time_split(staged.first_time))
        parts = None
        if joined_out is not None:
            parts = work / "joined"
            parts.mkdir()
        source = TaobaoSource(staged, spec, Path(tables.raw_sample), parts)
        result = pipeline.preprocess(
            spec, [], out, pipeline.PipelineOptions(strict=strict, chunk_rows=chunk_rows), overwrite=overwrite,
            progress=progress, notify=notify, sources=[source],
            extra_meta={"taobao": {"tables": {k: str(v) for k, v in tables.paths().items()}, "buckets": staged.buckets,
                                   "impressions": staged.impressions, "behaviours_joined": staged.behaviours,
                                   "split": "days 1-6 train, day 7 valid, day 8 test (UTC+8)"}},
        )
        if parts is not None:
            from ctrkit.fileio import atomic_output

            with atomic_output(joined_out, "wb") as handle:
                pl.scan_parquet(sorted(parts.glob("*.parquet"))).sink_parquet(handle)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
