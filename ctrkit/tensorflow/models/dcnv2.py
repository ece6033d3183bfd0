"""DCN-V2 (and DCN-Mix)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from ctrkit.hparam_checks import check_activation, check_bool, check_choice, check_int
from ctrkit.schema import Schema
from ctrkit.tensorflow.layers import MLP, CrossNetMix, CrossNetV2, FieldEmbedding, dense
from ctrkit.tensorflow.models.base import CTRModel, flatten_fields

#: how the cross network and the DNN are combined
DCNV2_STRUCTURES = ("parallel", "stacked")


@keras.saving.register_keras_serializable(package="ctrkit")
class DCNV2(CTRModel):
    """DCN-V2: full-rank cross layers (or DCN-Mix's mixture of low-rank experts) with a DNN.

    Wang, Shivanna, Cheng, Jain, Lin, Hong and Chi, "DCN V2: Improved Deep & Cross Network and
    Practical Lessons for Web-scale Learning to Rank Systems", WWW 2021,
    https://arxiv.org/abs/2008.13535::

        x_0     = [e_1; ...; e_F]
        x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l                         (eq. 1; CrossNetV2)
        x_{l+1} = sum_i G_i(x_l) x_0 ⊙ (U_i g(C_i g(V_i^T x_l)) + b_l) + x_l   (eq. 3-4; CrossNetMix)
        stacked:  y = w^T MLP(x_L) + b
        parallel: y = w^T [x_L; MLP(x_0)] + b

    With ``hidden_units=()`` both structures are the cross network and one output Dense. Dense
    fields enter ``x_0`` embedded (``x_j v_j``). Defaults are FuxiCTR's DCNv2 template, as in
    torch. The torch attribute ``output`` is ``output_layer`` here (Keras reserves ``output``).

    Args:
        schema: the input schema.
        embed_size: embedding width.
        cross_layers: number of cross layers (>= 1).
        model_structure: ``parallel`` or ``stacked``.
        use_low_rank_mixture: DCN-Mix's cross layers instead of the full-rank ones.
        low_rank: ``r`` of each expert (mixture only).
        num_experts: ``K`` (mixture only).
        low_rank_activation: ``g`` (mixture only; ``identity`` for the linear mixture).
        hidden_units: DNN hidden sizes.
        dropout: DNN dropout.
        batch_norm: BatchNorm1d (torch's statistics) in the DNN.
        activation: DNN activation.

    Shapes: batch -> ``[B]`` logits.

    Example::

        model = DCNV2(schema, cross_layers=3, model_structure="stacked", use_low_rank_mixture=True)
        logits = model(batch, training=True)  # [B]
    """

    torch_children = ("embedding", "cross", "dnn", "output")

    def __init__(
        self,
        schema: Schema,
        embed_size: int = 16,
        cross_layers: int = 3,
        model_structure: str = "parallel",
        use_low_rank_mixture: bool = False,
        low_rank: int = 32,
        num_experts: int = 4,
        low_rank_activation: str = "tanh",
        hidden_units: Sequence[int] = (500, 500, 500),
        dropout: float = 0.0,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__(schema)
        self.model_structure = check_choice("model_structure", model_structure, DCNV2_STRUCTURES)
        self.use_low_rank_mixture = check_bool("use_low_rank_mixture", use_low_rank_mixture)
        self.embedding = FieldEmbedding(self.schema, embed_size)
        input_dim = self.embedding.num_fields * self.embedding.dim
        # the mixture's settings are checked whichever cross network is built, so a typo is reported
        low_rank, num_experts = check_int("low_rank", low_rank), check_int("num_experts", num_experts)
        low_rank_activation = check_activation("low_rank_activation", low_rank_activation)
        if self.use_low_rank_mixture:
            self.cross = CrossNetMix(input_dim, cross_layers, low_rank, num_experts, low_rank_activation)
        else:
            self.cross = CrossNetV2(input_dim, cross_layers)
            self.unused_hparams = ("low_rank", "num_experts", "low_rank_activation")
        stacked = self.model_structure == "stacked"
        self.dnn = MLP(input_dim, hidden_units, activation, dropout, batch_norm)
        deep_dim = self.dnn.output_dim if self.dnn.hidden_units else 0
        self.output_layer = dense(1, deep_dim if stacked and deep_dim else input_dim + deep_dim, name="output")

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        x0 = flatten_fields(self.embedding(batch, training=training))  # (B, F*D)
        cross = self.cross(x0)  # (B, F*D), float32 under mixed_bfloat16
        if not self.dnn.hidden_units:
            return self.output_layer(cross)  # (B, 1)
        if self.model_structure == "stacked":
            return self.output_layer(self.dnn(cross, training=training))  # (B, 1)
        deep = self.dnn(x0, training=training)  # (B, H)
        return self.output_layer(tf.concat([tf.cast(cross, deep.dtype), deep], axis=1))  # (B, 1)
