"""FiBiNET."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ctrkit.pytorch.layers import MLP, BilinearInteraction, FieldEmbedding, Linear, SqueezeExcitation
from ctrkit.pytorch.layers.interaction import bilinear_side_by_side
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.schema import Schema


class FiBiNET(CTRModel):
    """FiBiNET: SENET field importance and bilinear interactions, a DNN on top, plus the linear part.

    Huang, Zhang and Zhang, "FiBiNET: Combining Feature Importance and Bilinear feature
    Interaction for Click-Through Rate Prediction", RecSys 2019, https://arxiv.org/abs/1905.09433::

        E = [e_1, ..., e_F]            V = SENET(E)                      (eq. 2-5)
        p = Bilinear_p(E), q = Bilinear_q(V),   each [p_12; ...; p_{F-1,F}], p_ij = (W v_i) ⊙ v_j   (eq. 6-9)
        y = w_0 + sum_i w_i x_i + MLP([p; q])                            (eq. 10-12)

    The two bilinear layers have their own matrices (as FuxiCTR's and DeepCTR's FiBiNET); see
    :class:`~ctrkit.pytorch.layers.SqueezeExcitation` and
    :class:`~ctrkit.pytorch.layers.BilinearInteraction`.

    Defaults are FuxiCTR's FiBiNET (model code and its model_config template):
    ``embedding_dim=10``, ``reduction_ratio=3``, ``bilinear_type="field_interaction"``,
    ``hidden_units=[500, 500, 500]``, ReLU, no dropout, no batch norm. The DNN input is
    ``F (F - 1) D`` wide (14,820 for Criteo's 39 fields at ``D = 10``).

    Args:
        schema: the input schema.
        embed_size: embedding width ``D``.
        reduction_ratio: SENET reduction ratio ``r``.
        bilinear_type: ``field_all``, ``field_each`` or ``field_interaction``.
        hidden_units: DNN hidden sizes.
        dropout: DNN dropout.
        batch_norm: BatchNorm1d in the DNN.
        activation: DNN activation.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = FiBiNET(schema, embed_size=10, bilinear_type="field_interaction")
        logits = model(batch)  # [B]
    """

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
        self.linear = Linear(schema)
        self.embedding = FieldEmbedding(schema, embed_size)
        num_fields, d = self.embedding.num_fields, self.embedding.dim
        self.senet = SqueezeExcitation(num_fields, reduction_ratio)
        self.bilinear = BilinearInteraction(num_fields, d, bilinear_type)
        self.senet_bilinear = BilinearInteraction(num_fields, d, bilinear_type)
        input_dim = 2 * num_fields * (num_fields - 1) // 2 * d
        self.dnn = MLP(input_dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)  # (B, F, D)
        pq = bilinear_side_by_side((self.bilinear, self.senet_bilinear), (e, self.senet(e)))  # (B, 2P, D): [p; q]
        return self.linear(batch) + self.dnn(pq.flatten(1))  # (B, 1)
