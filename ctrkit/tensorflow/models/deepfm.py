"""DeepFM."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import MLP, FactorizationMachine, FieldEmbedding, Linear
from ctrkit.tensorflow.models.base import CTRModel, add_promoted, flatten_fields


@keras.saving.register_keras_serializable(package="ctrkit")
class DeepFM(CTRModel):
    """DeepFM: an FM and a DNN sharing one embedding.

    Guo, Tang, Ye, Li and He, "DeepFM: A Factorization-Machine based Neural Network for CTR
    Prediction", IJCAI 2017, https://arxiv.org/abs/1703.04247::

        y = y_FM + y_DNN
        y_FM  = w_0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j        (O(kn))
        y_DNN = MLP([v_1 x_1; ...; v_F x_F])

    Args:
        schema: the input schema.
        embed_size: ``k``.
        hidden_units: DNN hidden layer sizes (empty: a single Dense on the embeddings).
        dropout: DNN dropout.
        batch_norm: BatchNorm1d (torch's statistics) in the DNN.
        activation: DNN activation.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = DeepFM(schema, embed_size=16, hidden_units=(400, 400, 400))
        logits = model(batch, training=True)  # [B]
    """

    torch_children = ("linear", "embedding", "dnn")

    def __init__(
        self,
        schema: Schema,
        embed_size: int = 16,
        hidden_units: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        self.linear = Linear(self.schema)
        self.embedding = FieldEmbedding(self.schema, embed_size)
        self.fm = FactorizationMachine()
        self.dnn = MLP(
            self.embedding.num_fields * self.embedding.dim, hidden_units, activation, dropout, batch_norm, output_dim=1
        )

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        e = self.embedding(batch, training=training)  # (B, F, D)
        deep = self.dnn(flatten_fields(e), training=training)  # (B, 1)
        return add_promoted(self.linear(batch, training=training), self.fm(e), deep)  # (B, 1)
