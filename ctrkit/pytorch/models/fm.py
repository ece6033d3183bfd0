"""Factorization machine."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ctrkit.pytorch.layers import FactorizationMachine, FieldEmbedding, Linear
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.schema import Schema


class FM(CTRModel):
    """Factorization Machine.

    Rendle, "Factorization Machines", IEEE ICDM 2010, https://doi.org/10.1109/ICDM.2010.127::

        y = w_0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j

    over the active features (one per field; a dense field contributes ``x_j v_j``, a sequence
    field the mean of its items' vectors). The pairwise sum is computed in O(kn) as
    ``1/2 sum_f [(sum_i v_{i,f})^2 - sum_i v_{i,f}^2]``.

    Args:
        schema: the input schema.
        embed_size: ``k``.

    Example::

        model = FM(schema, embed_size=16)
        logits = model(batch)  # [B]
    """

    def __init__(self, schema: Schema, embed_size: int = 16) -> None:
        super().__init__(schema)
        self.linear = Linear(schema)
        self.embedding = FieldEmbedding(schema, embed_size)
        self.fm = FactorizationMachine()

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)  # (B, F, D)
        return self.linear(batch) + self.fm(e)  # (B, 1)
