"""The tensors an exported model takes and returns, named for every runtime.

A batch of the store (``sparse`` int32 ``[B, F]``, ``dense`` float32 ``[B, n_dense]``,
``seq:<name>`` int32 ``[B, L]``) becomes the positional inputs of the exported graph, in this
order: ``sparse``, then ``dense`` when the schema has dense fields, then one ``seq_<name>`` per
sequence field (``:`` is not allowed in a SavedModel signature, so the graph's names use ``_``).
The graph returns the click probability ``probability`` float32 ``[B]`` (the sigmoid is applied
inside). The batch dimension is free (``None`` in the manifest) in every format.

Imports no framework: the manifest, the bundle loader and the tests use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: name of the exported graph's one output
OUTPUT_NAME = "probability"


@dataclass(frozen=True)
class InputTensor:
    """One input of the exported graph.

    Attributes:
        name: the graph's name of the input (``sparse``, ``dense``, ``seq_<field>``).
        key: the batch key it comes from (``sparse``, ``dense``, ``seq:<field>``).
        dtype: numpy dtype name (``int32`` ids, ``float32`` values).
        width: the second dimension (fields, dense fields or the sequence's ``max_len``).
    """

    name: str
    key: str
    dtype: str
    width: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "batch_key": self.key, "dtype": self.dtype, "shape": [None, self.width]}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "InputTensor":
        return cls(record["name"], record["batch_key"], record["dtype"], int(record["shape"][1]))


def input_tensors(schema) -> list[InputTensor]:
    """The graph inputs of a model of ``schema`` (a :class:`~ctrkit.schema.Schema`), in order."""
    inputs = [InputTensor("sparse", "sparse", "int32", len(schema.sparse))]
    if schema.dense:
        inputs.append(InputTensor("dense", "dense", "float32", len(schema.dense)))
    inputs += [InputTensor(f"seq_{f.name}", f"seq:{f.name}", "int32", f.max_len) for f in schema.sequence]
    return inputs


def graph_arrays(batch: dict[str, np.ndarray], inputs: list[InputTensor]) -> list[np.ndarray]:
    """The arrays of ``batch`` in graph order, C-contiguous, in the graph's dtypes."""
    return [np.ascontiguousarray(batch[t.key], dtype=t.dtype) for t in inputs]


def example_batch(schema, rows: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of ``rows`` valid rows of ``schema`` for tracing: random ids, left-padded histories
    of different lengths (an empty one and a full one included when ``rows >= 2``)."""
    rng = np.random.default_rng(seed)
    batch = {"sparse": np.stack([rng.integers(0, f.vocab_size, rows) for f in schema.sparse], 1).astype(np.int32)}
    if schema.dense:
        batch["dense"] = rng.standard_normal((rows, len(schema.dense))).astype(np.float32)
    for f in schema.sequence:
        vocab = schema[f.shares].vocab_size
        lengths = np.arange(rows) * f.max_len // max(rows - 1, 1)  # 0 .. max_len
        seq = np.zeros((rows, f.max_len), np.int32)
        for row, n in enumerate(lengths):
            seq[row, f.max_len - n:] = rng.integers(1, max(vocab, 2), n)
        batch[f"seq:{f.name}"] = seq
    return batch
