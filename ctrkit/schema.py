"""Field schema shared by the store, the batch reader and the models of both frameworks.

A schema is an ordered list of fields of three kinds:

* ``sparse``   — a categorical field. Values are *local* ids ``0 .. vocab_size - 1`` where id 0 is
  reserved for out-of-vocabulary / missing values and never stands for a real value.
* ``dense``    — a float field.
* ``sequence`` — a variable-length list of ids (padded to ``max_len``, 0 = padding, most recent
  item **last**) that refers to the vocabulary of the sparse field named by ``shares``.

The order of the sparse fields is the column order of ``batch["sparse"]``; likewise for dense
fields and ``batch["dense"]``. Each sequence field is its own batch key ``"seq:<name>"``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from ctrkit.errors import StoreError

FieldKind = Literal["sparse", "dense", "sequence"]
KINDS: tuple[str, ...] = ("sparse", "dense", "sequence")


@dataclass(frozen=True)
class Field:
    """One input field.

    Args:
        name: unique field name, e.g. ``"C1"``.
        kind: ``"sparse"``, ``"dense"`` or ``"sequence"``.
        vocab_size: sparse fields only: number of ids including the OOV id 0.
        max_len: sequence fields only: padded length.
        shares: sequence fields only: the sparse field whose vocabulary the ids refer to.
    """

    name: str
    kind: FieldKind
    vocab_size: int = 0
    max_len: int = 0
    shares: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "sparse" and self.vocab_size < 1:
            raise ValueError(f"sparse field {self.name!r} needs vocab_size >= 1 (id 0 is OOV)")
        if self.kind == "sequence" and (self.max_len < 1 or not self.shares):
            raise ValueError(f"sequence field {self.name!r} needs max_len >= 1 and shares=<sparse field>")


@dataclass(frozen=True)
class Schema:
    """Ordered fields plus the name of the label column."""

    fields: tuple[Field, ...]
    label: str = "label"
    _index: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        names = [f.name for f in self.fields]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"duplicate field names in schema: {duplicated}")
        index = {f.name: f for f in self.fields}
        for f in self.fields:
            if f.kind == "sequence":
                target = index.get(f.shares or "")
                if target is None or target.kind != "sparse":
                    raise ValueError(f"sequence field {f.name!r} shares {f.shares!r}, which is not a sparse field")
        object.__setattr__(self, "_index", index)

    # -- views -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Field:
        return self._index[name]

    def __contains__(self, name: str) -> bool:
        return name in self._index

    @property
    def sparse(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.kind == "sparse")

    @property
    def dense(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.kind == "dense")

    @property
    def sequence(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.kind == "sequence")

    @property
    def vocab_sizes(self) -> list[int]:
        """Vocabulary size of each sparse field, in column order."""
        return [f.vocab_size for f in self.sparse]

    @property
    def sparse_offsets(self) -> np.ndarray:
        """Row offset of each sparse field in one table holding all sparse fields: int64 ``[n_sparse]``."""
        sizes = np.asarray(self.vocab_sizes, dtype=np.int64)
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else sizes

    @property
    def total_vocab(self) -> int:
        return int(sum(self.vocab_sizes))

    def sparse_index(self, name: str) -> int:
        """Column of the named sparse field in ``batch["sparse"]``."""
        for i, f in enumerate(self.sparse):
            if f.name == name:
                return i
        raise KeyError(f"{name!r} is not a sparse field")

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"label": self.label, "fields": [_compact(asdict(f)) for f in self.fields]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Schema":
        try:
            return cls(tuple(Field(**f) for f in data["fields"]), label=data.get("label", "label"))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"invalid schema: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> "Schema":
        return cls.from_dict(json.loads(text))


def _compact(d: dict) -> dict:
    """Drop the attributes that do not apply to the field's kind, to keep the JSON readable."""
    keep = {"name", "kind"}
    keep |= {"sparse": {"vocab_size"}, "dense": set(), "sequence": {"max_len", "shares"}}[d["kind"]]
    return {k: v for k, v in d.items() if k in keep}
