"""DIEN: Deep Interest Evolution Network (TensorFlow); mirror of :mod:`ctrkit.pytorch.models.dien`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from ctrkit.hparam_checks import behaviour_fields, check_bool, check_int, check_units, check_weight
from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import MLP, FieldEmbedding
from ctrkit.tensorflow.layers._dtypes import promoted
from ctrkit.tensorflow.layers.sequence import AUGRU, GRU, AuxiliaryLoss, InterestAttention, behaviours
from ctrkit.tensorflow.models.base import CTRModel, flatten_fields
from ctrkit.training.objective import AUX_LOSS, LOGITS


@keras.saving.register_keras_serializable(package="ctrkit")
class DIEN(CTRModel):
    """DIEN: a GRU interest extractor with an auxiliary loss, then AUGRU interest evolution.

    Zhou et al., "Deep Interest Evolution Network for Click-Through Rate Prediction", AAAI 2019,
    https://arxiv.org/abs/1809.03672::

        h_t   = GRU(e_t, h_{t-1})                                  (padding skipped)
        L_aux = auxiliary loss of h_t on e_{t+1} vs the next row's behaviour      (eq. 3)
        a_t   = softmax_t(MLP([h_t, q, h_t - q, h_t * q])), q = W_q e_a + b_q      (eq. 5)
        h'_t  = AUGRU(h_t, h'_{t-1}; a_t)                          (eq. 6-7)
        y     = MLP([e_1; ...; e_K; h'_L; s; e_a * s]),  s = sum_{t non-padding} e_t
                                                 (the authors' code; behaviour_sum=False: without s)

    Same constructor, defaults and function as the torch model; in training with
    ``aux_loss_weight > 0`` it returns ``{"logits", "aux_loss": aux_loss_weight * L_aux}``.

    Shapes: batch -> ``[B]`` logits.
    """

    torch_children = ("embedding", "extractor", "auxiliary", "attention", "evolution", "dnn")

    def __init__(
        self,
        schema: Schema,
        embed_size: int = 16,
        hidden_units: Sequence[int] = (200, 80),
        gru_units: int = 0,
        aux_hidden_units: Sequence[int] = (100, 50),
        aux_loss_weight: float = 1.0,
        attention_units: Sequence[int] = (80, 40),
        attention_activation: str = "sigmoid",
        behaviour_sum: bool = True,
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        sequences = behaviour_fields(self.schema, "DIEN")
        hidden_units = check_units("hidden_units", hidden_units)
        self.aux_loss_weight = check_weight("aux_loss_weight", aux_loss_weight)
        self.embedding = FieldEmbedding(self.schema, embed_size)
        behaviour_dim = len(sequences) * self.embedding.dim
        hidden = check_int("gru_units", gru_units, minimum=0) or behaviour_dim
        self.extractor = GRU(behaviour_dim, hidden)
        self.auxiliary = AuxiliaryLoss(hidden, behaviour_dim, aux_hidden_units)
        self.attention = InterestAttention(behaviour_dim, hidden, attention_units, attention_activation)
        self.evolution = AUGRU(hidden, hidden)
        self.behaviour_sum = check_bool("behaviour_sum", behaviour_sum)
        fixed = self.embedding.n_sparse + self.embedding.n_dense
        summed = 2 * behaviour_dim if self.behaviour_sum else 0
        self.dnn = MLP(fixed * self.embedding.dim + hidden + summed, hidden_units, activation, dropout, batch_norm,
                       output_dim=1)

    def outputs(self, batch: Mapping[str, tf.Tensor], training: bool, with_aux: bool):
        """Logits ``[B, 1]`` and the unweighted auxiliary loss (None unless ``with_aux``)."""
        fields, query, keys, mask = behaviours(self.embedding, batch, training=training)
        states = self.extractor(keys, mask)  # (B, L, H)
        aux = self.auxiliary(states, keys, mask, training=training) if with_aux else None
        attention = self.attention(query, states, mask, training=training)  # (B, L)
        interest = self.evolution(states, attention, mask)[:, -1]  # (B, H)
        parts = [flatten_fields(fields), tf.cast(interest, fields.dtype)]
        if self.behaviour_sum:
            summed = tf.reduce_sum(keys * tf.cast(mask, keys.dtype)[:, :, None], axis=1)  # (B, n_seq*D)
            parts += [summed, query * summed]
        return self.dnn(tf.concat(parts, axis=1), training=training), aux  # (B, 1)

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.outputs(batch, training, with_aux=False)[0]

    def call(self, batch: Mapping[str, tf.Tensor], training: bool = False):
        if not (training and self.aux_loss_weight > 0):
            return super().call(batch, training=training)
        logits, aux = self.outputs(batch, training, with_aux=True)
        logits = tf.reshape(logits, (-1,))
        return {LOGITS: tf.cast(logits, promoted(logits.dtype, tf.float32)), AUX_LOSS: self.aux_loss_weight * aux}
