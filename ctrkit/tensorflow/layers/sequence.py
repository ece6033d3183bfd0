"""Behaviour-sequence blocks of DIN and DIEN (TensorFlow): Dice, target attention, masked GRU, AUGRU,
interest attention, auxiliary loss.

Mirror of :mod:`ctrkit.pytorch.layers.sequence`, class for class, same constructor arguments and
the same torch ``state_dict`` names through ``torch_parameters()``. Each block computes the
formula of its torch ``reference_forward``. Sequences arrive as ``[B, L, E]`` with a bool mask
``[B, L]`` (False = padding). The recurrences run over time with ``tf.scan`` (one while loop in a
traced step); under ``mixed_bfloat16`` only their input projection runs in bf16, the recurrence
in float32, as in torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from ctrkit.hparam_checks import check_int, check_units
from ctrkit.parity import TorchParameters, compose_torch_parameters
from ctrkit.tensorflow.layers._dtypes import widened
from ctrkit.tensorflow.layers.embedding import Bias, FieldEmbedding
from ctrkit.tensorflow.layers.mlp import MLP, dense, dense_torch_parameters, make_activation

#: Dice's epsilon in the standardisation (Zhou et al. 2018, eq. 5)
DICE_EPSILON = 1e-8
#: weight of the new batch statistics in Dice's running averages (torch's BatchNorm momentum 0.1)
DICE_MOMENTUM = 0.1


def _flat_weight(x, mask, dtype):
    """``mask`` as ``[N, 1]`` weights over the flattened leading dims of ``x`` (ones without a mask)."""
    if mask is None:
        return tf.ones((tf.reduce_prod(tf.shape(x)[:-1]), 1), dtype)
    return tf.reshape(tf.cast(mask, dtype), (-1, 1))


@keras.saving.register_keras_serializable(package="ctrkit")
class Dice(keras.layers.Layer):
    """Dice, the data-adaptive activation of DIN (Zhou et al., KDD 2018, eq. 5)::

        f(s) = p(s) * s + (1 - p(s)) * alpha * s,    p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))

    Statistics over the non-padding rows in training (running averages updated like torch's
    ``BatchNorm1d``: momentum 0.1, unbiased variance), the running ones at inference; ``alpha``
    is a :class:`Bias` (zeros). Torch names: ``running_mean``, ``running_var``, ``alpha.bias``.

    Shapes: ``x`` ``[..., C]``, optional bool ``mask`` ``[...]`` -> ``[..., C]``.
    """

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_features = check_int("num_features", num_features)
        self.alpha = Bias(self.num_features, dtype=self.dtype_policy, name="alpha")
        self.build()

    def build(self, input_shape=None) -> None:
        if self.built:
            return
        shape = (self.num_features,)
        self.running_mean = self.add_weight(shape=shape, initializer="zeros", name="running_mean",
                                            trainable=False, autocast=False)
        self.running_var = self.add_weight(shape=shape, initializer="ones", name="running_var",
                                           trainable=False, autocast=False)
        self.built = True

    def statistics(self, x, mask, training):
        """Mean and variance that standardise ``x``; updates the running ones in training."""
        dtype = widened(x.dtype)
        if not training:
            return tf.cast(self.running_mean, dtype), tf.cast(self.running_var, dtype)
        flat = tf.reshape(tf.cast(x, dtype), (-1, self.num_features))  # (N, C)
        weight = _flat_weight(x, mask, dtype)  # (N, 1)
        count = tf.reduce_sum(weight)
        mean = tf.reduce_sum(flat * weight, axis=0) / tf.maximum(count, 1.0)  # (C,)
        var = tf.reduce_sum(tf.square(flat - mean) * weight, axis=0) / tf.maximum(count, 1.0)  # (C,)
        unbiased = tf.stop_gradient(var * count / tf.maximum(count - 1.0, 1.0))
        for running, batch in ((self.running_mean, tf.stop_gradient(mean)), (self.running_var, unbiased)):
            running.assign(running + DICE_MOMENTUM * (tf.cast(batch, running.dtype) - running))
        return mean, var

    def call(self, x, mask=None, training=None):
        mean, var = self.statistics(x, mask, training)
        p = tf.sigmoid((tf.cast(x, mean.dtype) - mean) * tf.math.rsqrt(var + DICE_EPSILON))  # (..., C)
        alpha = tf.cast(self.alpha.bias, x.dtype)
        return x * (alpha + tf.cast(p, x.dtype) * (1.0 - alpha))  # (..., C)

    def compute_mask(self, inputs, mask=None):
        return None  # ``mask`` marks the rows of the statistics; the output carries no Keras mask

    def torch_parameters(self) -> TorchParameters:
        return compose_torch_parameters({
            "alpha": self.alpha,
            "": {"running_mean": (self.running_mean, "same"), "running_var": (self.running_var, "same")},
        })

    def get_config(self) -> dict:
        return {**super().get_config(), "num_features": self.num_features}


def _activation(name: str, width: int, policy, index: int):
    """``Dice(width)`` for ``"dice"``, else the named activation function."""
    if str(name).strip().lower() == "dice":
        return Dice(width, dtype=policy, name=f"dice_{index}")
    return make_activation(name)


def _apply(act, x, mask, training):
    return act(x, mask=mask, training=training) if isinstance(act, Dice) else act(x)


@keras.saving.register_keras_serializable(package="ctrkit")
class TargetAttention(keras.layers.Layer):
    """DIN's local activation unit and attention-weighted sum pooling, no softmax (Zhou et al. 2018, eq. 3)::

        w_t = MLP([e_t, e_a, e_t - e_a, e_t * e_a]),      v_U = sum_{t non-padding} w_t e_t

    The first Dense is applied without the ``[B, L, 4E]`` concatenation (see the torch block).

    Args:
        dim: ``E``.
        hidden_units: hidden sizes of the activation unit (at least one).
        activation: ``"dice"`` (default) or a name of ``ACTIVATIONS``.

    Shapes: ``query`` ``[B, E]``, ``keys`` ``[B, L, E]``, ``mask`` bool ``[B, L]`` -> ``[B, E]``;
    :meth:`scores` -> ``[B, L]``.
    """

    def __init__(self, dim: int, hidden_units: Sequence[int] = (80, 40), activation: str = "dice", **kwargs) -> None:
        super().__init__(**kwargs)
        self.dim = check_int("dim", dim)
        self.hidden_units = check_units("attention_units", hidden_units, allow_empty=False)
        self.activation = activation
        policy = self.dtype_policy
        widths = (4 * self.dim,) + self.hidden_units
        self.linears = [dense(b, a, dtype=policy, name=f"linear_{i}")
                        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
        self.activations = [_activation(activation, u, policy, i) for i, u in enumerate(self.hidden_units)]
        self.score = dense(1, self.hidden_units[-1], dtype=policy, name="score")
        self.built = True

    def scores(self, query, keys, mask, training=None):
        """``w_t`` of every position, zero at padding: ``[B, L]``."""
        e = self.dim
        first = self.linears[0]
        dtype = first.compute_dtype
        kernel = tf.cast(first.kernel, dtype)  # (4E, U)
        k_key = kernel[:e] + kernel[2 * e:3 * e]  # (E, U)
        k_query = kernel[e:2 * e] - kernel[2 * e:3 * e]
        keys_c, q = tf.cast(keys, dtype), tf.cast(query, dtype)[:, None, :]  # (B, L, E), (B, 1, E)
        h = (tf.einsum("ble,eu->blu", keys_c, k_key) + tf.einsum("ble,eu->blu", keys_c * q, kernel[3 * e:])
             + tf.einsum("bse,eu->bsu", q, k_query) + tf.cast(first.bias, dtype))  # (B, L, U)
        h = _apply(self.activations[0], h, mask, training)
        for linear, act in zip(self.linears[1:], self.activations[1:]):
            h = _apply(act, linear(h), mask, training)
        return tf.squeeze(self.score(h), -1) * tf.cast(mask, h.dtype)  # (B, L)

    def call(self, query, keys, mask, training=None):
        weights = self.scores(query, keys, mask, training)  # (B, L)
        return tf.einsum("bl,ble->be", tf.cast(weights, keys.dtype), keys)  # (B, E)

    def compute_mask(self, *args, **kwargs):
        return None

    def torch_parameters(self) -> TorchParameters:
        children = {f"linears.{i}": dense_torch_parameters(layer) for i, layer in enumerate(self.linears)}
        children.update({f"activations.{i}": act for i, act in enumerate(self.activations) if isinstance(act, Dice)})
        children["score"] = dense_torch_parameters(self.score)
        return compose_torch_parameters(children)

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "hidden_units": list(self.hidden_units),
                "activation": self.activation}


@keras.saving.register_keras_serializable(package="ctrkit")
class GRU(keras.layers.Layer):
    """A GRU over masked (ragged) sequences, DIEN's interest extractor (the paper's update-gate convention)::

        r_t = sigmoid(W_ir x_t + b_ir + W_hr h + b_hr),   u_t = sigmoid(W_iu x_t + b_iu + W_hu h + b_hu)
        n_t = tanh(W_in x_t + b_in + r_t * (W_hn h + b_hn)),   h_t = h_{t-1} + g_t u_t (n_t - h_{t-1})

    ``g_t = mask_t``: a padded step carries the state over. ``input_linear`` and ``hidden_linear``
    are Dense layers (torch ``nn.Linear`` names, transposed kernels). :class:`AUGRU` uses
    ``g_t = a_t``.

    Shapes: ``x`` ``[B, L, input_dim]``, ``mask`` bool ``[B, L]`` -> states ``[B, L, H]``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.input_dim = check_int("input_dim", input_dim)
        self.hidden_dim = check_int("gru_units", hidden_dim)
        policy = self.dtype_policy
        self.input_linear = dense(3 * self.hidden_dim, self.input_dim, dtype=policy, name="input_linear")
        self.hidden_linear = dense(3 * self.hidden_dim, self.hidden_dim, dtype=policy, name="hidden_linear")
        self.built = True

    def recur(self, x, gate):
        """States ``[B, L, H]`` with update-gate scale ``gate`` ``[B, L]`` (0 = skip the step)."""
        state_dtype = widened(self.hidden_linear.kernel.dtype)
        projected = tf.cast(self.input_linear(x), state_dtype)  # (B, L, 3H): the one low-precision GEMM
        kernel = tf.cast(self.hidden_linear.kernel, state_dtype)
        bias = tf.cast(self.hidden_linear.bias, state_dtype)
        hd = self.hidden_dim

        def step(h, inputs):  # in the state dtype, as the torch recurrence runs outside autocast
            xp, g = inputs  # (B, 3H), (B, 1)
            hp = tf.matmul(h, kernel) + bias  # (B, 3H)
            r = tf.sigmoid(xp[:, :hd] + hp[:, :hd])
            u = tf.sigmoid(xp[:, hd:2 * hd] + hp[:, hd:2 * hd]) * g
            n = tf.tanh(xp[:, 2 * hd:] + r * hp[:, 2 * hd:])
            return h + u * (n - h)  # (B, H), float32

        h0 = tf.zeros((tf.shape(x)[0], hd), state_dtype)
        time_major = (tf.transpose(projected, (1, 0, 2)), tf.transpose(tf.cast(gate, state_dtype))[:, :, None])
        states = tf.scan(step, time_major, initializer=h0)  # (L, B, H)
        return tf.transpose(states, (1, 0, 2))  # (B, L, H)

    def call(self, x, mask):
        return self.recur(x, mask)

    def compute_mask(self, *args, **kwargs):
        return None

    def torch_parameters(self) -> TorchParameters:
        return compose_torch_parameters({"input_linear": dense_torch_parameters(self.input_linear),
                                         "hidden_linear": dense_torch_parameters(self.hidden_linear)})

    def get_config(self) -> dict:
        return {**super().get_config(), "input_dim": self.input_dim, "hidden_dim": self.hidden_dim}


@keras.saving.register_keras_serializable(package="ctrkit")
class AUGRU(GRU):
    """GRU with attentional update gate, DIEN's interest evolving layer (eq. 6-7): ``u'_t = a_t u_t``.

    Shapes: ``x`` ``[B, L, input_dim]``, ``attention`` ``[B, L]``, ``mask`` bool ``[B, L]`` -> ``[B, L, H]``.
    """

    def call(self, x, attention, mask):
        return self.recur(x, attention * tf.cast(mask, attention.dtype))


@keras.saving.register_keras_serializable(package="ctrkit")
class InterestAttention(keras.layers.Layer):
    """DIEN's attention of the candidate over the interest states, a masked softmax (the authors' scores)::

        q = W_q e_a + b_q,   s_t = MLP([h_t, q, h_t - q, h_t * q]),   a_t = softmax over the items of s_t

    Shapes: ``query`` ``[B, E]``, ``states`` ``[B, L, H]``, ``mask`` bool ``[B, L]`` -> ``[B, L]``.
    """

    def __init__(self, query_dim: int, hidden_dim: int, hidden_units: Sequence[int] = (80, 40),
                 activation: str = "sigmoid", **kwargs) -> None:
        super().__init__(**kwargs)
        self.query_dim = check_int("query_dim", query_dim)
        self.hidden_dim = check_int("hidden_dim", hidden_dim)
        policy = self.dtype_policy
        self.projection = dense(self.hidden_dim, self.query_dim, dtype=policy, name="projection")
        self.unit = TargetAttention(self.hidden_dim, hidden_units, activation, dtype=policy, name="unit")
        self.built = True

    def call(self, query, states, mask, training=None):
        q = tf.cast(self.projection(query), states.dtype)  # (B, H)
        scores = tf.cast(self.unit.scores(q, states, mask, training), widened(states.dtype))  # (B, L)
        scores = tf.where(mask, scores, tf.constant(-float("inf"), scores.dtype))
        exp = tf.exp(scores - tf.stop_gradient(_row_max(scores)))  # (B, L), 0 at padding
        weights = tf.math.divide_no_nan(exp, tf.reduce_sum(exp, axis=1, keepdims=True))  # an empty row: 0
        return weights * tf.cast(mask, weights.dtype)  # (B, L)

    def compute_mask(self, *args, **kwargs):
        return None

    def torch_parameters(self) -> TorchParameters:
        return compose_torch_parameters({"projection": dense_torch_parameters(self.projection), "unit": self.unit})

    def get_config(self) -> dict:
        return {**super().get_config(), "query_dim": self.query_dim, "hidden_dim": self.hidden_dim,
                "hidden_units": list(self.unit.hidden_units), "activation": self.unit.activation}


def _row_max(scores):
    """Each row's largest finite score ``[B, 1]`` (0 for a row without any): the softmax shift."""
    finite = tf.where(tf.math.is_finite(scores), scores, tf.zeros_like(scores) + scores.dtype.min)
    top = tf.reduce_max(finite, axis=1, keepdims=True)
    return tf.where(top > scores.dtype.min, top, tf.zeros_like(top))


@keras.saving.register_keras_serializable(package="ctrkit")
class AuxiliaryLoss(keras.layers.Layer):
    """DIEN's auxiliary loss (eq. 3): each state predicts the next behaviour against the next row's.

    Same pairs, negatives, normalisation and first-layer split as the torch block: positives where step ``t + 1`` is
    an item and ``h_t`` has seen one, negatives ``e_{(b+1) mod B, t+1}`` where that is an item of
    row ``b + 1``, divided by the number of positive pairs. ``net`` is an MLP with sigmoid hidden
    layers and one logit.

    Shapes: ``states`` ``[B, L, H]``, ``items`` ``[B, L, E]``, ``mask`` bool ``[B, L]`` -> scalar.
    """

    def __init__(self, state_dim: int, item_dim: int, hidden_units: Sequence[int] = (100, 50), **kwargs) -> None:
        super().__init__(**kwargs)
        self.state_dim = check_int("state_dim", state_dim)
        self.item_dim = check_int("item_dim", item_dim)
        units = check_units("aux_hidden_units", hidden_units)
        self.net = MLP(self.state_dim + self.item_dim, units, "sigmoid", output_dim=1, dtype=self.dtype_policy,
                       name="net")
        self.built = True

    @staticmethod
    def pairs(mask):
        """Float32 ``[B, L-1]`` weights of the positive and the negative terms."""
        seen = tf.cumsum(tf.cast(mask, tf.int32), axis=1) > 0  # (B, L)
        positive = mask[:, 1:] & seen[:, :-1]  # (B, L-1)
        negative = positive & tf.roll(mask, -1, axis=0)[:, 1:]
        return tf.cast(positive, tf.float32), tf.cast(negative, tf.float32)

    def call(self, states, items, mask, training=None):
        positive, negative = self.pairs(mask)  # (B, L-1)
        first, rest = self.net.layers[0], self.net.layers[1:]
        dtype = first.compute_dtype
        kernel = tf.cast(first.kernel, dtype)  # (H + E, U)
        # W [h; e] + b = W_h h + W_e e + b: each state and each item projected once (see the torch block)
        h_part = tf.einsum("blh,hu->blu", tf.cast(states[:, :-1], dtype), kernel[:self.state_dim])
        h_part = h_part + tf.cast(first.bias, dtype)  # (B, L-1, U)
        e_part = tf.einsum("ble,eu->blu", tf.cast(items, dtype), kernel[self.state_dim:])  # (B, L, U)
        x = tf.stack([h_part + e_part[:, 1:], h_part + tf.roll(e_part, -1, axis=0)[:, 1:]])  # (2, B, L-1, U)
        for layer in rest:
            x = layer(x, training=training) if isinstance(layer, keras.layers.Dropout) else layer(x)
        wide = widened(x.dtype)
        pos, neg = tf.unstack(tf.cast(tf.squeeze(x, -1), wide))  # (B, L-1) each
        positive, negative = tf.cast(positive, wide), tf.cast(negative, wide)
        total = tf.reduce_sum(tf.nn.softplus(-pos) * positive) + tf.reduce_sum(tf.nn.softplus(neg) * negative)
        return total / tf.maximum(tf.reduce_sum(positive), 1.0)

    def compute_mask(self, *args, **kwargs):
        return None

    def torch_parameters(self) -> TorchParameters:
        return compose_torch_parameters({"net": self.net})

    def get_config(self) -> dict:
        return {**super().get_config(), "state_dim": self.state_dim, "item_dim": self.item_dim,
                "hidden_units": list(self.net.hidden_units)}


def behaviours(embedding: FieldEmbedding, batch, training=None):
    """The fields ``[B, K, D]``, the candidate ``[B, n_seq*D]``, the behaviours ``[B, L, n_seq*D]`` and their mask.

    Mirror of the torch function: aligned sequence fields concatenated, a position is a behaviour
    when any of its items is not padding.
    """
    fields, sequences, masks = embedding.unpooled(batch, training=training)
    candidates = embedding.candidates(fields)  # (B, n_seq, D)
    query = tf.reshape(candidates, (-1, candidates.shape[1] * candidates.shape[2]))  # (B, n_seq*D)
    keys = tf.concat(sequences, axis=-1) if len(sequences) > 1 else sequences[0]  # (B, L, n_seq*D)
    mask = tf.reduce_any(tf.stack(masks), axis=0) if len(masks) > 1 else masks[0]  # (B, L)
    return fields, query, keys, mask


def distinct_rows_l2(embedding: FieldEmbedding, batch):
    """``sum ||w_j||^2`` over the distinct embedding rows the batch reads (DIN's MBA regulariser, ``n_j = 1``)."""
    ids, counted, _ = embedding._ids(batch)  # (B, K + sum L)
    flat_ids = tf.reshape(ids, (-1,))
    if counted is not None:
        flat_ids = tf.boolean_mask(flat_ids, tf.reshape(counted, (-1,)))
    rows, _ = tf.unique(flat_ids)
    return tf.reduce_sum(tf.square(tf.cast(tf.gather(embedding.table.weight, rows), tf.float32)))
