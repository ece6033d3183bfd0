"""xDeepFM."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import MLP, CompressedInteractionNetwork, FieldEmbedding, Linear, dense
from ctrkit.tensorflow.models.base import CTRModel, add_promoted, flatten_fields


@keras.saving.register_keras_serializable(package="ctrkit")
class XDeepFM(CTRModel):
    """xDeepFM: linear part + Compressed Interaction Network + DNN on shared embeddings.

    Lian, Zhou, Zhang, Chen, Xie and Sun, "xDeepFM: Combining Explicit and Implicit Feature
    Interactions for Recommender Systems", KDD 2018, https://arxiv.org/abs/1803.05170 (eq. 9)::

        y = w_linear^T a + w_dnn^T x^k_dnn + w_cin^T p^+ + b

    where ``a`` are the raw features (first-order weights), ``x^k_dnn`` the last hidden layer of
    the DNN over ``[e_1; ...; e_F]`` and ``p^+`` the sum-pooled CIN feature maps. Each of the three
    terms is computed by its own output layer and the logits are added (the bias ``b`` is split
    across them). With ``hidden_units=()`` the DNN term is a single Dense on the embeddings.

    Args:
        schema: the input schema.
        embed_size: embedding width.
        cin_layer_units: feature maps per CIN layer (at least one layer; with ``split_half``, even
            but the last).
        split_half: send half of each CIN layer's maps (but the last) to the output.
        cin_activation: activation of the CIN feature maps (paper: identity).
        hidden_units: DNN hidden sizes.
        dropout: DNN dropout.
        batch_norm: BatchNorm1d (torch's statistics) in the DNN.
        activation: DNN activation.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = XDeepFM(schema, embed_size=16, cin_layer_units=(16, 16, 16))
        logits = model(batch, training=True)  # [B]
    """

    torch_children = ("linear", "embedding", "cin", "cin_output", "dnn")

    def __init__(
        self,
        schema: Schema,
        embed_size: int = 16,
        cin_layer_units: Sequence[int] = (16, 16, 16),
        split_half: bool = True,
        cin_activation: str = "identity",
        hidden_units: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        self.linear = Linear(self.schema)
        self.embedding = FieldEmbedding(self.schema, embed_size)
        num_fields = self.embedding.num_fields
        self.cin = CompressedInteractionNetwork(num_fields, cin_layer_units, split_half, cin_activation)
        self.cin_output = dense(1, self.cin.output_dim, use_bias=False, name="cin_output")
        self.dnn = MLP(num_fields * self.embedding.dim, hidden_units, activation, dropout, batch_norm, output_dim=1)

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        e = self.embedding(batch, training=training)  # (B, F, D)
        cin = self.cin_output(self.cin(e))  # (B, 1)
        deep = self.dnn(flatten_fields(e), training=training)  # (B, 1)
        return add_promoted(self.linear(batch, training=training), cin, deep)  # (B, 1)
