"""Feature-interaction blocks (TensorFlow): FM, FFM, cross networks (v1, v2, mixture of low-rank experts), CIN,
self-attention, attentional pooling, SENET, bilinear interaction, operation-aware products.

Mirror of :mod:`ctrkit.pytorch.layers.interaction`, class for class, same constructor arguments.
Each block computes the plain formula of its torch ``reference_forward`` (the specification).
Under ``mixed_bfloat16`` the blocks follow torch autocast: the FM/FFM pairwise sums and the cross
network run in float32 (torch runs them outside autocast), the GEMMs of CIN, self-attention and
attentional pooling in bf16 with softmax in float32. Weights are created at construction (shapes
are known from the constructor; see :mod:`ctrkit.tensorflow.layers.embedding`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from ctrkit.errors import ConfigError
from ctrkit.hparam_checks import check_activation, check_bool, check_choice, check_int, check_prob, check_units
from ctrkit.parity import TorchParameters, compose_torch_parameters
from ctrkit.tensorflow.layers._dtypes import promoted, widened
from ctrkit.tensorflow.layers.embedding import Bias
from ctrkit.tensorflow.layers.mlp import dense, dense_torch_parameters, make_activation, xavier_normal


def _pair_indices(num_fields: int) -> tuple[list[int], list[int]]:
    """Row and column of every pair ``i < j`` of ``num_fields`` fields, row-major: 2 x ``[P]``."""
    rows, cols = np.triu_indices(num_fields, k=1)
    return rows.tolist(), cols.tolist()


@keras.saving.register_keras_serializable(package="ctrkit")
class FactorizationMachine(keras.layers.Layer):
    """Pairwise term of a factorization machine in O(kn).

    Rendle, "Factorization Machines", ICDM 2010, https://doi.org/10.1109/ICDM.2010.127 (lemma 3.1)::

        sum_{i<j} <v_i, v_j> = 1/2 * sum_f [ (sum_i v_{i,f})^2 - sum_i v_{i,f}^2 ]

    Computed in float32 for bf16/fp16 inputs (the difference of two large, close sums), in the
    input dtype otherwise; no autocast of the input.

    Shapes: ``[B, F, D]`` -> ``[B, 1]``.

    Example::

        fm = FactorizationMachine()
        fm(tf.random.normal((4, 10, 8))).shape  # TensorShape([4, 1])
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.autocast = False
        self.built = True

    def call(self, x):
        x = tf.cast(x, widened(x.dtype))  # (B, F, D)
        square_of_sum = tf.square(tf.reduce_sum(x, axis=1))  # (B, D)
        sum_of_square = tf.reduce_sum(tf.square(x), axis=1)  # (B, D)
        return 0.5 * tf.reduce_sum(square_of_sum - sum_of_square, axis=1, keepdims=True)  # (B, 1)

    def torch_parameters(self) -> TorchParameters:
        return {}


@keras.saving.register_keras_serializable(package="ctrkit")
class FieldAwareFactorizationMachine(keras.layers.Layer):
    """Pairwise term of a field-aware FM.

    Juan et al., "Field-aware Factorization Machines for CTR Prediction", RecSys 2016,
    https://doi.org/10.1145/2959100.2959134::

        sum_{i<j} <v_{i, f_j}, v_{j, f_i}>

    The input is field ``i``'s row of the field-aware table, ``F`` blocks of ``k`` values where
    block ``j`` is ``v_{i, f_j}``. Computed in float32 for bf16/fp16 inputs, like the FM term.

    Args:
        num_fields: ``F``.
        k: latent size per field pair.

    Shapes: ``[B, F, F*k]`` -> ``[B, 1]``.

    Example::

        ffm = FieldAwareFactorizationMachine(num_fields=5, k=4)
        ffm(tf.random.normal((2, 5, 20))).shape  # TensorShape([2, 1])
    """

    def __init__(self, num_fields: int, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_fields = check_int("num_fields", num_fields)
        self.k = check_int("k", k)
        rows, cols = _pair_indices(self.num_fields)
        f = self.num_fields
        self.left = [i * f + j for i, j in zip(rows, cols)]  # (P,): block v_{i, f_j} of e.reshape(B, F*F, k)
        self.right = [j * f + i for i, j in zip(rows, cols)]  # (P,): block v_{j, f_i}
        self.autocast = False
        self.built = True

    def call(self, x):
        x = tf.cast(x, widened(x.dtype))
        e = tf.reshape(x, (-1, self.num_fields * self.num_fields, self.k))  # (B, F*F, k)
        left = tf.gather(e, self.left, axis=1)  # (B, P, k)
        right = tf.gather(e, self.right, axis=1)  # (B, P, k)
        return tf.reduce_sum(left * right, axis=(1, 2))[:, None]  # (B, 1)

    def torch_parameters(self) -> TorchParameters:
        return {}

    def get_config(self) -> dict:
        return {**super().get_config(), "num_fields": self.num_fields, "k": self.k}


@keras.saving.register_keras_serializable(package="ctrkit")
class CrossNet(keras.layers.Layer):
    """Cross network of DCN (v1).

    Wang et al., "Deep & Cross Network for Ad Click Predictions", ADKDD 2017,
    https://arxiv.org/abs/1708.05123 (eq. 3)::

        x_{l+1} = x_0 (x_l^T w_l) + b_l + x_l,     w_l, b_l in R^d

    ``weight`` ``[L, d]`` holds the ``w_l`` (Xavier-normal as ``d x 1`` matrices), ``biases`` are
    :class:`Bias` layers. Computed in float32 for bf16/fp16 inputs (torch runs it outside autocast).

    Args:
        input_dim: ``d``.
        num_layers: number of cross layers (>= 1).

    Shapes: ``[B, d]`` -> ``[B, d]``.

    Example::

        cross = CrossNet(32, num_layers=3)
        cross(tf.random.normal((4, 32))).shape  # TensorShape([4, 32])
    """

    def __init__(self, input_dim: int, num_layers: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.input_dim = check_int("input_dim", input_dim)
        self.num_layers = check_int("cross_layers", num_layers)
        self.autocast = False
        self.build()

    def build(self, input_shape=None) -> None:
        if self.built:
            return
        std = math.sqrt(2.0 / (self.input_dim + 1))  # Xavier normal of a (d x 1) matrix
        self.weight = self.add_weight(shape=(self.num_layers, self.input_dim),
                                      initializer=keras.initializers.RandomNormal(0.0, std), name="weight",
                                      autocast=False)
        self.biases = [Bias(self.input_dim, dtype=self.dtype_policy, name=f"biases_{i}") for i in range(self.num_layers)]
        self.built = True

    def call(self, x):
        dtype = widened(x.dtype)
        x0 = tf.cast(x, dtype)  # (B, d)
        weight = tf.cast(self.weight, dtype)  # (L, d)
        xl = x0
        for layer in range(self.num_layers):
            xw = tf.linalg.matvec(xl, weight[layer])  # (B,)
            xl = (x0 * xw[:, None] + tf.cast(self.biases[layer].bias, dtype)) + xl  # (B, d)
        return xl

    def torch_parameters(self) -> TorchParameters:
        own: TorchParameters = {"weight": (self.weight, "same")}
        return compose_torch_parameters({"": own, **{f"biases.{i}": b for i, b in enumerate(self.biases)}})

    def get_config(self) -> dict:
        return {**super().get_config(), "input_dim": self.input_dim, "num_layers": self.num_layers}


@keras.saving.register_keras_serializable(package="ctrkit")
class CompressedInteractionNetwork(keras.layers.Layer):
    """Compressed Interaction Network (CIN) of xDeepFM.

    Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for Recommender
    Systems", KDD 2018, https://arxiv.org/abs/1803.05170 (eq. 6, 7)::

        X^k_{h,*} = act( sum_{i<=H_{k-1}} sum_{j<=m} W^{k,h}_{ij} (X^{k-1}_{i,*} o X^0_{j,*}) )
        p^k_h     = sum_d X^k_{h,d}                       (sum pooling)
        output    = [p^1, ..., p^T]

    The filters ``W^k`` are kernels ``convs[k]`` ``[H_{k-1} * m, H_k]`` (row ``i * m + j``; torch
    keeps them as ``Conv1d`` weights ``[H_k, H_{k-1} * m, 1]``: layout ``conv1d``), Xavier-normal.
    Maps are kept embedding-axis-major (``[B, D, H]``) so each layer is one 2-D GEMM over
    ``B * D`` rows, contracted in the order whose temporary is smaller: the outer product
    ``[B*D, H*m]`` times ``W``, or ``X^0`` times ``W`` regrouped to ``[m, H*H_k]`` and then
    summed against ``X^{k-1}`` (same numbers). With ``split_half`` every layer but the last sends
    half of its feature maps to the next layer and the other half to the output (as in the
    authors' code); the paper's formula uses ``act = identity``, the default here.

    Args:
        num_fields: ``m``.
        layer_units: ``H_1..H_T``; with ``split_half`` all but the last must be even.
        split_half: see above.
        activation: activation applied to each feature map (``identity`` default).

    Shapes: ``[B, m, D]`` -> ``[B, output_dim]``.

    Example::

        cin = CompressedInteractionNetwork(10, (16, 16, 16))
        cin(tf.random.normal((4, 10, 8))).shape  # TensorShape([4, 32])  (8 + 8 + 16)
    """

    def __init__(
        self,
        num_fields: int,
        layer_units: Sequence[int] = (16, 16, 16),
        split_half: bool = True,
        activation: str = "identity",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.num_fields = check_int("num_fields", num_fields)
        self.layer_units = check_units("cin_layer_units", layer_units, allow_empty=False)
        self.split_half = check_bool("split_half", split_half)
        if self.split_half and any(u % 2 for u in self.layer_units[:-1]):
            raise ConfigError(
                f"cin_layer_units must be even (except the last) when split_half is on, got {self.layer_units}"
            )
        self.activation = check_activation("activation", activation)
        self._act = make_activation(self.activation)
        self.next_sizes: list[int] = []
        self.input_sizes: list[int] = []
        output_dim, prev = 0, self.num_fields
        for index, units in enumerate(self.layer_units):
            last = index == len(self.layer_units) - 1
            keep = units // 2 if (self.split_half and not last) else units
            self.input_sizes.append(prev)
            self.next_sizes.append(keep)
            output_dim += units - keep if (self.split_half and not last) else units
            prev = keep
        self.output_dim = output_dim
        self.build()

    def build(self, input_shape=None) -> None:
        if self.built:
            return
        self.convs = [
            self.add_weight(shape=(h * self.num_fields, units), initializer=xavier_normal(), name=f"convs_{k}")
            for k, (h, units) in enumerate(zip(self.input_sizes, self.layer_units))
        ]
        self.built = True

    def call(self, x0):
        if x0.shape[1] is not None and x0.shape[1] != self.num_fields:
            raise ValueError(f"CIN built for {self.num_fields} fields got input {tuple(x0.shape)}")
        m = self.num_fields
        dim = x0.shape[2] if x0.shape[2] is not None else tf.shape(x0)[2]
        x0t = tf.reshape(tf.transpose(x0, (0, 2, 1)), (-1, m))  # (B*D, m)
        h = x0t  # (B*D, H_0 = m)
        pooled = []
        for k, kernel in enumerate(self.convs):
            z = self._act(self._layer(h, x0t, kernel, self.input_sizes[k], self.layer_units[k]))  # (B*D, H_k)
            keep = self.next_sizes[k]
            h, out = (z[:, :keep], z[:, keep:]) if keep < self.layer_units[k] else (z, z)
            pooled.append(tf.reduce_sum(tf.reshape(out, (-1, dim, out.shape[1])), axis=1))  # (B, H_out)
        return tf.concat(pooled, axis=1)  # (B, output_dim)

    def _layer(self, h, x0t, kernel, hsize: int, units: int):
        """``z[n, o] = sum_{i,j} W[i*m + j, o] h[n, i] x0[n, j]`` with the smaller temporary."""
        m = self.num_fields
        kernel = tf.cast(kernel, h.dtype)
        if units >= m:  # outer product [n, H*m] is the smaller temporary
            outer = tf.reshape(h[:, :, None] * x0t[:, None, :], (-1, hsize * m))  # (n, H*m)
            return tf.matmul(outer, kernel)  # (n, H_k)
        regrouped = tf.reshape(tf.transpose(tf.reshape(kernel, (hsize, m, units)), (1, 0, 2)), (m, hsize * units))
        p = tf.reshape(tf.matmul(x0t, regrouped), (-1, hsize, units))  # (n, H, H_k)
        return tf.einsum("ni,nio->no", h, p)  # (n, H_k)

    def torch_parameters(self) -> TorchParameters:
        return {f"convs.{k}.weight": (kernel, "conv1d") for k, kernel in enumerate(self.convs)}

    def get_config(self) -> dict:
        return {**super().get_config(), "num_fields": self.num_fields, "layer_units": list(self.layer_units),
                "split_half": self.split_half, "activation": self.activation}


@keras.saving.register_keras_serializable(package="ctrkit")
class MultiHeadSelfAttention(keras.layers.Layer):
    """AutoInt interacting layer: multi-head self-attention over fields, residual, ReLU.

    Song et al., "AutoInt: Automatic Feature Interaction Learning via Self-Attentive Neural
    Networks", CIKM 2019, https://arxiv.org/abs/1810.11921 (eq. 5-8)::

        alpha^h_{m,k} = softmax_k( <W^h_Q e_m, W^h_K e_k> )
        e~^h_m        = sum_k alpha^h_{m,k} W^h_V e_k
        e^Res_m       = ReLU( [e~^1_m ; ... ; e~^H_m] + W_Res e_m )

    The projections are bias-free Xavier-normal kernels ``query``, ``key``, ``value``,
    ``residual`` ``[d, H*d']`` (torch ``nn.Linear`` weights: layout ``transpose``), applied as one
    GEMM on their concatenation. The paper uses unscaled dot products; ``scaled=True`` divides by
    ``sqrt(d')``. The softmax runs in float32 for bf16/fp16 inputs.

    Args:
        input_dim: ``d`` (width of each field vector).
        attention_dim: ``d'`` per head.
        num_heads: ``H``.
        use_residual: add ``W_Res e_m``.
        scaled: scale the logits by ``1/sqrt(d')``.

    Shapes: ``[B, F, d]`` -> ``[B, F, H * d']``.

    Example::

        att = MultiHeadSelfAttention(16, attention_dim=32, num_heads=2)
        att(tf.random.normal((4, 10, 16))).shape  # TensorShape([4, 10, 64])
    """

    def __init__(
        self,
        input_dim: int,
        attention_dim: int = 32,
        num_heads: int = 2,
        use_residual: bool = True,
        scaled: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.input_dim = check_int("input_dim", input_dim)
        self.attention_dim = check_int("attention_dim", attention_dim)
        self.num_heads = check_int("num_heads", num_heads)
        self.use_residual = check_bool("use_residual", use_residual)
        self.scaled = check_bool("scaled", scaled)
        self.output_dim = self.attention_dim * self.num_heads
        self.build()

    def build(self, input_shape=None) -> None:
        if self.built:
            return
        shape = (self.input_dim, self.output_dim)

        def projection(name):
            return self.add_weight(shape=shape, initializer=xavier_normal(), name=name)

        self.query, self.key, self.value = projection("query"), projection("key"), projection("value")
        self.residual = projection("residual") if self.use_residual else None
        self.built = True

    def _projections(self) -> dict[str, object]:
        names = ("query", "key", "value", "residual") if self.use_residual else ("query", "key", "value")
        return {name: getattr(self, name) for name in names}

    def call(self, x):
        fields = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
        rows = tf.reshape(x, (-1, self.input_dim))  # (B*F, d)

        def project(kernel):
            return tf.reshape(tf.matmul(rows, kernel), (-1, fields, self.output_dim))  # (B, F, H*d')

        def heads(y):
            return tf.stack(tf.split(y, self.num_heads, axis=2))  # (H, B, F, d')

        # heads split and stacked, not einsum's transposes: TF's CPU transposes of [B, F, H, d']
        # and their gradients made this layer 2.2x slower (3 layers fwd+bwd, B=4096: 611 vs 273 ms)
        q, k, v = heads(project(self.query)), heads(project(self.key)), heads(project(self.value))
        scores = tf.matmul(q, k, transpose_b=True)  # (H, B, F, F)
        if self.scaled:
            scores = scores * tf.cast(1.0 / math.sqrt(self.attention_dim), scores.dtype)
        attn = tf.cast(tf.nn.softmax(tf.cast(scores, widened(scores.dtype)), axis=-1), v.dtype)  # (H, B, F, F)
        out = tf.concat(tf.unstack(tf.matmul(attn, v), num=self.num_heads), axis=-1)  # (B, F, H*d')
        if self.use_residual:
            out = out + project(self.residual)  # (B, F, H*d')
        return tf.nn.relu(out)

    def torch_parameters(self) -> TorchParameters:
        return {f"{name}.weight": (kernel, "transpose") for name, kernel in self._projections().items()}

    def get_config(self) -> dict:
        return {**super().get_config(), "input_dim": self.input_dim, "attention_dim": self.attention_dim,
                "num_heads": self.num_heads, "use_residual": self.use_residual, "scaled": self.scaled}


@keras.saving.register_keras_serializable(package="ctrkit")
class AttentionalPooling(keras.layers.Layer):
    """Attention-based pooling of pairwise interactions (AFM), projected to a logit.

    Xiao et al., "Attentional Factorization Machines", IJCAI 2017,
    https://arxiv.org/abs/1708.04617 (eq. 4-5)::

        a'_ij = h^T ReLU(W (v_i o v_j) + b),     a_ij = softmax_{(i,j)}(a'_ij)
        y     = p^T dropout( sum_{i<j} a_ij (v_i o v_j) )

    ``attention`` is a Dense ``(D -> t)`` with bias; ``score`` (``h``) and ``projection`` (``p``) are
    bias-free Dense layers. The softmax and the weighted sum run in float32 for bf16/fp16 inputs
    (in the input dtype otherwise), as in the torch block. The paper's dropout on the pair-wise
    interaction layer is applied to the pooled vector.

    Args:
        num_fields: ``F`` (>= 2).
        embed_dim: ``D``.
        attention_factor: ``t``, hidden size of the attention net.
        dropout: dropout rate on the pooled interaction vector.

    Shapes: ``[B, F, D]`` -> ``[B, 1]``.

    Example::

        pool = AttentionalPooling(10, 8, attention_factor=16)
        pool(tf.random.normal((4, 10, 8))).shape  # TensorShape([4, 1])
    """

    def __init__(self, num_fields: int, embed_dim: int, attention_factor: int = 16, dropout: float = 0.0,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_fields = check_int("num_fields", num_fields, minimum=2)
        self.embed_dim = check_int("embed_size", embed_dim)
        self.attention_factor = check_int("attention_factor", attention_factor)
        self.dropout_rate = check_prob("dropout", dropout)
        self.rows, self.cols = _pair_indices(self.num_fields)
        policy = self.dtype_policy
        self.attention = dense(self.attention_factor, self.embed_dim, dtype=policy, name="attention")
        self.score = dense(1, self.attention_factor, use_bias=False, dtype=policy, name="score")  # h
        self.projection = dense(1, self.embed_dim, use_bias=False, dtype=policy, name="projection")  # p
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=policy)
        self.built = True

    def call(self, x, training=None):
        pairs = tf.gather(x, self.rows, axis=1) * tf.gather(x, self.cols, axis=1)  # (B, P, D)
        logits = self.score(tf.nn.relu(self.attention(pairs)))  # (B, P, 1)
        dtype = widened(logits.dtype)
        weights = tf.nn.softmax(tf.cast(logits, dtype), axis=1)  # (B, P, 1)
        pooled = tf.reduce_sum(weights * tf.cast(pairs, dtype), axis=1)  # (B, D)
        return self.projection(self.dropout(pooled, training=training))  # (B, 1)

    def torch_parameters(self) -> TorchParameters:
        return compose_torch_parameters({
            "attention": dense_torch_parameters(self.attention),
            "score": dense_torch_parameters(self.score),
            "projection": dense_torch_parameters(self.projection),
        })

    def get_config(self) -> dict:
        return {**super().get_config(), "num_fields": self.num_fields, "embed_dim": self.embed_dim,
                "attention_factor": self.attention_factor, "dropout": self.dropout_rate}


#: which fields share a bilinear matrix: one for all pairs, one per left field, one per pair
BILINEAR_TYPES = ("field_all", "field_each", "field_interaction")
#: how ONN combines the two operation-aware embeddings of a pair
ONN_PRODUCTS = ("inner", "hadamard")


def bilinear_groups(num_fields: int, bilinear_type: str) -> int:
    """Number of ``D x D`` matrices of a bilinear interaction over ``num_fields`` fields."""
    return {"field_all": 1, "field_each": num_fields - 1, "field_interaction": num_fields * (num_fields - 1) // 2}[
        bilinear_type
    ]


def _block_normal(fan_in: int, fan_out: int) -> keras.initializers.Initializer:
    """Xavier normal of one ``fan_out x fan_in`` block of a stacked weight (torch's ``_xavier_normal_blocks``)."""
    return keras.initializers.RandomNormal(0.0, math.sqrt(2.0 / (fan_in + fan_out)))


def _block_dense(units: int, input_dim: int, fan_in: int, fan_out: int, use_bias: bool, dtype, name: str):
    """A built Dense whose kernel holds stacked blocks, each Xavier-normal as its own matrix; zero bias."""
    layer = keras.layers.Dense(units, use_bias=use_bias, kernel_initializer=_block_normal(fan_in, fan_out),
                               bias_initializer="zeros", dtype=dtype, name=name)
    layer.build((None, input_dim))
    return layer


def _plus_product(xl, x0, y):
    """``xl + x0 * y`` in torch's promoted dtype (``addcmul`` of float32 ``xl, x0`` and a bf16 GEMM output is
    float32)."""
    dtype = promoted(xl.dtype, y.dtype)
    return tf.cast(xl, dtype) + tf.cast(x0, dtype) * tf.cast(y, dtype)


@keras.saving.register_keras_serializable(package="ctrkit")
class CrossNetV2(keras.layers.Layer):
    """Full-rank cross network of DCN-V2.

    Wang et al., "DCN V2", WWW 2021, https://arxiv.org/abs/2008.13535 (eq. 1)::

        x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l,     W_l in R^{d x d}, b_l in R^d

    ``layers[l]`` is the Dense(d) holding ``W_l, b_l`` (torch ``nn.Linear``: layout ``transpose``),
    Xavier-normal with zero bias. One GEMM per layer; under ``mixed_bfloat16`` the GEMM runs in
    bf16 and the residual sum in float32, as torch autocast does.

    Args:
        input_dim: ``d``.
        num_layers: number of cross layers (>= 1).

    Shapes: ``[B, d]`` -> ``[B, d]``.

    Example::

        cross = CrossNetV2(32, num_layers=3)
        cross(tf.random.normal((4, 32))).shape  # TensorShape([4, 32])
    """

    def __init__(self, input_dim: int, num_layers: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.input_dim = check_int("input_dim", input_dim)
        self.num_layers = check_int("cross_layers", num_layers)
        self.autocast = False  # x_0 and the residual stay float32; the Dense layers autocast their input
        self.layers = [dense(self.input_dim, self.input_dim, dtype=self.dtype_policy, name=f"layers_{i}")
                       for i in range(self.num_layers)]
        self.built = True

    def call(self, x):
        xl = x  # (B, d)
        for layer in self.layers:
            xl = _plus_product(xl, x, layer(xl))  # (B, d)
        return xl

    def torch_parameters(self) -> TorchParameters:
        return compose_torch_parameters({f"layers.{i}": dense_torch_parameters(l) for i, l in enumerate(self.layers)})

    def get_config(self) -> dict:
        return {**super().get_config(), "input_dim": self.input_dim, "num_layers": self.num_layers}


@keras.saving.register_keras_serializable(package="ctrkit")
class CrossNetMix(keras.layers.Layer):
    """Cross network of DCN-Mix: a softmax-gated mixture of low-rank cross experts per layer.

    Wang et al., "DCN V2", WWW 2021, https://arxiv.org/abs/2008.13535 (eq. 3, 4)::

        E_i(x_l) = x_0 ⊙ (U_i g(C_i g(V_i^T x_l)) + b_l)          (expert i, rank r)
        x_{l+1}  = sum_i G_i(x_l) E_i(x_l) + x_l,   G(x_l) = softmax_i(w_i^T x_l)

    Computed as the torch block does (the gates sum to one, so the shared ``b_l`` comes out of
    the sum): ``gates[l]`` Dense(K) without bias, ``down[l]`` Dense(K*r) without bias (the
    ``V_i^T`` stacked), ``mid[l]`` a kernel ``[r, K*r]`` holding the ``C_i`` (torch keeps them in a
    grouped ``Conv1d`` weight ``[K*r, r, 1]``: layout ``conv1d``), ``up[l]`` Dense(d) with bias
    (``[U_1 ... U_K]``, ``b_l``). Each expert's matrices are Xavier-normal as their own matrices;
    the gate softmax runs in float32 under ``mixed_bfloat16``.

    Args:
        input_dim: ``d``.
        num_layers: number of cross layers (>= 1).
        low_rank: ``r``.
        num_experts: ``K``.
        activation: ``g`` (``tanh`` default; ``identity`` gives the linear mixture).

    Shapes: ``[B, d]`` -> ``[B, d]``.

    Example::

        cross = CrossNetMix(32, num_layers=2, low_rank=8, num_experts=4)
        cross(tf.random.normal((4, 32))).shape  # TensorShape([4, 32])
    """

    def __init__(self, input_dim: int, num_layers: int = 3, low_rank: int = 32, num_experts: int = 4,
                 activation: str = "tanh", **kwargs) -> None:
        super().__init__(**kwargs)
        self.input_dim = d = check_int("input_dim", input_dim)
        self.num_layers = check_int("cross_layers", num_layers)
        self.low_rank = r = check_int("low_rank", low_rank)
        self.num_experts = k = check_int("num_experts", num_experts)
        self.activation = check_activation("activation", activation)
        self._act = make_activation(self.activation)
        self.autocast = False
        policy, layers = self.dtype_policy, range(self.num_layers)
        self.gates = [_block_dense(k, d, d, 1, False, policy, f"gates_{i}") for i in layers]
        self.down = [_block_dense(k * r, d, d, r, False, policy, f"down_{i}") for i in layers]
        self.up = [_block_dense(d, k * r, r, d, True, policy, f"up_{i}") for i in layers]
        self.build()

    def build(self, input_shape=None) -> None:
        if self.built:
            return
        r, k = self.low_rank, self.num_experts
        self.mid = [self.add_weight(shape=(r, k * r), initializer=_block_normal(r, r), name=f"mid_{i}")
                    for i in range(self.num_layers)]
        self.built = True

    def call(self, x):
        k, r = self.num_experts, self.low_rank
        xl = x  # (B, d)
        for gate, down, mid, up in zip(self.gates, self.down, self.mid, self.up):
            logits = gate(xl)  # (B, K)
            weights = tf.nn.softmax(tf.cast(logits, widened(logits.dtype)), axis=1)  # (B, K)
            h = tf.reshape(self._act(down(xl)), (-1, k, r))  # (B, K, r): g(V_i^T x_l)
            c = tf.reshape(tf.cast(mid, h.dtype), (r, k, r))  # (r_in, K, r_out)
            h = self._act(tf.einsum("bki,iko->bko", h, c))  # (B, K, r): g(C_i h_i)
            mixed = tf.reshape(h * tf.cast(weights[:, :, None], h.dtype), (-1, k * r))  # (B, K*r)
            xl = _plus_product(xl, x, up(mixed))  # (B, d)
        return xl

    def torch_parameters(self) -> TorchParameters:
        children = {}
        for i in range(self.num_layers):
            children[f"gates.{i}"] = dense_torch_parameters(self.gates[i])
            children[f"down.{i}"] = dense_torch_parameters(self.down[i])
            children[f"mid.{i}"] = {"weight": (self.mid[i], "conv1d")}
            children[f"up.{i}"] = dense_torch_parameters(self.up[i])
        return compose_torch_parameters(children)

    def get_config(self) -> dict:
        return {**super().get_config(), "input_dim": self.input_dim, "num_layers": self.num_layers,
                "low_rank": self.low_rank, "num_experts": self.num_experts, "activation": self.activation}


@keras.saving.register_keras_serializable(package="ctrkit")
class SqueezeExcitation(keras.layers.Layer):
    """SENET layer of FiBiNET: field importance from squeeze and excitation, then reweighting.

    Huang, Zhang and Zhang, "FiBiNET", RecSys 2019, https://arxiv.org/abs/1905.09433 (eq. 2-5)::

        z_i = (1/D) sum_t e_{i,t}                          (squeeze: mean pooling)
        a   = ReLU(W_2 ReLU(W_1 z)),   W_1 in R^{R x F}, W_2 in R^{F x R}, R = max(1, F // r)
        v_i = a_i e_i                                      (re-weight)

    ``reduce`` (``W_1``) and ``expand`` (``W_2``) are bias-free Xavier-normal Dense layers (torch
    ``nn.Linear``). The squeeze and the reweighting stay in the input dtype (float32 embeddings
    under ``mixed_bfloat16``), the two small GEMMs autocast, as in torch.

    Args:
        num_fields: ``F``.
        reduction_ratio: ``r`` (>= 1).

    Shapes: ``[B, F, D]`` -> ``[B, F, D]``.

    Example::

        senet = SqueezeExcitation(10, reduction_ratio=3)
        senet(tf.random.normal((4, 10, 8))).shape  # TensorShape([4, 10, 8])
    """

    def __init__(self, num_fields: int, reduction_ratio: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_fields = check_int("num_fields", num_fields)
        self.reduction_ratio = check_int("reduction_ratio", reduction_ratio)
        self.reduced = max(1, self.num_fields // self.reduction_ratio)
        self.autocast = False
        policy = self.dtype_policy
        self.reduce = dense(self.reduced, self.num_fields, use_bias=False, dtype=policy, name="reduce")
        self.expand = dense(self.num_fields, self.reduced, use_bias=False, dtype=policy, name="expand")
        self.built = True

    def call(self, x):
        z = tf.reduce_mean(x, axis=2)  # (B, F)
        a = tf.nn.relu(self.expand(tf.nn.relu(self.reduce(z))))  # (B, F)
        dtype = promoted(x.dtype, a.dtype)
        return tf.cast(x, dtype) * tf.cast(a, dtype)[:, :, None]  # (B, F, D)

    def torch_parameters(self) -> TorchParameters:
        return compose_torch_parameters({"reduce": dense_torch_parameters(self.reduce),
                                         "expand": dense_torch_parameters(self.expand)})

    def get_config(self) -> dict:
        return {**super().get_config(), "num_fields": self.num_fields, "reduction_ratio": self.reduction_ratio}


@keras.saving.register_keras_serializable(package="ctrkit")
class BilinearInteraction(keras.layers.Layer):
    """Bilinear-interaction layer of FiBiNET.

    Huang et al., RecSys 2019, https://arxiv.org/abs/1905.09433 (eq. 6-8), for every pair ``i < j``::

        p_ij = (W_g v_i) ⊙ v_j,     g = 0 (field_all) | i (field_each) | (i, j) (field_interaction)

    ``field_each`` has ``F - 1`` matrices (the last field is never the left one). The G matrices
    are one kernel ``matrices`` ``[D, G*D]`` (column block ``g`` is ``W_g^T``; torch keeps them
    in a grouped ``Conv1d`` weight ``[G*D, D, 1]``: layout ``conv1d``), each Xavier-normal as a
    ``D x D`` matrix. The pairs are computed by row field (see :meth:`call`). Under
    ``mixed_bfloat16`` both products run in bf16 and the output is bf16, as in torch.

    Args:
        num_fields: ``F`` (>= 2).
        embed_dim: ``D``.
        bilinear_type: ``field_all``, ``field_each`` or ``field_interaction``.

    Shapes: ``[B, F, D]`` -> ``[B, P, D]`` with ``P = F (F - 1) / 2``, pairs in row-major order.

    Example::

        bilinear = BilinearInteraction(5, 8, "field_each")
        bilinear(tf.random.normal((4, 5, 8))).shape  # TensorShape([4, 10, 8])
    """

    def __init__(self, num_fields: int, embed_dim: int, bilinear_type: str = "field_interaction", **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_fields = check_int("num_fields", num_fields, minimum=2)
        self.embed_dim = check_int("embed_size", embed_dim)
        self.bilinear_type = check_choice("bilinear_type", bilinear_type, BILINEAR_TYPES)
        self.groups = bilinear_groups(self.num_fields, self.bilinear_type)
        self.autocast = False
        self.build()

    def build(self, input_shape=None) -> None:
        if self.built:
            return
        d = self.embed_dim
        self.matrices = self.add_weight(shape=(d, self.groups * d), initializer=_block_normal(d, d), name="matrices")
        self.built = True

    def call(self, x):
        d, fields = self.embed_dim, self.num_fields
        w = tf.cast(self.matrices, self.compute_dtype)  # (D_in, G*D_out)
        xc = tf.cast(x, self.compute_dtype)  # (B, F, D)
        # the pairs of row field i are (i, i+1) .. (i, F-1): right factors the slice x[:, i+1:],
        # left factors one product with their matrices side by side (no [B, P, D] gathers, no
        # batched-matmul transposes; the same order of work as torch's _fused.pair_bilinear)
        products, start = [], 0
        for i in range(fields - 1):
            stop = start + fields - 1 - i
            if self.bilinear_type == "field_interaction":
                left = tf.reshape(tf.matmul(xc[:, i], w[:, start * d:stop * d]), (-1, stop - start, d))  # (B, n, D)
            else:
                g = 0 if self.bilinear_type == "field_all" else i
                left = tf.matmul(xc[:, i], w[:, g * d:(g + 1) * d])[:, None, :]  # (B, 1, D)
            products.append(left * xc[:, i + 1:])  # (B, n, D)
            start = stop
        return tf.concat(products, axis=1)  # (B, P, D)

    def torch_parameters(self) -> TorchParameters:
        return {"matrices.weight": (self.matrices, "conv1d")}

    def get_config(self) -> dict:
        return {**super().get_config(), "num_fields": self.num_fields, "embed_dim": self.embed_dim,
                "bilinear_type": self.bilinear_type}


@keras.saving.register_keras_serializable(package="ctrkit")
class OperationAwareInteraction(keras.layers.Layer):
    """Copy and product operations of ONN over operation-aware embeddings.

    Yang, Xu, Shen and Zhao, "Operation-aware Neural Networks for User Response Prediction",
    Neural Networks 2020, https://arxiv.org/abs/1904.12579 (section 3)::

        f_copy = [e_{1,1}; ...; e_{F,F}]                         (copy operation)
        f_ij   = <e_{i,j}, e_{j,i}>   (inner)   or   e_{i,j} ⊙ e_{j,i}   (hadamard, NFFM),   i < j
        output = [f_copy; f_12; f_13; ...; f_{F-1,F}]

    The input is each field's ``F*D``-wide row of the operation-aware table (block ``j`` of field
    ``i`` is ``e_{i,j}``; the diagonal block is the copy embedding); the output is one gather of
    ``F + 2P`` blocks. No weights. Computed in the input dtype (float32 embeddings).

    Args:
        num_fields: ``F``.
        embed_dim: ``D``.
        product: ``inner`` (the ONN paper) or ``hadamard`` (NFFM).

    Shapes: ``[B, F, F*D]`` -> ``[B, F*D + P]`` (inner) or ``[B, F*D + P*D]`` (hadamard).

    Example::

        onn = OperationAwareInteraction(5, 2)
        onn(tf.random.normal((4, 5, 10))).shape  # TensorShape([4, 20])
    """

    def __init__(self, num_fields: int, embed_dim: int, product: str = "inner", **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_fields = f = check_int("num_fields", num_fields)
        self.embed_dim = check_int("embed_size", embed_dim)
        self.product = check_choice("product", product, ONN_PRODUCTS)
        rows, cols = _pair_indices(f)
        self.num_pairs = len(rows)
        self.blocks = [i * (f + 1) for i in range(f)] + [i * f + j for i, j in zip(rows, cols)] + [
            j * f + i for i, j in zip(rows, cols)]  # (F + 2P,) of the [F*F] blocks
        pair_width = 1 if self.product == "inner" else self.embed_dim
        self.output_dim = f * self.embed_dim + self.num_pairs * pair_width
        self.autocast = False
        self.built = True

    def call(self, x):
        f, p, d = self.num_fields, self.num_pairs, self.embed_dim
        e = tf.gather(tf.reshape(x, (-1, f * f, d)), self.blocks, axis=1)  # (B, F + 2P, D)
        copy, left, right = e[:, :f], e[:, f:f + p], e[:, f + p:]
        products = left * right  # (B, P, D)
        if self.product == "inner":
            products = tf.reduce_sum(products, axis=2)  # (B, P)
        else:
            products = tf.reshape(products, (-1, p * d))  # (B, P*D)
        return tf.concat([tf.reshape(copy, (-1, f * d)), products], axis=1)  # (B, output_dim)

    def torch_parameters(self) -> TorchParameters:
        return {}

    def get_config(self) -> dict:
        return {**super().get_config(), "num_fields": self.num_fields, "embed_dim": self.embed_dim,
                "product": self.product}
