"""Embedding blocks (TensorFlow): the single embedding table, per-field lookup, free biases, first-order term.

Mirror of :mod:`ctrkit.pytorch.layers.embedding`, class for class, same constructor arguments.

Why weights are created when the layer is constructed: every variable shape here is known from the
constructor (the schema gives the table size), and a layer that holds its weights from the start
can receive converted PyTorch weights (:mod:`ctrkit.parity`) or a checkpoint before it has seen a
batch. Each layer still creates them in ``build()``, which ``__init__`` calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import keras
import tensorflow as tf

from ctrkit.errors import ConfigError
from ctrkit.hparam_checks import EMBEDDING_INIT_STD, check_int
from ctrkit.parity import TorchParameters, compose_torch_parameters
from ctrkit.schema import Schema
from ctrkit.tensorflow.layers._dtypes import promoted


def as_schema(schema: Schema | Mapping) -> Schema:
    """A :class:`Schema` from a schema or its ``to_dict()`` (what ``get_config`` stores)."""
    return schema if isinstance(schema, Schema) else Schema.from_dict(dict(schema))


@keras.saving.register_keras_serializable(package="ctrkit")
class EmbeddingTable(keras.layers.Layer):
    """A plain embedding matrix; the only place where embedding parameters live.

    ``out[..., :] = weight[ids[...], :]`` (one ``tf.gather``). Rows are initialised from
    ``N(0, init_std^2)`` (default ``1e-4``). The rows are returned in the variable's dtype (float32
    under ``mixed_bfloat16``, like ``F.embedding`` under torch autocast): the layer does not autocast.

    **Embedding regulariser** (the torch trainer's rule, applied by the layer itself since Keras
    has no forward hooks): the trainer sets the attribute ``l2`` (default 0, not part of the
    config). When ``l2 > 0`` and the call has ``training=True`` the layer calls
    ``self.add_loss(l2 * sum(rows ** 2) / batch_size)`` over the rows this call looked up, in
    float32: a row read twice counts twice, rows whose ``counted`` entry is False (sequence
    padding) count zero. ``batch_size`` defaults to ``ids.shape[0]``. The trainer adds
    ``sum(model.losses)`` to the BCE. ``l2`` is read when the call is traced: set it before the
    first traced training step.

    The trainer finds every ``EmbeddingTable`` by type (no weight decay on ``weight``).

    Args:
        num_rows: number of rows.
        dim: row width.
        init_std: standard deviation of the normal initialiser.

    Shapes: ``ids`` int ``[...]`` -> ``[..., dim]``.

    Example::

        table = EmbeddingTable(100, 8)
        table(tf.constant([[1, 2], [3, 0]])).shape  # TensorShape([2, 2, 8])
    """

    def __init__(self, num_rows: int, dim: int, init_std: float = EMBEDDING_INIT_STD, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_rows = check_int("num_rows", num_rows)
        self.dim = check_int("dim", dim)
        self.init_std = float(init_std)
        self.autocast = False  # rows stay in the variable dtype, like F.embedding under autocast
        self.l2 = 0.0
        self.build()

    def build(self, input_shape=None) -> None:
        if self.built:
            return
        self.weight = self.add_weight(
            shape=(self.num_rows, self.dim),
            initializer=keras.initializers.RandomNormal(mean=0.0, stddev=self.init_std),
            name="weight",
            autocast=False,  # never read as a bf16 copy of the whole table
        )
        self.built = True

    def call(self, ids, training=None, counted=None, batch_size=None):
        rows = tf.gather(self.weight, ids)  # (..., dim)
        if training and self.l2 > 0:
            self.add_loss(self.regularisation(rows, counted, batch_size if batch_size is not None else tf.shape(ids)[0]))
        return rows

    def regularisation(self, rows, counted=None, batch_size=1):
        """``l2 * sum(rows ** 2) / batch_size`` in float32, rows with ``counted == False`` left out."""
        squares = tf.reduce_sum(tf.square(tf.cast(rows, tf.float32)), axis=-1)  # (...,)
        if counted is not None:
            squares = squares * tf.cast(counted, tf.float32)
        return self.l2 * tf.reduce_sum(squares) / tf.cast(batch_size, tf.float32)

    def torch_parameters(self) -> TorchParameters:
        return {"weight": (self.weight, "same")}

    def get_config(self) -> dict:
        return {**super().get_config(), "num_rows": self.num_rows, "dim": self.dim, "init_std": self.init_std}


def embedding_tables(layer: keras.layers.Layer) -> list[EmbeddingTable]:
    """Every :class:`EmbeddingTable` inside ``layer`` (itself included), each once."""
    return [sub for sub in layer._flatten_layers(include_self=True, recursive=True) if isinstance(sub, EmbeddingTable)]


def set_embedding_l2(layer: keras.layers.Layer, l2: float) -> None:
    """Switch the embedding regulariser of every table in ``layer`` on (``l2 > 0``) or off; see :class:`EmbeddingTable`."""
    for table in embedding_tables(layer):
        table.l2 = float(l2)


@keras.saving.register_keras_serializable(package="ctrkit")
class Bias(keras.layers.Layer):
    """A free bias (one that is not the bias of a Dense layer): ``y = x + b``.

    Held in its own layer so that the trainer can exclude it from weight decay by type.
    Initialised to zeros. The sum has torch's promoted dtype (bf16 input + float32 bias -> float32).

    Args:
        shape: shape of ``bias``; broadcast against the trailing dims of the input.

    Shapes: ``x`` ``[..., *shape]`` -> same shape.

    Example::

        b = Bias(1)
        b(tf.zeros((4, 1))).shape  # TensorShape([4, 1])
    """

    def __init__(self, shape: int | Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        self.autocast = False  # torch adds an fp32 bias to a bf16 input in fp32
        self.build()

    def build(self, input_shape=None) -> None:
        if self.built:
            return
        self.bias = self.add_weight(shape=self.shape, initializer="zeros", name="bias", autocast=False)
        self.built = True

    def call(self, x):
        dtype = promoted(x.dtype, self.bias.dtype)
        return tf.cast(x, dtype) + tf.cast(self.bias, dtype)

    def torch_parameters(self) -> TorchParameters:
        return {"bias": (self.bias, "same")}

    def get_config(self) -> dict:
        return {**super().get_config(), "shape": list(self.shape)}


class UnpooledEmbeddings(NamedTuple):
    """What :meth:`FieldEmbedding.unpooled` returns (mirror of the torch tuple).

    Attributes:
        fields: the sparse then dense fields ``[B, K, D]`` (``K = n_sparse + n_dense``).
        sequences: per sequence field (schema order), its items ``[B, L, D]``; zero rows at padding.
        masks: per sequence field, bool ``[B, L]``: True where the id is an item (not padding 0).
    """

    fields: tf.Tensor
    sequences: list
    masks: list


@keras.saving.register_keras_serializable(package="ctrkit")
class FieldEmbedding(keras.layers.Layer):
    """One ``dim``-wide vector per input field, from ONE :class:`EmbeddingTable`.

    Table rows: the sparse fields' vocabularies concatenated (field ``i`` starts at
    ``schema.sparse_offsets[i]``), then one row per dense field. Output fields, in this order:

    * sparse field ``i``:      ``e_i = T[offset_i + id_i]``;
    * dense field ``j``:       ``e_j = T[dense_row_j] * x_j`` -- the numerical-field treatment of
      AutoInt (Song et al., CIKM 2019, https://arxiv.org/abs/1810.11921, eq. 4);
    * sequence field ``s``:    ``e_s = (1/|S|) sum_{t in S} T[offset_shared + id_t]`` where ``S``
      are the non-padding positions (id != 0); an all-padding sequence gives the zero vector.

    All ids (sparse, dense rows and sequence items) are looked up in ONE gather of static shape
    ``[B, K + sum L]`` (XLA-friendly). Padding positions are gathered but weighted zero in the mean
    and marked not ``counted`` for the table's regulariser, so both the outputs, their gradients
    and the regulariser equal the torch block's, which does not look padding up at all. With
    ``dim=1`` the same block gives first-order (linear) weights. Outputs are in the table's dtype
    (float32 under ``mixed_bfloat16``, as in torch autocast).

    Args:
        schema: the input schema (or its ``to_dict()``).
        dim: embedding width.
        init_std: std of the table's normal initialiser.

    Shapes: ``batch["sparse"]`` int ``[B, n_sparse]``, ``batch["dense"]`` float ``[B, n_dense]``,
    ``batch["seq:<name>"]`` int ``[B, L]`` -> ``[B, F, dim]`` with
    ``F = n_sparse + n_dense + n_sequence``. Other batch keys (``label``) are ignored.

    Target attention (DIN, DIEN) reads the sequences unpooled instead: :meth:`unpooled` gives the
    sparse and dense fields and each sequence field's ``[B, L, D]`` items with their mask, from the
    same single gather; :meth:`candidates` picks each sequence field's candidate item (the sparse
    field it ``shares``) out of the fields.

    Example::

        emb = FieldEmbedding(schema, 16)
        emb(batch).shape  # TensorShape([B, emb.num_fields, 16])
        fields, sequences, masks = emb.unpooled(batch)  # [B, K, 16], [[B, L, 16]], [[B, L]]
    """

    def __init__(self, schema: Schema | Mapping, dim: int, init_std: float = EMBEDDING_INIT_STD, **kwargs) -> None:
        super().__init__(**kwargs)
        self.schema = as_schema(schema)
        self.dim = check_int("embed_size", dim)
        self.init_std = float(init_std)
        self.n_sparse = len(self.schema.sparse)
        self.n_dense = len(self.schema.dense)
        self.n_sequence = len(self.schema.sequence)
        if self.num_fields == 0:
            raise ConfigError("the schema has no input fields")
        self.field_names: list[str] = [f.name for f in self.schema.sparse + self.schema.dense + self.schema.sequence]
        total_vocab = self.schema.total_vocab
        self.autocast = False
        self.table = EmbeddingTable(total_vocab + self.n_dense, self.dim, self.init_std, dtype=self.dtype_policy,
                                    name="table")
        self.index_dtype = tf.int32 if self.table.num_rows < 2**31 else tf.int64
        self.offsets = [int(o) for o in self.schema.sparse_offsets]  # (n_sparse,)
        self.dense_rows = list(range(total_vocab, total_vocab + self.n_dense))  # (n_dense,)
        self.sequence_keys: list[str] = [f"seq:{f.name}" for f in self.schema.sequence]
        self.sequence_offsets = [self.offsets[self.schema.sparse_index(f.shares)] for f in self.schema.sequence]
        #: the sparse column each sequence field shares (its candidate item)
        self.candidate_fields = [self.schema.sparse_index(f.shares) for f in self.schema.sequence]
        self.built = True

    @property
    def num_fields(self) -> int:
        """``F``: number of output fields (sparse + dense + sequence)."""
        return self.n_sparse + self.n_dense + self.n_sequence

    def call(self, batch, training=None):
        rows, counted, batch_size = self._rows(batch, training)  # (B, K + sum L, D)
        k = self.n_sparse + self.n_dense
        out = self._scale_dense(rows[:, :k], batch, batch_size)  # (B, K, D)
        if self.n_sequence:
            pooled = self._pool(rows[:, k:], counted[:, k:], batch)  # (B, n_seq, D)
            out = tf.concat([out, pooled], axis=1) if k else pooled  # (B, F, D)
        return out

    def unpooled(self, batch, training=None) -> UnpooledEmbeddings:
        """The sparse and dense fields, and every sequence field item by item, in ONE gather.

        Mirror of the torch method: ``fields`` are the first ``K = n_sparse + n_dense`` fields of
        :meth:`call`, ``sequences[s]`` the rows of sequence field ``s`` position by position, zero
        at padding (gathered, then multiplied by the mask, and not ``counted`` by the
        regulariser), ``masks[s]`` its non-padding positions.

        Shapes: ``fields`` ``[B, K, D]``; ``sequences[s]`` ``[B, L_s, D]``; ``masks[s]`` bool ``[B, L_s]``.
        """
        rows, counted, batch_size = self._rows(batch, training)  # (B, K + sum L, D)
        k = self.n_sparse + self.n_dense
        fields = self._scale_dense(rows[:, :k], batch, batch_size)  # (B, K, D)
        sequences, masks, start = [], [], k
        for key in self.sequence_keys:
            length = batch[key].shape[1] if batch[key].shape[1] is not None else tf.shape(batch[key])[1]
            mask = counted[:, start:start + length]  # (B, L)
            sequences.append(rows[:, start:start + length] * tf.cast(mask, rows.dtype)[:, :, None])
            masks.append(mask)
            start += length
        return UnpooledEmbeddings(fields, sequences, masks)

    def candidates(self, fields):
        """The candidate item of each sequence field: the row of the sparse field it shares.

        Shapes: ``[B, >= n_sparse, D]`` -> ``[B, n_sequence, D]``.
        """
        return tf.gather(fields, self.candidate_fields, axis=1)  # (B, n_seq, D)

    def _rows(self, batch, training):
        """The one table read: rows ``[B, K + sum L, D]``, ``counted`` (non-padding) and ``B``."""
        ids, counted, batch_size = self._ids(batch)  # (B, K + sum L)
        rows = self.table(ids, training=training, counted=counted, batch_size=batch_size)
        return rows, counted, batch_size

    def _scale_dense(self, out, batch, batch_size):
        """Dense fields' rows times their values (``[B, K, D]``); sparse fields unchanged."""
        if not self.n_dense:
            return out
        ones = tf.ones((batch_size, self.n_sparse), dtype=out.dtype)
        scale = tf.concat([ones, tf.cast(batch["dense"], out.dtype)], axis=1)  # (B, K)
        return out * scale[:, :, None]  # (B, K, D)

    def _ids(self, batch):
        """Table rows of every field and sequence position, ``counted`` (non-padding) and ``B``."""
        parts, masks = [], []
        if self.n_sparse:
            sparse = tf.cast(batch["sparse"], self.index_dtype)
            parts.append(sparse + tf.constant(self.offsets, self.index_dtype))  # (B, S)
        first = batch["sparse"] if self.n_sparse else batch["dense"] if self.n_dense else batch[self.sequence_keys[0]]
        batch_size = tf.shape(first)[0]
        if self.n_dense:
            dense_rows = tf.constant(self.dense_rows, self.index_dtype)
            parts.append(tf.broadcast_to(dense_rows[None, :], (batch_size, self.n_dense)))  # (B, Nd)
        if self.n_sequence:
            if parts:
                masks.append(tf.ones((batch_size, self.n_sparse + self.n_dense), tf.bool))
            for key, offset in zip(self.sequence_keys, self.sequence_offsets):
                seq = tf.cast(batch[key], self.index_dtype)  # (B, L)
                parts.append(seq + offset)
                masks.append(seq > 0)
        ids = tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]  # (B, K + sum L)
        counted = (tf.concat(masks, axis=1) if len(masks) > 1 else masks[0]) if masks else None
        return ids, counted, batch_size

    def _pool(self, items, counted, batch):
        """Mean of each sequence's non-padding rows: ``[B, sum L, D]`` -> ``[B, n_seq, D]``."""
        pooled, start = [], 0
        weights = tf.cast(counted, items.dtype)  # (B, sum L)
        for key in self.sequence_keys:
            length = batch[key].shape[1] if batch[key].shape[1] is not None else tf.shape(batch[key])[1]
            w = weights[:, start:start + length]  # (B, L)
            sums = tf.einsum("bl,bld->bd", w, items[:, start:start + length])  # (B, D)
            counts = tf.maximum(tf.reduce_sum(w, axis=1, keepdims=True), 1.0)  # (B, 1)
            pooled.append(sums / counts)
            start += length
        return tf.stack(pooled, axis=1)  # (B, n_seq, D)

    def torch_parameters(self) -> TorchParameters:
        return compose_torch_parameters({"table": self.table})

    def get_config(self) -> dict:
        return {**super().get_config(), "schema": self.schema.to_dict(), "dim": self.dim, "init_std": self.init_std}


@keras.saving.register_keras_serializable(package="ctrkit")
class Linear(keras.layers.Layer):
    """First-order term of LR/FM: ``y = b + sum_i w_i x_i``.

    ``w`` comes from a :class:`FieldEmbedding` of width 1 (sparse: ``w[id]``; dense: ``w_j * x_j``;
    sequence: mean of the items' weights), ``b`` is a :class:`Bias`. The torch attribute
    ``weights`` is ``field_weights`` here (``weights`` is a Keras ``Layer`` property); the torch
    names (``weights.table.weight``) are kept by :meth:`torch_parameters`.

    Args:
        schema: the input schema (or its ``to_dict()``).

    Shapes: batch -> ``[B, 1]``.

    Example::

        linear = Linear(schema)
        linear(batch).shape  # TensorShape([B, 1])
    """

    def __init__(self, schema: Schema | Mapping, **kwargs) -> None:
        super().__init__(**kwargs)
        self.schema = as_schema(schema)
        self.autocast = False
        self.field_weights = FieldEmbedding(self.schema, 1, dtype=self.dtype_policy, name="weights")
        self.bias = Bias(1, dtype=self.dtype_policy, name="bias")
        self.built = True

    def call(self, batch, training=None):
        w = self.field_weights(batch, training=training)  # (B, F, 1)
        return self.bias(tf.reduce_sum(w, axis=1))  # (B, 1)

    def torch_parameters(self) -> TorchParameters:
        return compose_torch_parameters({"weights": self.field_weights, "bias": self.bias})

    def get_config(self) -> dict:
        return {**super().get_config(), "schema": self.schema.to_dict()}
