"""Plain deep neural network over field embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ctrkit.pytorch.layers import MLP, FieldEmbedding
from ctrkit.pytorch.layers._checks import check_units
from ctrkit.pytorch.models.base import CTRModel
from ctrkit.schema import Schema


class DNN(CTRModel):
    """Embedding + MLP: ``y = MLP([e_1; ...; e_F])``.

    The "embedding & MLP" baseline used throughout the CTR literature (e.g. the deep component of
    Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016,
    https://arxiv.org/abs/1606.07792, without the wide part). The field vectors come from
    :class:`~ctrkit.pytorch.layers.FieldEmbedding` and are concatenated; the tower ends with a
    ``Linear(hidden_units[-1], 1)``.

    Args:
        schema: the input schema.
        embed_size: embedding width.
        hidden_units: hidden layer sizes (at least one).
        dropout: dropout after each hidden layer.
        batch_norm: BatchNorm1d in each hidden layer.
        activation: hidden activation.

    Example::

        model = DNN(schema, embed_size=16, hidden_units=(400, 400, 400))
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
        hidden_units = check_units("hidden_units", hidden_units, allow_empty=False)
        self.embedding = FieldEmbedding(schema, embed_size)
        self.dnn = MLP(
            self.embedding.num_fields * self.embedding.dim, hidden_units, activation, dropout, batch_norm, output_dim=1
        )

    def logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)  # (B, F, D)
        return self.dnn(e.flatten(1))  # (B, 1)
