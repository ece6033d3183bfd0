"""Operation-aware Neural Network (ONN, a.k.a. NFFM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ctrkit.pytorch.layers import MLP, FieldEmbedding, OperationAwareInteraction
from ctrkit.pytorch.layers._checks import check_int
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.schema import Schema


class ONN(CTRModel):
    """Operation-aware Neural Network: one embedding per (field, operation), products into a DNN.

    Yang, Xu, Shen and Zhao, "Operation-aware Neural Networks for User Response Prediction",
    Neural Networks 2020, https://arxiv.org/abs/1904.12579::

        e_{i,o}  = embedding of field i's value for operation o   (o = copy, or the product with field j)
        h        = [e_{1,1}; ...; e_{F,F}; f_12; ...; f_{F-1,F}],   f_ij = <e_{i,j}, e_{j,i}>
        y        = MLP(h)

    Every field's ``F`` operation-aware embeddings are the ``F`` blocks of one ``F*D``-wide row
    of ONE table (read with one gather; block ``j`` of field ``i`` is ``e_{i,j}``, the diagonal
    block is the copy embedding), see
    :class:`~ctrkit.pytorch.layers.OperationAwareInteraction`. The table holds
    ``(vocabulary + dense fields) x F x D`` floats: ``ctrkit.registry.embedding_bytes`` estimates
    it and ``check_fits_in_memory`` refuses a configuration that would not fit.

    Choices: the product is the inner product of the ONN paper (``product="inner"``, as FuxiCTR's
    ONN and ONNv2); ``product="hadamard"`` keeps the element-wise products (the NFFM competition model,
    as DeepCTR's ONN). No first-order term: the paper's model and FuxiCTR's have none. Defaults
    are FuxiCTR's ONN (``embedding_dim=2``, ``hidden_units=[64, 64, 64]``, ReLU, no dropout or
    batch norm).

    Args:
        schema: the input schema.
        embed_size: ``D``, width of each operation-aware embedding.
        hidden_units: DNN hidden sizes.
        product: ``inner`` or ``hadamard``.
        dropout: DNN dropout.
        batch_norm: BatchNorm1d in the DNN.
        activation: DNN activation.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = ONN(schema, embed_size=2, hidden_units=(64, 64, 64))
        logits = model(batch)  # [B]
    """

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
        num_fields = len(schema.sparse) + len(schema.dense) + len(schema.sequence)
        self.embedding = FieldEmbedding(schema, num_fields * d)
        self.interaction = OperationAwareInteraction(num_fields, d, product)
        self.dnn = MLP(self.interaction.output_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)  # (B, F, F*D)
        return self.dnn(self.interaction(e))  # (B, 1)
