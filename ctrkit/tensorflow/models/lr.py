"""Logistic regression."""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import Linear
from ctrkit.tensorflow.models.base import CTRModel


@keras.saving.register_keras_serializable(package="ctrkit")
class LR(CTRModel):
    """Logistic regression: ``y = b + sum_i w_i x_i``.

    The classic baseline of CTR prediction (e.g. Richardson, Dominowska and Ragno, "Predicting
    Clicks: Estimating the Click-Through Rate for New Ads", WWW 2007,
    https://doi.org/10.1145/1242572.1242643). ``w_i`` is the weight of field ``i``'s id (sparse),
    ``w_j * x_j`` for a dense field, and the mean of the item weights for a sequence field.

    Args:
        schema: the input schema.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = LR(schema)
        logits = model(batch)  # [B]
    """

    torch_children = ("linear",)

    def __init__(self, schema: Schema) -> None:
        super().__init__(schema)
        self.linear = Linear(self.schema)

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.linear(batch, training=training)  # (B, 1)
