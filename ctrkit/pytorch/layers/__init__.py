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
    BILINEAR_TYPES,
    ONN_PRODUCTS,
    AttentionalPooling,
    BilinearInteraction,
    CompressedInteractionNetwork,
    CrossNet,
    CrossNetMix,
    CrossNetV2,
    FactorizationMachine,
    FieldAwareFactorizationMachine,
    MultiHeadSelfAttention,
    OperationAwareInteraction,
    SqueezeExcitation,
)
from ctrkit.pytorch.layers.mlp import MLP, init_linear, make_activation
from ctrkit.pytorch.layers.sequence import AUGRU, GRU, AuxiliaryLoss, Dice, InterestAttention, TargetAttention

__all__ = [
    "AUGRU",
    "AuxiliaryLoss",
    "Dice",
    "GRU",
    "InterestAttention",
    "TargetAttention",
    "ACTIVATIONS",
    "BILINEAR_TYPES",
    "ONN_PRODUCTS",
    "AttentionalPooling",
    "Bias",
    "BilinearInteraction",
    "CompressedInteractionNetwork",
    "CrossNet",
    "CrossNetMix",
    "CrossNetV2",
    "EmbeddingTable",
    "FactorizationMachine",
    "FieldAwareFactorizationMachine",
    "FieldEmbedding",
    "Linear",
    "MLP",
    "MultiHeadSelfAttention",
    "OperationAwareInteraction",
    "SqueezeExcitation",
    "init_linear",
    "make_activation",
]
