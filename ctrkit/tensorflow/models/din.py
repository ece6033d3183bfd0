"""DIN: Deep Interest Network (TensorFlow); mirror of :mod:`ctrkit.pytorch.models.din`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from ctrkit.hparam_checks import behaviour_fields, check_units, check_weight
from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import MLP, FieldEmbedding
from ctrkit.tensorflow.layers.sequence import TargetAttention, behaviours, distinct_rows_l2
from ctrkit.tensorflow.models.base import CTRModel, flatten_fields
from ctrkit.training.objective import AUX_LOSS, LOGITS


@keras.saving.register_keras_serializable(package="ctrkit")
class DIN(CTRModel):
    """DIN: target attention of the candidate ad over the user's behaviours.

    Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018,
    https://arxiv.org/abs/1706.06978::

        v_U = sum_t a(e_t, e_a) e_t                  (activation unit, Dice, no softmax, padding masked)
        y   = MLP([e_1; ...; e_K; v_U])

    Same constructor, defaults and function as the torch model; ``mba_l2 > 0`` returns
    ``{"logits", "aux_loss"}`` in training (the mini-batch aware regulariser over the distinct
    rows of the batch, ``n_j = 1``).

    Shapes: batch -> ``[B]`` logits.
    """

    torch_children = ("embedding", "attention", "dnn")

    def __init__(
        self,
        schema: Schema,
        embed_size: int = 16,
        hidden_units: Sequence[int] = (200, 80),
        attention_units: Sequence[int] = (80, 40),
        attention_activation: str = "dice",
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
        mba_l2: float = 0.0,
    ) -> None:
        super().__init__(schema)
        sequences = behaviour_fields(self.schema, "DIN")
        hidden_units = check_units("hidden_units", hidden_units)
        self.mba_l2 = check_weight("mba_l2", mba_l2)
        self.embedding = FieldEmbedding(self.schema, embed_size)
        behaviour_dim = len(sequences) * self.embedding.dim
        self.attention = TargetAttention(behaviour_dim, attention_units, attention_activation)
        fixed = self.embedding.n_sparse + self.embedding.n_dense
        self.dnn = MLP(fixed * self.embedding.dim + behaviour_dim, hidden_units, activation, dropout, batch_norm,
                       output_dim=1)

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        fields, query, keys, mask = behaviours(self.embedding, batch, training=training)
        interest = self.attention(query, keys, mask, training=training)  # (B, E)
        x = tf.concat([flatten_fields(fields), tf.cast(interest, fields.dtype)], axis=1)
        return self.dnn(x, training=training)  # (B, 1)

    def call(self, batch: Mapping[str, tf.Tensor], training: bool = False):
        logits = super().call(batch, training=training)  # (B,)
        if not (training and self.mba_l2 > 0):
            return logits
        return {LOGITS: logits, AUX_LOSS: self.mba_l2 * distinct_rows_l2(self.embedding, batch)}
