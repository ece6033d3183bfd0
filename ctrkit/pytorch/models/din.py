"""DIN: Deep Interest Network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ctrkit.hparam_checks import behaviour_fields, check_units, check_weight
from ctrkit.pytorch.layers import MLP, FieldEmbedding
from ctrkit.pytorch.layers.sequence import TargetAttention, behaviours, distinct_rows_l2
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.schema import Schema
from ctrkit.training.objective import AUX_LOSS, LOGITS


class DIN(CTRModel):
    """DIN: target attention of the candidate ad over the user's behaviours.

    Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018,
    https://arxiv.org/abs/1706.06978::

        v_U = sum_t a(e_t, e_a) e_t                  (activation unit, Dice, no softmax, padding masked)
        y   = MLP([e_1; ...; e_K; v_U])

    ``e_1 .. e_K`` are the sparse and dense fields (the candidate's own fields, user profile,
    context); the behaviours ``e_t`` and the candidate ``e_a`` come from the sequence fields and the
    sparse fields they share (:func:`behaviours`). The schema needs at least one sequence field.

    ``mba_l2 > 0`` adds the paper's mini-batch aware regulariser ``mba_l2 * sum_j ||w_j||^2`` over the
    distinct embedding rows of the batch (:func:`distinct_rows_l2`; ``n_j = 1``), returned in training
    as ``{"logits", "aux_loss"}`` (the step contract of :mod:`ctrkit.training.objective`).

    Args:
        schema: the input schema (at least one sequence field).
        embed_size: ``D``.
        hidden_units: hidden sizes of the output MLP (the paper: 200, 80).
        attention_units: hidden sizes of the activation unit (the paper: 80, 40).
        attention_activation: ``dice`` (the paper) or a name of ``ACTIVATIONS``.
        dropout, batch_norm, activation: of the output MLP.
        mba_l2: weight of the mini-batch aware regulariser (0: off).

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = DIN(schema, embed_size=16)
        logits = model(batch)  # [B]
    """

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
        sequences = behaviour_fields(schema, "DIN")
        hidden_units = check_units("hidden_units", hidden_units)
        self.mba_l2 = check_weight("mba_l2", mba_l2)
        self.embedding = FieldEmbedding(schema, embed_size)
        behaviour_dim = len(sequences) * self.embedding.dim
        self.attention = TargetAttention(behaviour_dim, attention_units, attention_activation)
        fixed = self.embedding.n_sparse + self.embedding.n_dense
        self.dnn = MLP(fixed * self.embedding.dim + behaviour_dim, hidden_units, activation, dropout, batch_norm,
                       output_dim=1)

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        fields, query, keys, mask = behaviours(self.embedding, batch)
        interest = self.attention(query, keys, mask)  # (B, E)
        return self.dnn(torch.cat([fields.flatten(1), interest.to(fields.dtype)], dim=1))  # (B, 1)

    def forward(self, batch: Mapping[str, torch.Tensor]):
        logits = super().forward(batch)  # (B,)
        if not (self.training and self.mba_l2 > 0):
            return logits
        return {LOGITS: logits, AUX_LOSS: self.mba_l2 * distinct_rows_l2(self.embedding, batch)}

