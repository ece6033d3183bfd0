"""Embedding blocks: the single embedding table, per-field lookup, free biases, first-order term."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctrkit.errors import ConfigError
from ctrkit.pytorch.layers._checks import check_int
from ctrkit.schema import Schema

EMBEDDING_INIT_STD = 1e-4


class _GatherRows(torch.autograd.Function):
    """``weight[ids]`` whose backward scatters with ``index_put_(accumulate=True)``.

    On CPU, the backward of ``F.embedding`` (``embedding_dense_backward``) launches one
    TensorIterator add per looked-up row; for a Criteo batch (4096 x 39 ids, 16 wide) that takes
    ~11 ms on one core, one accumulating ``index_put_`` (a single serial pass in id order, so
    deterministic) ~2.5 ms. ``index_put_`` is run with one intra-op thread: with two it takes
    ~13 ms (torch 2.13). The gradient is the same dense ``[num_rows, dim]`` tensor.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.num_rows = weight.shape[0]
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_weight = rows.new_zeros(ctx.num_rows, rows.shape[1])
        threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
        try:
            grad_weight.index_put_((ids.reshape(-1),), rows, accumulate=True)
        finally:
            if threads > 1:
                torch.set_num_threads(threads)
        return grad_weight, None


class EmbeddingTable(nn.Module):
    """A plain embedding matrix; the only place where embedding parameters live.

    ``out[..., :] = weight[ids[...], :]`` (one gather, ``F.embedding``; on CPU the backward is one
    accumulating scatter instead of ``F.embedding``'s per-row loop, same gradient). The trainer finds every
    ``EmbeddingTable`` by type: it keeps ``weight`` out of weight decay and hooks ``forward`` to
    add ``embedding_l2 * sum(output ** 2) / B`` -- so every embedding read must go through
    :meth:`forward`. Rows are initialised from ``N(0, init_std^2)`` (default ``1e-4``).

    Args:
        num_rows: number of rows.
        dim: row width.
        init_std: standard deviation of the normal initialiser.

    Shapes: ``ids`` int ``[...]`` (int32 is cast to int64) -> ``[..., dim]``.

    Example::

        table = EmbeddingTable(100, 8)
        table(torch.tensor([[1, 2], [3, 0]])).shape  # torch.Size([2, 2, 8])
    """

    def __init__(self, num_rows: int, dim: int, init_std: float = EMBEDDING_INIT_STD) -> None:
        super().__init__()
        self.num_rows = check_int("num_rows", num_rows)
        self.dim = check_int("dim", dim)
        self.init_std = float(init_std)
        self.weight = nn.Parameter(torch.empty(self.num_rows, self.dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        if self.weight.device.type == "cpu" and self.weight.requires_grad and torch.is_grad_enabled():
            return _GatherRows.apply(self.weight, ids)  # (..., dim)
        return F.embedding(ids, self.weight)  # (..., dim)

    def extra_repr(self) -> str:
        return f"{self.num_rows}, {self.dim}"


class Bias(nn.Module):
    """A free bias (one that is not the bias of an ``nn.Linear``/conv): ``y = x + b``.

    Held in its own module so that the trainer can exclude it from weight decay by type.
    Initialised to zeros.

    Args:
        shape: shape of ``bias``; broadcast against the trailing dims of the input.

    Shapes: ``x`` ``[..., *shape]`` -> same shape.

    Example::

        b = Bias(1)
        b(torch.zeros(4, 1)).shape  # torch.Size([4, 1])
    """

    def __init__(self, shape: int | Sequence[int]) -> None:
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.bias = nn.Parameter(torch.zeros(shape))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias

    def extra_repr(self) -> str:
        return f"shape={tuple(self.bias.shape)}"


class FieldEmbedding(nn.Module):
    """One ``dim``-wide vector per input field, from ONE :class:`EmbeddingTable`.

    Table rows: the sparse fields' vocabularies concatenated (field ``i`` starts at
    ``schema.sparse_offsets[i]``), then one row per dense field. Output fields, in this order:

    * sparse field ``i``:      ``e_i = T[offset_i + id_i]`` (all sparse fields in one gather);
    * dense field ``j``:       ``e_j = T[dense_row_j] * x_j`` -- the numerical-field treatment of
      AutoInt (Song et al., CIKM 2019, https://arxiv.org/abs/1810.11921, eq. 4);
    * sequence field ``s``:    ``e_s = (1/|S|) sum_{t in S} T[offset_shared + id_t]`` where ``S``
      are the non-padding positions (id != 0); an all-padding sequence gives the zero vector.

    Padding positions are not looked up at all, so the trainer's embedding regulariser only sees
    real rows. With ``dim=1`` the same block gives first-order (linear) weights.

    Args:
        schema: the input schema.
        dim: embedding width.
        init_std: std of the table's normal initialiser.

    Shapes: ``batch["sparse"]`` int ``[B, n_sparse]``, ``batch["dense"]`` float ``[B, n_dense]``,
    ``batch["seq:<name>"]`` int ``[B, L]`` -> ``[B, F, dim]`` with
    ``F = n_sparse + n_dense + n_sequence``.

    Example::

        emb = FieldEmbedding(schema, 16)
        emb(batch).shape  # torch.Size([B, emb.num_fields, 16])
    """

    def __init__(self, schema: Schema, dim: int, init_std: float = EMBEDDING_INIT_STD) -> None:
        super().__init__()
        self.dim = check_int("embed_size", dim)
        self.n_sparse = len(schema.sparse)
        self.n_dense = len(schema.dense)
        self.n_sequence = len(schema.sequence)
        if self.n_sparse + self.n_dense + self.n_sequence == 0:
            raise ConfigError("the schema has no input fields")
        self.field_names: list[str] = (
            [f.name for f in schema.sparse] + [f.name for f in schema.dense] + [f.name for f in schema.sequence]
        )
        total_vocab = schema.total_vocab
        self.table = EmbeddingTable(total_vocab + self.n_dense, self.dim, init_std)
        offsets = torch.as_tensor(schema.sparse_offsets, dtype=torch.long).reshape(-1)
        self.register_buffer("offsets", offsets, persistent=False)  # (n_sparse,)
        self.register_buffer(
            "dense_rows", torch.arange(total_vocab, total_vocab + self.n_dense, dtype=torch.long), persistent=False
        )  # (n_dense,)
        self.sequence_keys: list[str] = [f"seq:{f.name}" for f in schema.sequence]
        seq_offsets = [int(offsets[schema.sparse_index(f.shares)]) for f in schema.sequence]
        self.register_buffer("sequence_offsets", torch.tensor(seq_offsets, dtype=torch.long), persistent=False)

    @property
    def num_fields(self) -> int:
        """``F``: number of output fields (sparse + dense + sequence)."""
        return self.n_sparse + self.n_dense + self.n_sequence

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        if self.n_sparse:
            sparse = batch["sparse"]
            parts.append(sparse.long() + self.offsets)  # (B, S)
        if self.n_dense:
            dense = batch["dense"]
            parts.append(self.dense_rows.expand(dense.shape[0], -1))  # (B, Nd)
        if parts:
            fixed = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, K)
            batch_size, k = fixed.shape
        else:
            fixed = None
            batch_size, k = batch[self.sequence_keys[0]].shape[0], 0

        if not self.n_sequence:
            out = self.table(fixed)  # (B, K, D)
        else:
            seqs = [batch[key].long() for key in self.sequence_keys]
            seq = torch.cat(seqs, dim=1) if len(seqs) > 1 else seqs[0]  # (B, sum L)
            lengths = torch.tensor([s.shape[1] for s in seqs], device=seq.device)  # (n_seq,)
            column_field = torch.repeat_interleave(
                torch.arange(self.n_sequence, device=seq.device), lengths, output_size=seq.shape[1]
            )  # (sum L,)
            mask = seq > 0  # (B, sum L)
            rows, cols = mask.nonzero(as_tuple=True)  # (N,), (N,)
            item_ids = seq[rows, cols] + self.sequence_offsets[column_field[cols]]  # (N,)
            ids = item_ids if fixed is None else torch.cat([fixed.reshape(-1), item_ids])  # (B*K + N,)
            looked_up = self.table(ids)  # (B*K + N, D)
            items = looked_up[batch_size * k:]  # (N, D)
            segment = rows * self.n_sequence + column_field[cols]  # (N,)
            sums = items.new_zeros(batch_size * self.n_sequence, self.dim).index_add_(0, segment, items)
            counts = torch.bincount(segment, minlength=batch_size * self.n_sequence).clamp_(min=1)
            pooled = (sums / counts.unsqueeze(1).to(sums.dtype)).view(batch_size, self.n_sequence, self.dim)
            out = looked_up[: batch_size * k].view(batch_size, k, self.dim)  # (B, K, D)

        if self.n_dense:
            ones = torch.ones(batch_size, self.n_sparse, dtype=out.dtype, device=out.device)
            scale = torch.cat([ones, batch["dense"].to(out.dtype)], dim=1)  # (B, K)
            out = out * scale.unsqueeze(-1)  # (B, K, D)
        if self.n_sequence:
            out = torch.cat([out, pooled], dim=1) if k else pooled  # (B, F, D)
        return out

    def extra_repr(self) -> str:
        return f"fields={self.num_fields}, dim={self.dim}"


class Linear(nn.Module):
    """First-order term of LR/FM: ``y = b + sum_i w_i x_i``.

    ``w`` comes from a :class:`FieldEmbedding` of width 1 (sparse: ``w[id]``; dense: ``w_j * x_j``;
    sequence: mean of the items' weights), ``b`` is a :class:`Bias`.

    Args:
        schema: the input schema.

    Shapes: batch -> ``[B, 1]``.

    Example::

        linear = Linear(schema)
        linear(batch).shape  # torch.Size([B, 1])
    """

    def __init__(self, schema: Schema) -> None:
        super().__init__()
        self.weights = FieldEmbedding(schema, 1)
        self.bias = Bias(1)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w = self.weights(batch)  # (B, F, 1)
        return self.bias(w.sum(dim=1))  # (B, 1)
