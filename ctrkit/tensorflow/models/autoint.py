"""AutoInt and AutoInt+."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from ctrkit.hparam_checks import check_activation, check_bool, check_int, check_prob, check_units
from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import MLP, FieldEmbedding, MultiHeadSelfAttention, dense
from ctrkit.tensorflow.models.base import CTRModel, add_promoted, flatten_fields


@keras.saving.register_keras_serializable(package="ctrkit")
class AutoInt(CTRModel):
    """AutoInt (and AutoInt+ with ``use_dnn=True``).

    Song, Shi, Xiao, Duan, Xu, Zhang and Tang, "AutoInt: Automatic Feature Interaction Learning
    via Self-Attentive Neural Networks", CIKM 2019, https://arxiv.org/abs/1810.11921::

        e_m      = V_m x_m                         (categorical: a row; numerical: a row times the value)
        e^(l+1)  = ReLU( MultiHead(e^(l)) + W_Res e^(l) )      for l = 1..attention_layers
        y_att    = w^T [e^(L)_1; ...; e^(L)_M] + b
        y        = y_att                     (AutoInt)
        y        = y_att + MLP([e_1; ...; e_M])   (AutoInt+, use_dnn=True)

    The attention logits are unscaled dot products as in the paper (``scaled_attention=True``
    divides them by ``sqrt(d')``). ``attention_dim`` is ``d'`` per head; the defaults (3 layers,
    2 heads, d' = 32) are the paper's. AutoInt+ adds the DNN's logit to the attention logit.
    ``attention`` is the list of interacting layers (torch's ``nn.Sequential``, same indices).

    Args:
        schema: the input schema.
        embed_size: ``d``.
        attention_layers: number of interacting layers.
        num_heads: attention heads per layer.
        attention_dim: ``d'``, width of each head.
        use_residual: residual projection ``W_Res`` in each layer.
        scaled_attention: scale attention logits by ``1/sqrt(d')``.
        use_dnn: add the DNN branch (AutoInt+).
        hidden_units, dropout, batch_norm, activation: the DNN branch (unused without ``use_dnn``).

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = AutoInt(schema, embed_size=16, use_dnn=True)   # AutoInt+
        logits = model(batch, training=True)  # [B]
    """

    torch_children = ("embedding", "attention", "attention_output", "dnn")

    def __init__(
        self,
        schema: Schema,
        embed_size: int = 16,
        attention_layers: int = 3,
        num_heads: int = 2,
        attention_dim: int = 32,
        use_residual: bool = True,
        scaled_attention: bool = False,
        use_dnn: bool = False,
        hidden_units: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        attention_layers = check_int("attention_layers", attention_layers)
        self.use_dnn = check_bool("use_dnn", use_dnn)
        self.embedding = FieldEmbedding(self.schema, embed_size)
        num_fields, width = self.embedding.num_fields, self.embedding.dim
        layers = []
        for _ in range(attention_layers):
            layer = MultiHeadSelfAttention(width, attention_dim, num_heads, use_residual, scaled_attention)
            layers.append(layer)
            width = layer.output_dim
        self.attention = layers
        self.attention_output = dense(1, num_fields * width, name="attention_output")
        if self.use_dnn:
            self.dnn = MLP(
                num_fields * self.embedding.dim, hidden_units, activation, dropout, batch_norm, output_dim=1
            )
        else:
            self.dnn = None
            # Validate the branch's settings anyway, so a typo is reported whatever use_dnn says.
            check_units("hidden_units", hidden_units)
            check_prob("dropout", dropout)
            check_bool("batch_norm", batch_norm)
            check_activation("activation", activation)
            self.unused_hparams = ("hidden_units", "dropout", "batch_norm", "activation")

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        e = self.embedding(batch, training=training)  # (B, F, D)
        h = e
        for layer in self.attention:
            h = layer(h)  # (B, F, H*d')
        out = self.attention_output(flatten_fields(h))  # (B, 1)
        if self.dnn is not None:
            out = add_promoted(out, self.dnn(flatten_fields(e), training=training))  # (B, 1)
        return out
