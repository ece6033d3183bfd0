"""Embedding blocks: the single embedding table, per-field lookup, free biases, first-order term."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ctrkit import native
from ctrkit.errors import ConfigError
from ctrkit.pytorch.layers import _fused
from ctrkit.pytorch.layers._checks import check_int
from ctrkit.schema import Schema

EMBEDDING_INIT_STD = 1e-4


class _GatherRows(torch.autograd.Function):
    """``weight[ids]`` whose backward scatters with ``index_put_(accumulate=True)``.

    On CPU, the backward of ``F.embedding`` (``embedding_dense_backward``) launches one
    TensorIterator add per looked-up row; for a Criteo batch (4096 x 39 ids, 16 wide) that takes
    ~11 ms on one core, one accumulating ``index_put_`` (a single serial pass in id order, so
    deterministic) ~2.5 ms. ``index_put_`` is run with one intra-op thread: with two it takes
    ~13 ms (torch 2.13). The gradient is the same dense ``[num_rows, dim]`` tensor. On CPU with
    float32 rows, the C kernel ``ctrkit/native/scatter.c`` does the same serial pass without
    sorting the ids first (DIN's 171k ids: ~7 ms -> ~1 ms).
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
        kernel = (_fused.c_function("scatter", "ctrkit_scatter_add_rows", rows, dtypes=(torch.float32,))
                  if ids.dtype == torch.int64 else None)
        if kernel is not None:
            flat_ids, rows = ids.reshape(-1).contiguous(), rows.contiguous()
            status = kernel(rows.shape[0], rows.shape[1], flat_ids.data_ptr(), rows.data_ptr(), ctx.num_rows,
                            grad_weight.data_ptr())
            native.check(status, "embedding backward: an id outside the table")
            return grad_weight, None
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


class UnpooledEmbeddings(NamedTuple):
    """What :meth:`FieldEmbedding.unpooled` returns.

    Attributes:
        fields: the sparse then dense fields ``[B, K, D]`` (``K = n_sparse + n_dense``).
        sequences: per sequence field (schema order), its items ``[B, L, D]``; zero rows at padding.
        masks: per sequence field, bool ``[B, L]``: True where the id is an item (not padding 0).
    """

    fields: torch.Tensor
    sequences: list[torch.Tensor]
    masks: list[torch.Tensor]


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

    Target attention (DIN, DIEN) reads the sequences unpooled instead: :meth:`unpooled` gives the
    sparse and dense fields and each sequence field's ``[B, L, D]`` items with their mask, from the
    same single gather; :meth:`candidates` picks, for each sequence field, the candidate item's
    row out of the sparse fields (the field the sequence ``shares``). :meth:`forward` is unchanged
    by them (no extra work for the models that pool).

    Example::

        emb = FieldEmbedding(schema, 16)
        emb(batch).shape  # torch.Size([B, emb.num_fields, 16])
        fields, sequences, masks = emb.unpooled(batch)  # [B, K, 16], [[B, L, 16]], [[B, L]]
        emb.candidates(fields).shape  # torch.Size([B, n_sequence, 16])
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
        seq_offsets = [int(schema.sparse_offsets[schema.sparse_index(f.shares)]) for f in schema.sequence]  # not from the buffer: it may be on the meta device
        self.register_buffer("sequence_offsets", torch.tensor(seq_offsets, dtype=torch.long), persistent=False)
        #: the sparse column each sequence field shares (its candidate item)
        self.candidate_fields: list[int] = [schema.sparse_index(f.shares) for f in schema.sequence]

    @property
    def num_fields(self) -> int:
        """``F``: number of output fields (sparse + dense + sequence)."""
        return self.n_sparse + self.n_dense + self.n_sequence

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        fixed, batch_size, k = self._fixed_ids(batch)  # (B, K)
        if not self.n_sequence:
            return self._scale_dense(self.table(fixed), batch)  # (B, K, D)
        seq, column_field, rows, cols = self._sequence_items(batch)
        looked_up, items = self._lookup(fixed, seq, column_field, rows, cols)  # (B*K, D), (N, D)
        segment = rows * self.n_sequence + column_field[cols]  # (N,)
        sums = items.new_zeros(batch_size * self.n_sequence, self.dim).index_add_(0, segment, items)
        counts = torch.bincount(segment, minlength=batch_size * self.n_sequence).clamp_(min=1)
        pooled = (sums / counts.unsqueeze(1).to(sums.dtype)).view(batch_size, self.n_sequence, self.dim)
        if not k:
            return pooled  # (B, n_seq, D)
        out = self._scale_dense(looked_up.view(batch_size, k, self.dim), batch)  # (B, K, D)
        return torch.cat([out, pooled], dim=1)  # (B, F, D)

    def unpooled(self, batch: Mapping[str, torch.Tensor]) -> UnpooledEmbeddings:
        """The sparse and dense fields, and every sequence field item by item, in ONE gather.

        What target attention needs (DIN, DIEN): ``fields`` are the first ``K = n_sparse + n_dense``
        fields of :meth:`forward` (same values), ``sequences[s]`` the rows of sequence field ``s``
        position by position, zero at padding (padding is not looked up, as in :meth:`forward`),
        and ``masks[s]`` its non-padding positions. The candidate item of a sequence field is the
        sparse field it shares (:meth:`candidates`).

        Shapes: ``fields`` ``[B, K, D]``; ``sequences[s]`` ``[B, L_s, D]``; ``masks[s]`` bool ``[B, L_s]``.
        """
        fixed, batch_size, k = self._fixed_ids(batch)
        if not self.n_sequence:
            return UnpooledEmbeddings(self._scale_dense(self.table(fixed), batch), [], [])
        seq, column_field, rows, cols = self._sequence_items(batch)
        looked_up, items = self._lookup(fixed, seq, column_field, rows, cols)  # (B*K, D), (N, D)
        flat = items.new_zeros(batch_size * seq.shape[1], self.dim)  # (B * sum L, D)
        flat = flat.index_copy(0, rows * seq.shape[1] + cols, items).view(batch_size, seq.shape[1], self.dim)
        lengths = [batch[key].shape[1] for key in self.sequence_keys]
        mask = seq > 0  # (B, sum L)
        fields = self._scale_dense(looked_up.view(batch_size, k, self.dim), batch)  # (B, K, D)
        return UnpooledEmbeddings(fields, list(flat.split(lengths, dim=1)), list(mask.split(lengths, dim=1)))

    def candidates(self, fields: torch.Tensor) -> torch.Tensor:
        """The candidate item of each sequence field: the row of the sparse field it shares.

        ``fields`` is :attr:`UnpooledEmbeddings.fields` (or the output of :meth:`forward`): the
        candidate's embedding is the one the sparse field already looked up, not a second read.

        Shapes: ``[B, >= n_sparse, D]`` -> ``[B, n_sequence, D]``.
        """
        return fields[:, self.candidate_fields]  # (B, n_seq, D)

    def _fixed_ids(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, int, int]:
        """Table rows of the sparse and dense fields ``[B, K]`` (None without any), ``B`` and ``K``."""
        parts: list[torch.Tensor] = []
        if self.n_sparse:
            parts.append(batch["sparse"].long() + self.offsets)  # (B, S)
        if self.n_dense:
            parts.append(self.dense_rows.expand(batch["dense"].shape[0], -1))  # (B, Nd)
        if not parts:
            return None, batch[self.sequence_keys[0]].shape[0], 0
        fixed = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, K)
        return fixed, fixed.shape[0], fixed.shape[1]

    def _sequence_items(self, batch: Mapping[str, torch.Tensor]):
        """All sequence fields side by side ``[B, sum L]``, each column's field, and the non-padding positions."""
        seqs = [batch[key].long() for key in self.sequence_keys]
        seq = torch.cat(seqs, dim=1) if len(seqs) > 1 else seqs[0]  # (B, sum L)
        lengths = torch.tensor([s.shape[1] for s in seqs], device=seq.device)  # (n_seq,)
        column_field = torch.repeat_interleave(
            torch.arange(self.n_sequence, device=seq.device), lengths, output_size=seq.shape[1]
        )  # (sum L,)
        rows, cols = (seq > 0).nonzero(as_tuple=True)  # (N,), (N,)
        return seq, column_field, rows, cols

    def _lookup(self, fixed, seq, column_field, rows, cols) -> tuple[torch.Tensor, torch.Tensor]:
        """One table read of the fixed ids and the non-padding sequence items: ``[B*K, D]``, ``[N, D]``."""
        item_ids = seq[rows, cols] + self.sequence_offsets[column_field[cols]]  # (N,)
        ids = item_ids if fixed is None else torch.cat([fixed.reshape(-1), item_ids])  # (B*K + N,)
        looked_up = self.table(ids)  # (B*K + N, D)
        n_fixed = 0 if fixed is None else fixed.numel()
        return looked_up[:n_fixed], looked_up[n_fixed:]

    def _scale_dense(self, out: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Dense fields' rows times their values (``[B, K, D]``); sparse fields unchanged."""
        if not self.n_dense:
            return out
        ones = torch.ones(out.shape[0], self.n_sparse, dtype=out.dtype, device=out.device)
        scale = torch.cat([ones, batch["dense"].to(out.dtype)], dim=1)  # (B, K)
        return out * scale.unsqueeze(-1)  # (B, K, D)

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
