"""Operation-aware Neural Network (ONN, a.k.a. NFFM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from ctrkit.hparam_checks import check_int
from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import MLP, FieldEmbedding, OperationAwareInteraction
from ctrkit.tensorflow.models.base import CTRModel


@keras.saving.register_keras_serializable(package="ctrkit")
class ONN(CTRModel):
    """Operation-aware Neural Network: one embedding per (field, operation), products into a DNN.

    Yang, Xu, Shen and Zhao, "Operation-aware Neural Networks for User Response Prediction",
    Neural Networks 2020, https://arxiv.org/abs/1904.12579::

        e_{i,o}  = embedding of field i's value for operation o   (o = copy, or the product with field j)
        h        = [e_{1,1}; ...; e_{F,F}; f_12; ...; f_{F-1,F}],   f_ij = <e_{i,j}, e_{j,i}>
        y        = MLP(h)

    Every field's ``F`` operation-aware embeddings are the ``F`` blocks of one ``F*D``-wide row
    of ONE table (one gather; block ``j`` of field ``i`` is ``e_{i,j}``, the diagonal block is the
    copy embedding), see :class:`~ctrkit.tensorflow.layers.OperationAwareInteraction`. The table
    holds ``(vocabulary + dense fields) x F x D`` floats (``ctrkit.registry.embedding_bytes``).

    Choices as the torch model: ``product="inner"`` (the ONN paper, FuxiCTR's ONN and ONNv2) or
    ``"hadamard"`` (NFFM, as DeepCTR's ONN); no first-order term; FuxiCTR's ONN defaults.

    Args:
        schema: the input schema.
        embed_size: ``D``, width of each operation-aware embedding.
        hidden_units: DNN hidden sizes.
        product: ``inner`` or ``hadamard``.
        dropout: DNN dropout.
        batch_norm: BatchNorm1d (torch's statistics) in the DNN.
        activation: DNN activation.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = ONN(schema, embed_size=2, hidden_units=(64, 64, 64))
        logits = model(batch, training=True)  # [B]
    """

    torch_children = ("embedding", "dnn")

    def __init__(
        self,
        schema: Schema,
        embed_size: int = 2,
        hidden_units: Sequence[int] = (64, 64, 64),
        product: str = "inner",
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        d = check_int("embed_size", embed_size)
        num_fields = len(self.schema.sparse) + len(self.schema.dense) + len(self.schema.sequence)
        self.embedding = FieldEmbedding(self.schema, num_fields * d)
        self.interaction = OperationAwareInteraction(num_fields, d, product)
        self.dnn = MLP(self.interaction.output_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        e = self.embedding(batch, training=training)  # (B, F, F*D)
        return self.dnn(self.interaction(e), training=training)  # (B, 1)
