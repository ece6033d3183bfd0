"""Factorization machine."""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import FactorizationMachine, FieldEmbedding, Linear
from ctrkit.tensorflow.models.base import CTRModel, add_promoted


@keras.saving.register_keras_serializable(package="ctrkit")
class FM(CTRModel):
    """Factorization Machine.

    Rendle, "Factorization Machines", IEEE ICDM 2010, https://doi.org/10.1109/ICDM.2010.127::

        y = w_0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j

    over the active features (one per field; a dense field contributes ``x_j v_j``, a sequence
    field the mean of its items' vectors). The pairwise sum is computed in O(kn) as
    ``1/2 sum_f [(sum_i v_{i,f})^2 - sum_i v_{i,f}^2]`` (in float32 under ``mixed_bfloat16``).

    Args:
        schema: the input schema.
        embed_size: ``k``.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = FM(schema, embed_size=16)
        logits = model(batch)  # [B]
    """

    torch_children = ("linear", "embedding")

    def __init__(self, schema: Schema, embed_size: int = 16) -> None:
        super().__init__(schema)
        self.linear = Linear(self.schema)
        self.embedding = FieldEmbedding(self.schema, embed_size)
        self.fm = FactorizationMachine()

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        e = self.embedding(batch, training=training)  # (B, F, D)
        return add_promoted(self.linear(batch, training=training), self.fm(e))  # (B, 1)
