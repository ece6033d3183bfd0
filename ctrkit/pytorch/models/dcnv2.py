"""DCN-V2 (and DCN-Mix)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctrkit.hparam_checks import check_activation, check_bool, check_choice, check_int
from ctrkit.pytorch.layers import MLP, CrossNetMix, CrossNetV2, FieldEmbedding, init_linear
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.schema import Schema

#: how the cross network and the DNN are combined
DCNV2_STRUCTURES = ("parallel", "stacked")


class DCNV2(CTRModel):
    """DCN-V2: full-rank cross layers (or DCN-Mix's mixture of low-rank experts) with a DNN.

    Wang, Shivanna, Cheng, Jain, Lin, Hong and Chi, "DCN V2: Improved Deep & Cross Network and
    Practical Lessons for Web-scale Learning to Rank Systems", WWW 2021,
    https://arxiv.org/abs/2008.13535::

        x_0     = [e_1; ...; e_F]
        x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l                         (eq. 1; CrossNetV2)
        x_{l+1} = sum_i G_i(x_l) x_0 ⊙ (U_i g(C_i g(V_i^T x_l)) + b_l) + x_l   (eq. 3-4; CrossNetMix)
        stacked:  y = w^T MLP(x_L) + b
        parallel: y = w^T [x_L; MLP(x_0)] + b

    With ``hidden_units=()`` both structures are the cross network and one output Linear.
    Dense fields enter ``x_0`` embedded (``x_j v_j``), as in every model here.

    Defaults are FuxiCTR's DCNv2 template: ``model_structure="parallel"``, three cross layers,
    ``use_low_rank_mixture=False``, ``low_rank=32``, ``num_experts=4``,
    ``hidden_units=[500, 500, 500]``, ReLU, no dropout or batch norm; ``low_rank_activation``
    ``tanh`` (FuxiCTR's and DeepCTR's ``g``); ``embed_size=16`` as the project's DCN.

    Args:
        schema: the input schema.
        embed_size: embedding width.
        cross_layers: number of cross layers (>= 1).
        model_structure: ``parallel`` or ``stacked``.
        use_low_rank_mixture: DCN-Mix's cross layers instead of the full-rank ones.
        low_rank: ``r`` of each expert (mixture only).
        num_experts: ``K`` (mixture only).
        low_rank_activation: ``g`` (mixture only; ``identity`` for the linear mixture).
        hidden_units: DNN hidden sizes.
        dropout: DNN dropout.
        batch_norm: BatchNorm1d in the DNN.
        activation: DNN activation.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = DCNV2(schema, cross_layers=3, model_structure="stacked", use_low_rank_mixture=True)
        logits = model(batch)  # [B]
    """

    def __init__(
        self,
        schema: Schema,
        embed_size: int = 16,
        cross_layers: int = 3,
        model_structure: str = "parallel",
        use_low_rank_mixture: bool = False,
        low_rank: int = 32,
        num_experts: int = 4,
        low_rank_activation: str = "tanh",
        hidden_units: Sequence[int] = (500, 500, 500),
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        self.model_structure = check_choice("model_structure", model_structure, DCNV2_STRUCTURES)
        self.use_low_rank_mixture = check_bool("use_low_rank_mixture", use_low_rank_mixture)
        self.embedding = FieldEmbedding(schema, embed_size)
        input_dim = self.embedding.num_fields * self.embedding.dim
        # the mixture's settings are checked whichever cross network is built, so a typo is reported
        low_rank, num_experts = check_int("low_rank", low_rank), check_int("num_experts", num_experts)
        low_rank_activation = check_activation("low_rank_activation", low_rank_activation)
        if self.use_low_rank_mixture:
            self.cross = CrossNetMix(input_dim, cross_layers, low_rank, num_experts, low_rank_activation)
        else:
            self.cross = CrossNetV2(input_dim, cross_layers)
            self.unused_hparams = ("low_rank", "num_experts", "low_rank_activation")
        stacked = self.model_structure == "stacked"
        self.dnn = MLP(input_dim, hidden_units, activation, dropout, batch_norm)
        deep_dim = self.dnn.output_dim if self.dnn.hidden_units else 0
        self.output = nn.Linear(deep_dim if stacked and deep_dim else input_dim + deep_dim, 1)
        init_linear(self.output)

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.embedding(batch).flatten(1)  # (B, F*D)
        cross = self.cross(x0)  # (B, F*D)
        if not self.dnn.hidden_units:
            return self.output(cross)  # (B, 1)
        if self.model_structure == "stacked":
            return self.output(self.dnn(cross))  # (B, 1)
        # w^T [x_L; h] + b without materialising the concatenation: two GEMVs on column blocks
        d = cross.shape[1]
        weight = self.output.weight  # (1, F*D + H)
        return F.linear(cross, weight[:, :d], self.output.bias) + F.linear(self.dnn(x0), weight[:, d:])  # (B, 1)
