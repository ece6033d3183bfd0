"""Building blocks of the TensorFlow (Keras 3) CTR models; mirror of :mod:`ctrkit.pytorch.layers`.

Conventions the trainer relies on (as in the torch package):

* every embedding parameter lives in an :class:`EmbeddingTable`; the embedding L2 regulariser is
  the table's own ``add_loss`` over the rows a training call looked up (set ``table.l2``);
* free biases are :class:`Bias` layers (no weight decay); Dense biases and :class:`BatchNorm1d`
  are likewise exempt, every other weight is decayed;
* kernels are Xavier-normal (untruncated), biases zero, embedding rows ``N(0, 1e-4^2)``;
* every layer has ``torch_parameters()``: the names of the mirrored torch module's
  ``state_dict`` -> (variable, layout), see :mod:`ctrkit.parity`.
"""

from ctrkit.hparam_checks import ACTIVATIONS
from ctrkit.tensorflow.layers.embedding import (
    Bias,
    EmbeddingTable,
    FieldEmbedding,
    Linear,
    embedding_tables,
    set_embedding_l2,
)
from ctrkit.tensorflow.layers.interaction import (
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
from ctrkit.tensorflow.layers.mlp import (
    MLP,
    BatchNorm1d,
    dense,
    make_activation,
    torch_default_initialise,
    xavier_normal,
)

__all__ = [
    "ACTIVATIONS",
    "BILINEAR_TYPES",
    "ONN_PRODUCTS",
    "AttentionalPooling",
    "BatchNorm1d",
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
    "dense",
    "embedding_tables",
    "make_activation",
    "set_embedding_l2",
    "torch_default_initialise",
    "xavier_normal",
]

from ctrkit.tensorflow.layers.sequence import (  # noqa: E402
    AUGRU,
    GRU,
    AuxiliaryLoss,
    Dice,
    InterestAttention,
    TargetAttention,
)

__all__ += ["AUGRU", "AuxiliaryLoss", "Dice", "GRU", "InterestAttention", "TargetAttention"]
