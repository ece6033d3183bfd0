"""Attentional factorization machine."""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from ctrkit.hparam_checks import check_bool, check_positive
from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import AttentionalPooling, FieldEmbedding, Linear
from ctrkit.tensorflow.models.base import CTRModel, add_promoted


@keras.saving.register_keras_serializable(package="ctrkit")
class AFM(CTRModel):
    """Attentional Factorization Machine.

    Xiao, Ye, He, Zhang, Wu and Chua, "Attentional Factorization Machines: Learning the Weight of
    Feature Interactions via Attention Networks", IJCAI 2017, https://arxiv.org/abs/1708.04617::

        y     = w_0 + sum_i w_i x_i + p^T sum_{i<j} a_ij (v_i o v_j) x_i x_j
        a_ij  = softmax_{(i,j)}( h^T ReLU(W (v_i o v_j) x_i x_j + b) )

    ``dropout`` is the paper's dropout on the pair-wise interaction layer, applied here to the
    attention-pooled vector before ``p``. ``attention_factor`` (the paper's ``t``) defaults to 16;
    the paper reports AFM to be insensitive to it.

    ``embed_init_std`` (default 0.01, the authors') and ``fm_start`` (default on: ``p`` starts at
    ``P * 1``, so that with a still uniform attention the pair term is FM's ``sum_{i<j} <v_i, v_j>``
    and AFM starts as FM): as in the torch model, whose docstring gives the measurements behind them.

    Args:
        schema: the input schema (at least 2 fields).
        embed_size: ``k``.
        attention_factor: ``t``, hidden size of the attention network.
        dropout: dropout on the pooled interaction vector.
        embed_init_std: std of the normal initialiser of the embeddings.
        fm_start: start ``p`` at ``P * 1`` (see above).

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = AFM(schema, embed_size=16, attention_factor=16)
        logits = model(batch, training=True)  # [B]
    """

    torch_children = ("linear", "embedding", "attention")

    def __init__(self, schema: Schema, embed_size: int = 16, attention_factor: int = 16, dropout: float = 0.0,
                 embed_init_std: float = 0.01, fm_start: bool = True) -> None:
        super().__init__(schema)
        self.linear = Linear(self.schema)
        self.embedding = FieldEmbedding(self.schema, embed_size, check_positive("embed_init_std", embed_init_std))
        self.attention = AttentionalPooling(self.embedding.num_fields, self.embedding.dim, attention_factor, dropout)
        if check_bool("fm_start", fm_start):  # p = P * 1: uniform attention times P is FM's sum of the pair products
            kernel = self.attention.projection.kernel
            kernel.assign(tf.fill(kernel.shape, tf.constant(float(len(self.attention.rows)), kernel.dtype)))  # P

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        e = self.embedding(batch, training=training)  # (B, F, D)
        return add_promoted(self.linear(batch, training=training), self.attention(e, training=training))  # (B, 1)
