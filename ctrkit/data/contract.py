"""The batch contract, enforced: what every batch a model sees must satisfy.

A batch (``docs/architecture.md``) is a dict of numpy arrays: ``label`` float32 ``[B]`` in {0, 1}
(absent for unlabeled rows), ``sparse`` integer ``[B, n_sparse]`` with column ``j`` in
``[0, vocab_size_j)``, ``dense`` float32 ``[B, n_dense]`` finite, ``seq:<name>`` integer
``[B, max_len]`` in ``[0, vocab_size of the shared field)``, and optionally ``group`` int64 ``[B]``
(a per-row group id, the user, for gAUC).

:func:`check_batch` is called where rows enter ctrkit from outside the store's guarantees: the
store writer before a chunk is committed (so no source format can smuggle a NaN label or an
out-of-range id into a store), the store reader on every chunk it decodes (flipped bytes), and
the trainers' ``predict`` on batches a user built by hand. It costs one reduction per column.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ctrkit.errors import InputError
from ctrkit.schema import Schema


class ContractError(InputError):
    """A batch that breaks the batch contract; the message names the column, row and value."""


def check_batch(batch: Mapping[str, np.ndarray], schema: Schema, where: str, *, require_label: bool = False) -> None:
    """Raise :class:`ContractError` naming ``where``, the column and the first bad row, or return.

    Args:
        batch: the arrays of one batch or chunk.
        schema: the fields the ids must fit.
        where: what the rows are, for the message (``"chunk 3 of split 'train' in store x.lmdb"``).
        require_label: a missing ``label`` is an error too.
    """
    rows = _rows(batch, where)
    if "label" in batch:
        _check_labels(np.asarray(batch["label"]), rows, where)
    elif require_label:
        raise ContractError(f"{where}: no 'label' column")
    if "group" in batch:
        group = np.asarray(batch["group"])
        if group.shape != (rows,) or not np.issubdtype(group.dtype, np.integer):
            raise ContractError(f"{where}: 'group' must be integer ids of shape ({rows},), got {group.dtype} {group.shape}")
    sparse_fields = schema.sparse
    if sparse_fields or "sparse" in batch:
        sparse = _column(batch, "sparse", where, (rows, len(sparse_fields)))
        _check_ids(sparse, np.asarray(schema.vocab_sizes, dtype=np.int64), [f.name for f in sparse_fields], where)
    if schema.dense or "dense" in batch:
        dense = _column(batch, "dense", where, (rows, len(schema.dense)))
        _check_finite(dense, [f.name for f in schema.dense], where)
    for field in schema.sequence:
        key = f"seq:{field.name}"
        ids = _column(batch, key, where, (rows, field.max_len))
        vocab = schema[field.shares].vocab_size
        _check_ids(ids, np.full(field.max_len, vocab, dtype=np.int64), [field.name] * field.max_len, where)
    unknown = sorted(set(batch) - {"label", "sparse", "dense", "group"} - {f"seq:{f.name}" for f in schema.sequence})
    if unknown:
        raise ContractError(f"{where}: unknown column(s) {unknown}; the schema has no such fields")


def _rows(batch: Mapping[str, np.ndarray], where: str) -> int:
    lengths = {key: len(np.asarray(value)) if np.ndim(value) else -1 for key, value in batch.items()}
    if any(n < 0 for n in lengths.values()):
        raise ContractError(f"{where}: columns {sorted(k for k, n in lengths.items() if n < 0)} are scalars, not arrays")
    if len(set(lengths.values())) > 1:
        raise ContractError(f"{where}: columns have different numbers of rows: {lengths}")
    return next(iter(lengths.values()), 0)


def _column(batch: Mapping[str, np.ndarray], key: str, where: str, shape: tuple[int, int]) -> np.ndarray:
    if key not in batch:
        raise ContractError(f"{where}: no {key!r} column, which the schema needs ({shape[1]} fields)")
    array = np.asarray(batch[key])
    if array.ndim != 2 or array.shape != shape:
        raise ContractError(f"{where}: column {key!r} has shape {array.shape}, expected {shape}")
    return array


def _check_labels(labels: np.ndarray, rows: int, where: str) -> None:
    if labels.shape != (rows,):
        raise ContractError(f"{where}: 'label' has shape {labels.shape}, expected ({rows},)")
    if not np.issubdtype(labels.dtype, np.number) and labels.dtype != np.bool_:
        raise ContractError(f"{where}: 'label' has dtype {labels.dtype}, expected numbers 0/1")
    bad = (labels != 0) & (labels != 1)  # NaN compares unequal to both
    if bad.any():
        row = int(np.argmax(bad))
        raise ContractError(f"{where}: label of row {row} is {float(labels[row])}; labels must be 0 or 1")


def _check_ids(ids: np.ndarray, vocab: np.ndarray, names: list[str], where: str) -> None:
    if not np.issubdtype(ids.dtype, np.integer):
        raise ContractError(f"{where}: ids have dtype {ids.dtype}, expected integers")
    if not ids.size:
        return
    low, high = ids.min(axis=0), ids.max(axis=0)  # one pass each; the bad row is looked up only on failure
    bad_columns = np.flatnonzero((low < 0) | (high >= vocab))
    if bad_columns.size:
        column = int(bad_columns[0])
        values = ids[:, column]
        row = int(np.argmax((values < 0) | (values >= vocab[column])))
        raise ContractError(
            f"{where}: field {names[column]} has id {int(values[row])} in row {row}; "
            f"its ids must lie in [0, {int(vocab[column])})"
        )


def _check_finite(values: np.ndarray, names: list[str], where: str) -> None:
    if not np.issubdtype(values.dtype, np.floating):
        raise ContractError(f"{where}: dense values have dtype {values.dtype}, expected floats")
    if not values.size or np.isfinite(values.sum(axis=0)).all():  # a sum is cheaper than isfinite over all
        return
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:  # else the sum overflowed on finite values
        row, column = map(int, bad[0])
        raise ContractError(f"{where}: dense field {names[column]} is {float(values[row, column])} in row {row}; "
                            "dense values must be finite")
