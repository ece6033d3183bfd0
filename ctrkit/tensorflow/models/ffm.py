"""Field-aware factorization machine."""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from ctrkit.hparam_checks import check_int
from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import FieldAwareFactorizationMachine, FieldEmbedding, Linear
from ctrkit.tensorflow.models.base import CTRModel, add_promoted


@keras.saving.register_keras_serializable(package="ctrkit")
class FFM(CTRModel):
    """Field-aware Factorization Machine.

    Juan, Zhuang, Chin and Lin, "Field-aware Factorization Machines for CTR Prediction", ACM RecSys
    2016, https://doi.org/10.1145/2959100.2959134::

        y = w_0 + sum_i w_i x_i + sum_{i<j} <v_{i, f_j}, v_{j, f_i}> x_i x_j

    All field-aware vectors live in ONE embedding table whose rows have width ``F * k`` (block ``j``
    of feature ``i``'s row is ``v_{i, f_j}``), read with one gather.

    Differences from the paper: the paper's model has only the pairwise term; the bias and
    first-order term are added here (as most CTR libraries do). Initialisation is the project's
    ``N(0, 1e-4^2)`` rather than the paper's ``U(0, 1/sqrt(k))``. ``embed_size`` defaults to 4,
    the ``k`` of the paper's Criteo experiments.

    Args:
        schema: the input schema.
        embed_size: ``k``, latent size per field pair.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = FFM(schema, embed_size=4)
        logits = model(batch)  # [B]
    """

    torch_children = ("linear", "embedding")

    def __init__(self, schema: Schema, embed_size: int = 4) -> None:
        super().__init__(schema)
        k = check_int("embed_size", embed_size)
        self.linear = Linear(self.schema)
        num_fields = len(self.schema.sparse) + len(self.schema.dense) + len(self.schema.sequence)
        self.embedding = FieldEmbedding(self.schema, num_fields * k)
        self.ffm = FieldAwareFactorizationMachine(num_fields, k)

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        e = self.embedding(batch, training=training)  # (B, F, F*k)
        return add_promoted(self.linear(batch, training=training), self.ffm(e))  # (B, 1)
