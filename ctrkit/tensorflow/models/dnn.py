"""Plain deep neural network over field embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from ctrkit.hparam_checks import check_units
from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import MLP, FieldEmbedding
from ctrkit.tensorflow.models.base import CTRModel, flatten_fields


@keras.saving.register_keras_serializable(package="ctrkit")
class DNN(CTRModel):
    """Embedding + MLP: ``y = MLP([e_1; ...; e_F])``.

    The "embedding & MLP" baseline used throughout the CTR literature (e.g. the deep component of
    Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016,
    https://arxiv.org/abs/1606.07792, without the wide part). The field vectors come from
    :class:`~ctrkit.tensorflow.layers.FieldEmbedding` and are concatenated; the tower ends with a
    ``Dense(1)``.

    Args:
        schema: the input schema.
        embed_size: embedding width.
        hidden_units: hidden layer sizes (at least one).
        dropout: dropout after each hidden layer.
        batch_norm: BatchNorm1d (torch's statistics) in each hidden layer.
        activation: hidden activation.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = DNN(schema, embed_size=16, hidden_units=(400, 400, 400))
        logits = model(batch, training=True)  # [B]
    """

    torch_children = ("embedding", "dnn")

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
        hidden_units = check_units("hidden_units", hidden_units, allow_empty=False)
        self.embedding = FieldEmbedding(self.schema, embed_size)
        self.dnn = MLP(
            self.embedding.num_fields * self.embedding.dim, hidden_units, activation, dropout, batch_norm, output_dim=1
        )

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        e = self.embedding(batch, training=training)  # (B, F, D)
        return self.dnn(flatten_fields(e), training=training)  # (B, 1)

