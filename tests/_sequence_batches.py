"""Sequence-model test data shared by tests/pytorch and tests/tf: a Taobao-like schema and ragged batches."""

from __future__ import annotations

import numpy as np
import torch

from ctrkit.schema import Field, Schema

SMALL = {"embed_size": 4, "hidden_units": (16, 8)}
DIN_SMALL = {**SMALL, "attention_units": (8, 4)}
DIEN_SMALL = {**SMALL, "gru_units": 6, "aux_hidden_units": (8,)}
SEQUENCE_MODELS = {"din": DIN_SMALL, "dien": DIEN_SMALL}


def taobao_like_schema(max_len: int = 6) -> Schema:
    """A user, the candidate ad's category and brand, a dense price, and aligned category/brand histories."""
    return Schema((
        Field("user", "sparse", vocab_size=20),
        Field("cate", "sparse", vocab_size=12),
        Field("brand", "sparse", vocab_size=15),
        Field("price", "dense"),
        Field("hist_cate", "sequence", max_len=max_len, shares="cate"),
        Field("hist_brand", "sequence", max_len=max_len, shares="brand"),
    ))


def left_padded(lengths: np.ndarray, max_len: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """Histories of the given lengths, items at the right end, 0 before them."""
    seq = np.zeros((len(lengths), max_len), np.int64)
    for row, n in enumerate(lengths):
        if n:
            seq[row, max_len - n:] = rng.integers(1, vocab, n)
    return seq


def make_batch(schema: Schema, batch_size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids, ragged left-padded histories (one empty row, one full row), a hole inside one history."""
    rng = np.random.default_rng(seed)
    max_len = schema.sequence[0].max_len
    lengths = rng.integers(0, max_len + 1, batch_size)
    lengths[0], lengths[1] = 0, max_len
    batch = {
        "label": torch.from_numpy(rng.integers(0, 2, batch_size).astype(np.float32)),
        "sparse": torch.from_numpy(np.stack([rng.integers(0, f.vocab_size, batch_size) for f in schema.sparse], 1)),
        "dense": torch.from_numpy(rng.standard_normal((batch_size, len(schema.dense))).astype(np.float32)),
    }
    for f in schema.sequence:
        seq = left_padded(lengths, f.max_len, schema[f.shares].vocab_size, rng)
        batch[f"seq:{f.name}"] = torch.from_numpy(seq)
    batch[f"seq:{schema.sequence[-1].name}"][1, -2] = 0  # an OOV brand inside a behaviour: still a behaviour
    return batch


def pad_left(batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    """The same rows with ``extra`` more padding columns in front of every history."""
    out = dict(batch)
    for key, value in batch.items():
        if key.startswith("seq:"):
            out[key] = torch.cat([torch.zeros(value.shape[0], extra, dtype=value.dtype), value], dim=1)
    return out
