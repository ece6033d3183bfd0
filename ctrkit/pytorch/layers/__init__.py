"""Building blocks of the PyTorch CTR models.

Conventions the trainer relies on (see ``docs/architecture.md``):

* every embedding parameter lives in an :class:`EmbeddingTable` and is read through its
  ``forward`` (the trainer hooks it for the embedding regulariser and keeps it out of weight
  decay);
* free biases are :class:`Bias` modules (no weight decay); ``nn.Linear``/``nn.Conv1d`` biases and
  norm layers are likewise exempt, every other weight is decayed;
* weight matrices are Xavier-normal, biases zero, embedding rows ``N(0, 1e-4^2)``.
"""

from ctrkit.pytorch.layers._checks import ACTIVATIONS
from ctrkit.pytorch.layers.embedding import Bias, EmbeddingTable, FieldEmbedding, Linear
from ctrkit.pytorch.layers.interaction import (
    AttentionalPooling,
    CompressedInteractionNetwork,
    CrossNet,
    FactorizationMachine,
    FieldAwareFactorizationMachine,
    MultiHeadSelfAttention,
)
from ctrkit.pytorch.layers.mlp import MLP, init_linear, make_activation

__all__ = [
    "ACTIVATIONS",
    "AttentionalPooling",
    "Bias",
    "CompressedInteractionNetwork",
    "CrossNet",
    "EmbeddingTable",
    "FactorizationMachine",
    "FieldAwareFactorizationMachine",
    "FieldEmbedding",
    "Linear",
    "MLP",
    "MultiHeadSelfAttention",
    "init_linear",
    "make_activation",
]
