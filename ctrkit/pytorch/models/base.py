"""Shared base class of the PyTorch CTR models."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ctrkit.schema import Schema


class CTRModel(nn.Module):
    """A pure model: ``model(batch) -> logits`` float32 ``[B]`` (no sigmoid, no loss, no optimizer).

    Subclasses implement :meth:`logits` returning ``[B, 1]`` (any float dtype); :meth:`forward`
    flattens it and casts low-precision logits (bf16 autocast) to float32; a float64 model keeps
    float64, so it can be gradchecked end to end.

    ``unused_hparams`` names constructor keywords that the current configuration ignores (for
    example ``hidden_units`` of AutoInt without its DNN); the registry reports them to the CLI.
    """

    unused_hparams: tuple[str, ...] = ()

    def __init__(self, schema: Schema) -> None:
        super().__init__()
        self.schema = schema

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        logits = self.logits(batch).reshape(-1)  # (B,)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))
