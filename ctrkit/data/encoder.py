"""Tokens → ids: vocabularies counted on the train split, and the self-contained encoder.

The encoder of a store is its spec plus one vocabulary per sparse feature (int64 tokens in id
order: element ``i`` has id ``i + 1``, id 0 is OOV and sequence padding; a hashed feature's
"vocabulary" is ``0 .. N-1``, bucket ``i`` having id ``i + 1``). It lives in the store (the spec in
``__meta__["encoder"]``, the vocabularies as ``array/vocab/<feature>``), and
:func:`export_encoder` (:func:`copy_encoder_to_run_dir` for trainers) copies it into one file beside a checkpoint (``encoder.npz``: the
vocabularies and the JSON record as plain arrays, read back without pickle), so that raw rows can be
encoded for prediction from either.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl

from ctrkit.data import tokens as tk
from ctrkit.data.spec import DatasetSpec, spec_from_dict
from ctrkit.errors import InputError, StoreError
from ctrkit.schema import Field, Schema

ENCODER_FORMAT = "ctrkit-encoder"
ENCODER_VERSION = 1
ENCODER_FILE = "encoder.npz"
_RECORD_KEY = "__record__"


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------
class TokenCounter:
    """Counts tokens per field over many blocks; memory follows the number of distinct tokens."""

    MERGE_ROWS = 1 << 20

    def __init__(self, fields: Sequence[str]):
        self.fields = tuple(fields)
        self._merged: list[pl.DataFrame | None] = [None] * len(fields)
        self._parts: list[list[pl.DataFrame]] = [[] for _ in fields]
        self._part_rows = [0] * len(fields)

    def update(self, frame: pl.DataFrame, fields: Sequence[int] | None = None) -> None:
        """Count the tokens of a block (column ``j`` of ``frame`` is field ``fields[j]``), fields in parallel."""
        if frame.height == 0 or frame.width == 0:
            return
        fields = range(frame.width) if fields is None else fields
        queries = [frame.lazy().group_by(pl.col(name).alias("token")).agg(pl.len().cast(pl.Int64).alias("count")) for name in frame.columns]
        for j, counts in zip(fields, pl.collect_all(queries)):
            self._add(j, counts)

    def update_values(self, j: int, values: np.ndarray) -> None:
        """Count raw int64 tokens into field ``j`` (sequence items counting towards their shared field)."""
        if len(values):
            counts = pl.DataFrame({"token": values}).group_by("token").agg(pl.len().cast(pl.Int64).alias("count"))
            self._add(j, counts)

    def _add(self, j: int, counts: pl.DataFrame) -> None:
        self._parts[j].append(counts)
        self._part_rows[j] += counts.height
        merged_rows = 0 if self._merged[j] is None else self._merged[j].height
        if self._part_rows[j] > max(2 * merged_rows, self.MERGE_ROWS):  # amortised merging
            self._merge(j)

    def _merge(self, j: int) -> None:
        frames = ([self._merged[j]] if self._merged[j] is not None else []) + self._parts[j]
        if frames:
            combined = pl.concat(frames)
            self._merged[j] = combined.group_by("token").agg(pl.col("count").sum())
        self._parts[j], self._part_rows[j] = [], 0

    def vocabulary(self, j: int, min_count: int) -> np.ndarray:
        """Tokens kept for field ``j`` in id order (most frequent first, ties by token; id = index + 1)."""
        self._merge(j)
        merged = self._merged[j]
        if merged is None:
            return np.zeros(0, np.int64)
        kept = merged.filter(pl.col("count") >= min_count).sort(["count", "token"], descending=[True, False])
        return kept.get_column("token").to_numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------
class Encoder:
    """Maps raw tokens of each sparse field to ids with that field's vocabulary (0 = OOV).

    Fields whose tokens span a small range (bucketed numbers, derived times) use a lookup table;
    the others a hash map in polars, all fields in parallel; a field with ``hash_buckets[j] > 0``
    has no vocabulary: its id is ``1 + splitmix64(token) % N``. :data:`~ctrkit.data.tokens.PADDING`
    is always id 0.
    """

    LOOKUP_SPAN = 1 << 16

    def __init__(self, vocabularies: Sequence[np.ndarray], hash_buckets: Sequence[int] | None = None):
        self.hash_buckets = list(hash_buckets or [0] * len(vocabularies))
        self._keys = [pl.Series("token", vocab, dtype=pl.Int64) for vocab in vocabularies]
        self._ids = [pl.Series("id", np.arange(1, len(vocab) + 1, dtype=np.int32)) for vocab in vocabularies]
        self._tables = [None if n else self._lookup_table(vocab) for vocab, n in zip(vocabularies, self.hash_buckets)]

    def _lookup_table(self, vocab: np.ndarray) -> tuple[int, np.ndarray, int] | None:
        """``(lowest token, ids by token - lowest with OOV last, id of MISSING)`` or None."""
        present = vocab[vocab != tk.MISSING]
        low = int(present.min()) if len(present) else 0
        span = int(present.max()) - low + 1 if len(present) else 1
        if span > self.LOOKUP_SPAN:
            return None
        table = np.zeros(span + 1, dtype=np.int32)  # the extra slot answers out-of-range tokens
        ids = np.arange(1, len(vocab) + 1, dtype=np.int32)
        table[present - low] = ids[vocab != tk.MISSING]
        missing_id = int(ids[vocab == tk.MISSING][0]) if (vocab == tk.MISSING).any() else 0
        return low, table, missing_id

    @staticmethod
    def _look_up(tokens: np.ndarray, low: int, table: np.ndarray, missing_id: int) -> np.ndarray:
        offset = tokens - low
        outside = (offset < 0) | (offset >= len(table) - 1)
        ids = table[np.where(outside, len(table) - 1, offset)]
        ids[tokens == tk.MISSING] = missing_id
        return ids

    def encode(self, tokens: Sequence[np.ndarray]) -> np.ndarray:
        """int64 tokens, one array per field → int32 ids [n, fields] (row-major, ready for a chunk)."""
        n = len(tokens[0]) if len(tokens) else 0
        out = np.empty((n, len(tokens)), dtype=np.int32)
        mapped = [j for j, table in enumerate(self._tables) if table is None and not self.hash_buckets[j]]
        if mapped and n:
            frame = pl.DataFrame({f"f{j}": tokens[j] for j in mapped})
            ids = frame.select(
                pl.col(f"f{j}").replace_strict(self._keys[j], self._ids[j], default=0, return_dtype=pl.Int32) for j in mapped
            )
            out[:, mapped] = ids.to_numpy(order="c")
        for j, table in enumerate(self._tables):
            if table is not None:
                out[:, j] = self._look_up(tokens[j], *table)
            elif self.hash_buckets[j]:
                out[:, j] = tk.hash_bucket_ids(tokens[j], self.hash_buckets[j])
        return out

    def encode_sequence(self, j: int, tokens: np.ndarray) -> np.ndarray:
        """int64 tokens ``[n, L]`` (PADDING where empty) → int32 ids of field ``j``'s vocabulary."""
        flat = tokens.reshape(-1)
        ids = self._encode_one(j, flat)
        ids[flat == tk.PADDING] = 0
        return ids.reshape(tokens.shape)

    def _encode_one(self, j: int, tokens: np.ndarray) -> np.ndarray:
        if self.hash_buckets[j]:
            return tk.hash_bucket_ids(tokens, self.hash_buckets[j])
        if self._tables[j] is not None:
            return self._look_up(tokens, *self._tables[j])
        series = pl.Series("t", tokens, dtype=pl.Int64)
        return series.replace_strict(self._keys[j], self._ids[j], default=0, return_dtype=pl.Int32).to_numpy().copy()


# ---------------------------------------------------------------------------------------------
# Out-of-vocabulary shares: the train split's, and a scored file's against it
# ---------------------------------------------------------------------------------------------
OOV_RECORD_KEY = "train_oov_share"
OOV_MIN_ROWS = 200  # fewer scored rows: shares too noisy to warn about
OOV_OVERALL_MARGIN = 0.10  # warn when the overall share is this much above training's …
OOV_OVERALL_RATIO = 1.5  # … and this many times training's
OOV_FEATURE_MARGIN = 0.25  # a feature is named when its share is this much above training's


class OovCounter:
    """Counts, per sparse feature with a vocabulary, the values encoded as the OOV id 0.

    Hashed features (never OOV) and ``vocabulary`` features (no column of their own) are left out.
    """

    def __init__(self, spec: DatasetSpec):
        kept = [(j, f.name) for j, f in enumerate(spec.sparse) if not f.hash_buckets and f.type != "vocabulary"]
        self.columns = [j for j, _ in kept]
        self.names = [name for _, name in kept]
        self.rows = 0
        self.oov = np.zeros(len(kept), dtype=np.int64)

    def update(self, ids: np.ndarray) -> None:
        """``ids``: int32 ``[n, sparse features]`` of encoded rows."""
        if len(ids) and self.columns:
            self.oov += (ids[:, self.columns] == 0).sum(axis=0)
        self.rows += len(ids)

    def shares(self) -> dict[str, float]:
        return {name: float(n) / self.rows if self.rows else 0.0 for name, n in zip(self.names, self.oov)}

    def record(self) -> dict:
        """What the encoder record keeps: ``{"rows": n, "features": {name: share}}``."""
        return {"rows": int(self.rows), "features": {k: round(v, 6) for k, v in self.shares().items()}}


def oov_shift_warning(train: dict | None, scored: OovCounter, show: int = 5) -> str | None:
    """A one-line warning when ``scored`` rows are far more often OOV than the train split was.

    Compares the overall share (all counted features together) with training's: a warning when it
    is more than :data:`OOV_OVERALL_MARGIN` above it and :data:`OOV_OVERALL_RATIO` times it, naming
    the features that moved most (more than :data:`OOV_FEATURE_MARGIN`). ``train`` is the encoder
    record's ``train_oov_share`` (None for encoders written before it existed: no warning).
    """
    if not train or scored.rows < OOV_MIN_ROWS or not scored.names:
        return None
    reference = train.get("features", {})
    names = [n for n in scored.names if n in reference]
    if not names:
        return None
    now = scored.shares()
    before_all = sum(reference[n] for n in names) / len(names)
    now_all = sum(now[n] for n in names) / len(names)
    if not (now_all > before_all + OOV_OVERALL_MARGIN and now_all > OOV_OVERALL_RATIO * before_all):
        return None
    moved = sorted(((now[n] - reference[n], n) for n in names), reverse=True)
    worst = ", ".join(f"{n} {reference[n]:.0%}→{now[n]:.0%}" for d, n in moved[:show] if d > OOV_FEATURE_MARGIN)
    return (f"{now_all:.1%} of the sparse values are out of vocabulary, against {before_all:.1%} in the training "
            f"data: these rows may come from another distribution than the model was trained on"
            + (f" (most changed: {worst})" if worst else ""))


def vocab_array_name(field_name: str) -> str:
    return f"vocab/{field_name}"


# ---------------------------------------------------------------------------------------------
# The self-contained encoder of a store
# ---------------------------------------------------------------------------------------------
@dataclass
class DatasetEncoder:
    """A spec with its vocabularies: encodes raw rows exactly as the store's rows were encoded."""

    spec: DatasetSpec
    vocabularies: dict[str, np.ndarray]  # sparse feature → tokens in id order
    source: str = ""  # where it was loaded from, for messages
    train_oov: dict | None = None  # OOV shares of the train split (OovCounter.record); None before they were kept

    def __post_init__(self) -> None:
        sparse = self.spec.sparse
        self.encoder = Encoder([self.vocabularies[f.name] for f in sparse], [f.hash_buckets for f in sparse])
        self._index = {f.name: j for j, f in enumerate(sparse)}

    @property
    def schema(self) -> Schema:
        return schema_of(self.spec, [self.vocabularies[f.name] for f in self.spec.sparse])

    def sparse_index(self, name: str) -> int:
        return self._index[name]

    def record(self) -> dict:
        return encoder_record(self.spec, self.train_oov)


def schema_of(spec: DatasetSpec, vocabularies: Sequence[np.ndarray]) -> Schema:
    """Store schema: sparse features (vocabulary + OOV id), dense features, then sequences."""
    sparse = [Field(f.name, "sparse", vocab_size=len(v) + 1) for f, v in zip(spec.sparse, vocabularies)]
    dense = [Field(f.name, "dense") for f in spec.dense]
    sequences = [Field(f.name, "sequence", max_len=f.max_len, shares=f.shares) for f in spec.sequences]
    return Schema(tuple(sparse + dense + sequences), label=spec.label.column)


def encoder_record(spec: DatasetSpec, train_oov: dict | None = None) -> dict:
    """The JSON record of an encoder; ``train_oov`` (:meth:`OovCounter.record` of the train split)
    is kept under ``train_oov_share`` when known."""
    record = {
        "format": ENCODER_FORMAT,
        "version": ENCODER_VERSION,
        "spec": spec.to_dict(),
        "missing_token": int(tk.MISSING),
        "token_rules": "ctrkit.data.tokens (string/hex/int tokens, bars, bucketize, derived times)",
        "vocabulary_order": "decreasing train count, then token; id = index + 1; 0 = OOV and padding",
        "vocabularies": {f.name: f"array/{vocab_array_name(f.name)}" for f in spec.sparse},
    }
    if train_oov is not None:
        record[OOV_RECORD_KEY] = train_oov
    return record


def _train_oov(record: dict) -> dict | None:
    value = record.get(OOV_RECORD_KEY)
    return value if isinstance(value, dict) and isinstance(value.get("features"), dict) else None


def _spec_of_record(record: dict, where: str) -> DatasetSpec:
    if record.get("format") == ENCODER_FORMAT:
        if record.get("version") != ENCODER_VERSION:
            raise StoreError(f"{where}: encoder version {record.get('version')!r}; this ctrkit reads version {ENCODER_VERSION}")
        return spec_from_dict(record["spec"], origin=f"{where} (stored spec)")
    if record.get("format") == "criteo":  # stores built before the generic pipeline
        from ctrkit.data.criteo import criteo_spec

        return criteo_spec(numeric="dense" if record.get("dense_fields") else "categorical")
    raise StoreError(f"{where}: has no encoder of raw rows (encoder format {record.get('format')!r})")


def load_encoder(source) -> DatasetEncoder:
    """The encoder of a :class:`~ctrkit.data.store.Store`, a store path, an ``encoder.npz`` or a directory holding one."""
    from ctrkit.data.store import Store

    if isinstance(source, Store):
        return _store_encoder(source)
    path = Path(source)
    if path.is_dir() and (path / "data.mdb").is_file():
        return _store_encoder(Store(path))
    if path.is_dir():
        path = path / ENCODER_FILE
    if not path.is_file():
        raise InputError(f"{path}: no such encoder file (ctrkit.data.encoder.export_encoder writes one)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        record = json.loads(arrays.pop(_RECORD_KEY).tobytes().decode())
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: not a ctrkit encoder file ({exc})") from None
    spec = _spec_of_record(record, str(path))
    missing = [f.name for f in spec.sparse if f"vocab/{f.name}" not in arrays]
    if missing:
        raise InputError(f"{path}: has no vocabulary for feature {missing[0]!r}")
    return DatasetEncoder(spec, {f.name: arrays[f"vocab/{f.name}"] for f in spec.sparse}, str(path), _train_oov(record))


def _store_encoder(store) -> DatasetEncoder:
    record = store.meta.get("encoder")
    if not isinstance(record, dict):
        raise StoreError(f"store {store.path} has no encoder of raw rows (it was not built by ctrkit preprocess)")
    spec = _spec_of_record(record, f"store {store.path}")
    vocabularies = {f.name: store.vocabulary(f.name) for f in spec.sparse}
    return DatasetEncoder(spec, vocabularies, str(store.path), _train_oov(record))


def export_encoder(store, directory: str | os.PathLike) -> Path:
    """Write the encoder of ``store`` (a Store or its path) to ``directory/encoder.npz``, atomically.

    Trainers call it once per run directory, so that ``ctrkit predict`` needs only the checkpoint.
    """
    from ctrkit.fileio import atomic_output

    encoder = load_encoder(store)
    record = json.dumps(encoder.record(), sort_keys=True).encode()
    arrays = {f"vocab/{name}": np.asarray(v, dtype=np.int64) for name, v in encoder.vocabularies.items()}
    arrays[_RECORD_KEY] = np.frombuffer(record, dtype=np.uint8)
    target = Path(directory) / ENCODER_FILE
    with atomic_output(target, "wb") as handle:
        np.savez(handle, **arrays)
    return target


def copy_encoder_to_run_dir(store_path, run_dir: str | os.PathLike) -> Path | None:
    """Write the encoder of the store at ``store_path`` into ``run_dir`` (``encoder.npz``), atomically.

    Trainers call it once per run directory, so that ``ctrkit predict CKPT RAW`` needs only the
    checkpoint. A store built without an encoder (by hand, with a ``StoreWriter``) has nothing to
    copy: ``None``, and nothing written.
    """
    from ctrkit.data.store import Store

    store = store_path if isinstance(store_path, Store) else Store(store_path)
    if not isinstance(store.meta.get("encoder"), dict):
        return None
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return export_encoder(store, run_dir)


def run_dir_encoder(checkpoint: str | os.PathLike) -> Path | None:
    """The ``encoder.npz`` beside a checkpoint (in its run directory), or in the directory given, or None."""
    checkpoint = Path(checkpoint)
    for directory in ([checkpoint] if checkpoint.is_dir() else []) + [checkpoint.parent]:
        if (directory / ENCODER_FILE).is_file():
            return directory / ENCODER_FILE
    return None
