"""FiBiNET."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import MLP, BilinearInteraction, FieldEmbedding, Linear, SqueezeExcitation
from ctrkit.tensorflow.models.base import CTRModel, add_promoted, flatten_fields


@keras.saving.register_keras_serializable(package="ctrkit")
class FiBiNET(CTRModel):
    """FiBiNET: SENET field importance and bilinear interactions, a DNN on top, plus the linear part.

    Huang, Zhang and Zhang, "FiBiNET: Combining Feature Importance and Bilinear feature
    Interaction for Click-Through Rate Prediction", RecSys 2019, https://arxiv.org/abs/1905.09433::

        E = [e_1, ..., e_F]            V = SENET(E)                      (eq. 2-5)
        p = Bilinear_p(E), q = Bilinear_q(V),   each [p_12; ...; p_{F-1,F}], p_ij = (W v_i) ⊙ v_j   (eq. 6-9)
        y = w_0 + sum_i w_i x_i + MLP([p; q])                            (eq. 10-12)

    The two bilinear layers have their own matrices; see
    :class:`~ctrkit.tensorflow.layers.SqueezeExcitation` and
    :class:`~ctrkit.tensorflow.layers.BilinearInteraction`. Defaults are FuxiCTR's FiBiNET
    (``embedding_dim=10``, ``reduction_ratio=3``, ``field_interaction``, ``[500, 500, 500]``).

    Args:
        schema: the input schema.
        embed_size: embedding width ``D``.
        reduction_ratio: SENET reduction ratio ``r``.
        bilinear_type: ``field_all``, ``field_each`` or ``field_interaction``.
        hidden_units: DNN hidden sizes.
        dropout: DNN dropout.
        batch_norm: BatchNorm1d (torch's statistics) in the DNN.
        activation: DNN activation.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = FiBiNET(schema, embed_size=10, bilinear_type="field_interaction")
        logits = model(batch, training=True)  # [B]
    """

    torch_children = ("linear", "embedding", "senet", "bilinear", "senet_bilinear", "dnn")

    def __init__(
        self,
        schema: Schema,
        embed_size: int = 10,
        reduction_ratio: int = 3,
        bilinear_type: str = "field_interaction",
        hidden_units: Sequence[int] = (500, 500, 500),
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        self.linear = Linear(self.schema)
        self.embedding = FieldEmbedding(self.schema, embed_size)
        num_fields, d = self.embedding.num_fields, self.embedding.dim
        self.senet = SqueezeExcitation(num_fields, reduction_ratio)
        self.bilinear = BilinearInteraction(num_fields, d, bilinear_type)
        self.senet_bilinear = BilinearInteraction(num_fields, d, bilinear_type)
        input_dim = 2 * num_fields * (num_fields - 1) // 2 * d
        self.dnn = MLP(input_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        e = self.embedding(batch, training=training)  # (B, F, D)
        p = self.bilinear(e)  # (B, P, D)
        q = self.senet_bilinear(self.senet(e))  # (B, P, D)
        deep = self.dnn(flatten_fields(tf.concat([p, q], axis=1)), training=training)  # (B, 1)
        return add_promoted(self.linear(batch, training=training), deep)  # (B, 1)
