"""Logistic regression."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ctrkit.pytorch.layers import Linear
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.schema import Schema


class LR(CTRModel):
    """Logistic regression: ``y = b + sum_i w_i x_i``.

    The classic baseline of CTR prediction (e.g. Richardson, Dominowska and Ragno, "Predicting
    Clicks: Estimating the Click-Through Rate for New Ads", WWW 2007,
    https://doi.org/10.1145/1242572.1242643). ``w_i`` is the weight of field ``i``'s id (sparse),
    ``w_j * x_j`` for a dense field, and the mean of the item weights for a sequence field.

    Args:
        schema: the input schema.

    Example::

        model = LR(schema)
        logits = model(batch)  # [B]
    """

    def __init__(self, schema: Schema) -> None:
        super().__init__(schema)
        self.linear = Linear(schema)

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(batch)  # (B, 1)
