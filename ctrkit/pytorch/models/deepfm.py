"""DeepFM."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ctrkit.pytorch.layers import MLP, FactorizationMachine, FieldEmbedding, Linear
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.schema import Schema


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
        hidden_units: DNN hidden layer sizes (empty: a single Linear on the embeddings).
        dropout: DNN dropout.
        batch_norm: BatchNorm1d in the DNN.
        activation: DNN activation.

    Example::

        model = DeepFM(schema, embed_size=16, hidden_units=(400, 400, 400))
        logits = model(batch)  # [B]
    """

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
        self.linear = Linear(schema)
        self.embedding = FieldEmbedding(schema, embed_size)
        self.fm = FactorizationMachine()
        self.dnn = MLP(
            self.embedding.num_fields * self.embedding.dim, hidden_units, activation, dropout, batch_norm, output_dim=1
        )

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)  # (B, F, D)
        return self.linear(batch) + self.fm(e) + self.dnn(e.flatten(1))  # (B, 1)
