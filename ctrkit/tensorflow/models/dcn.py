"""Deep & Cross Network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import MLP, CrossNet, FieldEmbedding, dense
from ctrkit.tensorflow.models.base import CTRModel, flatten_fields


@keras.saving.register_keras_serializable(package="ctrkit")
class DCN(CTRModel):
    """Deep & Cross Network (v1).

    Wang, Fu, Fu and Wang, "Deep & Cross Network for Ad Click Predictions", ADKDD 2017,
    https://arxiv.org/abs/1708.05123::

        x_0     = [e_1; ...; e_F]
        x_{l+1} = x_0 (x_l^T w_l) + b_l + x_l                (cross network, L_1 layers)
        h       = MLP(x_0)                                   (deep network)
        y       = w_logit^T [x_{L_1}; h] + b

    Difference from the paper: dense fields enter ``x_0`` as embedded vectors ``x_j v_j`` (the
    AutoInt treatment shared by all models here) instead of raw values stacked next to the
    embeddings. With ``hidden_units=()`` the model is the cross network alone. The torch
    attribute ``output`` (``w_logit``, ``b``) is ``output_layer`` here (Keras reserves ``output``).

    Args:
        schema: the input schema.
        embed_size: embedding width.
        cross_layers: number of cross layers (>= 1).
        hidden_units: deep network hidden sizes.
        dropout: deep network dropout.
        batch_norm: BatchNorm1d (torch's statistics) in the deep network.
        activation: deep network activation.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = DCN(schema, embed_size=16, cross_layers=3, hidden_units=(400, 400, 400))
        logits = model(batch, training=True)  # [B]
    """

    torch_children = ("embedding", "cross", "dnn", "output")

    def __init__(
        self,
        schema: Schema,
        embed_size: int = 16,
        cross_layers: int = 3,
        hidden_units: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        self.embedding = FieldEmbedding(self.schema, embed_size)
        input_dim = self.embedding.num_fields * self.embedding.dim
        self.cross = CrossNet(input_dim, cross_layers)
        self.dnn = MLP(input_dim, hidden_units, activation, dropout, batch_norm)
        deep_dim = self.dnn.output_dim if self.dnn.hidden_units else 0
        self.output_layer = dense(1, input_dim + deep_dim, name="output")

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        x0 = flatten_fields(self.embedding(batch, training=training))  # (B, F*D)
        cross = self.cross(x0)  # (B, F*D), float32 under mixed_bfloat16
        if not self.dnn.hidden_units:
            return self.output_layer(cross)  # (B, 1)
        deep = self.dnn(x0, training=training)  # (B, H)
        return self.output_layer(tf.concat([tf.cast(cross, deep.dtype), deep], axis=1))  # (B, 1)
