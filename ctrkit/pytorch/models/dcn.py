"""Deep & Cross Network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctrkit.pytorch.layers import MLP, CrossNet, FieldEmbedding, init_linear
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.schema import Schema


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
    embeddings. With ``hidden_units=()`` the model is the cross network alone.

    Args:
        schema: the input schema.
        embed_size: embedding width.
        cross_layers: number of cross layers (>= 1).
        hidden_units: deep network hidden sizes.
        dropout: deep network dropout.
        batch_norm: BatchNorm1d in the deep network.
        activation: deep network activation.

    Example::

        model = DCN(schema, embed_size=16, cross_layers=3, hidden_units=(400, 400, 400))
        logits = model(batch)  # [B]
    """

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
        self.embedding = FieldEmbedding(schema, embed_size)
        input_dim = self.embedding.num_fields * self.embedding.dim
        self.cross = CrossNet(input_dim, cross_layers)
        self.dnn = MLP(input_dim, hidden_units, activation, dropout, batch_norm)
        deep_dim = self.dnn.output_dim if self.dnn.hidden_units else 0
        self.output = nn.Linear(input_dim + deep_dim, 1)
        init_linear(self.output)

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.embedding(batch).flatten(1)  # (B, F*D)
        cross = self.cross(x0)  # (B, F*D)
        if not self.dnn.hidden_units:
            return self.output(cross)  # (B, 1)
        # w^T [x_L; h] + b without materialising the concatenation: two GEMVs on column blocks
        d = cross.shape[1]
        weight = self.output.weight  # (1, F*D + H)
        return F.linear(cross, weight[:, :d], self.output.bias) + F.linear(self.dnn(x0), weight[:, d:])  # (B, 1)
