"""Feature-interaction blocks (TensorFlow): FM, FFM, cross network, CIN, self-attention, attentional pooling.

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
from ctrkit.hparam_checks import check_activation, check_bool, check_int, check_prob, check_units
from ctrkit.parity import TorchParameters, compose_torch_parameters
from ctrkit.tensorflow.layers._dtypes import widened
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
        kernels = list(self._projections().values())
        weight = tf.concat(kernels, axis=1)  # (d, (3|4) * H*d')
        y = tf.reshape(tf.matmul(tf.reshape(x, (-1, self.input_dim)), weight),
                       (-1, fields, len(kernels), self.num_heads, self.attention_dim))  # (B, F, P, H, d')
        q, k, v = y[:, :, 0], y[:, :, 1], y[:, :, 2]  # (B, F, H, d') each
        scores = tf.einsum("bfhd,bghd->bhfg", q, k)  # (B, H, F, F)
        if self.scaled:
            scores = scores * tf.cast(1.0 / math.sqrt(self.attention_dim), scores.dtype)
        attn = tf.cast(tf.nn.softmax(tf.cast(scores, widened(scores.dtype)), axis=-1), v.dtype)  # (B, H, F, F)
        out = tf.reshape(tf.einsum("bhfg,bghd->bfhd", attn, v), (-1, fields, self.output_dim))  # (B, F, H*d')
        if self.use_residual:
            out = out + tf.reshape(y[:, :, 3], (-1, fields, self.output_dim))  # (B, F, H*d')
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
