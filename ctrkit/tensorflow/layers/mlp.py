"""Multi-layer perceptron block (TensorFlow), its activations, initialiser and BatchNorm1d.

Mirror of :mod:`ctrkit.pytorch.layers.mlp`. Weights are created at construction (shapes are known
from the constructor; see :mod:`ctrkit.tensorflow.layers.embedding`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from ctrkit.hparam_checks import check_activation, check_bool, check_int, check_prob, check_units
from ctrkit.parity import TorchParameters, compose_torch_parameters
from ctrkit.tensorflow.layers._dtypes import widened

#: negative slope of torch's nn.LeakyReLU default (Keras' own default is 0.2)
LEAKY_RELU_SLOPE = 0.01


def make_activation(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """The activation function named ``name`` (see ``ACTIVATIONS``), as torch's module computes it."""
    key = check_activation("activation", name)
    return {
        "relu": tf.nn.relu,
        "leaky_relu": lambda x: tf.nn.leaky_relu(x, alpha=LEAKY_RELU_SLOPE),
        "elu": tf.nn.elu,
        "selu": tf.nn.selu,
        "gelu": lambda x: tf.nn.gelu(x, approximate=False),  # nn.GELU's default: exact erf form
        "silu": tf.nn.silu,
        "tanh": tf.math.tanh,
        "sigmoid": tf.math.sigmoid,
        "identity": tf.identity,
    }[key]


def xavier_normal() -> keras.initializers.Initializer:
    """Xavier (Glorot) normal, *not* truncated (``keras.initializers.GlorotNormal`` truncates):
    ``N(0, 2 / (fan_in + fan_out))``, torch's ``xavier_normal_``, the project-wide initialiser."""
    return keras.initializers.VarianceScaling(scale=1.0, mode="fan_avg", distribution="untruncated_normal")


def dense(units: int, input_dim: int, use_bias: bool = True, dtype=None, name: str | None = None) -> keras.layers.Dense:
    """A built Dense layer with Xavier-normal kernel and zero bias (``nn.Linear`` + ``init_linear``)."""
    layer = keras.layers.Dense(units, use_bias=use_bias, kernel_initializer=xavier_normal(),
                               bias_initializer="zeros", dtype=dtype, name=name)
    layer.build((None, input_dim))
    return layer


def dense_torch_parameters(layer: keras.layers.Dense) -> TorchParameters:
    """The ``nn.Linear`` names of a Dense layer: ``weight`` (transposed kernel) and ``bias``."""
    params: TorchParameters = {"weight": (layer.kernel, "transpose")}
    if layer.use_bias:
        params["bias"] = (layer.bias, "same")
    return params


def torch_default_initialise(layer: keras.layers.Layer) -> None:
    """Re-draw every ``nn.Linear``/``nn.Conv1d`` counterpart of ``layer`` with PyTorch's own default.

    The TensorFlow side of ``--init torch_default``: the variables that ``torch_parameters`` maps
    with layout ``transpose`` or ``conv1d`` are the weights of torch ``nn.Linear``/``nn.Conv1d``
    layers; they get ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (Kaiming uniform with ``a = sqrt(5)``)
    and their ``.bias`` siblings the same bound, as ``nn.Linear.reset_parameters`` does.
    Embeddings, free biases and CrossNet weights keep theirs. Draws from Keras' global seed.
    """
    params = layer.torch_parameters()
    bounds = {}
    for name, (variable, layout) in params.items():
        if layout in ("transpose", "conv1d") and name.endswith("weight"):
            bound = 1.0 / math.sqrt(variable.shape[0])  # kernels are [fan_in, out]
            bounds[name] = bound
            bias = params.get(name[: -len("weight")] + "bias")
            if bias is not None:
                bounds[name[: -len("weight")] + "bias"] = bound
    for name, bound in bounds.items():
        variable = params[name][0]
        variable.assign(keras.initializers.RandomUniform(-bound, bound)(variable.shape, dtype=variable.dtype))


@keras.saving.register_keras_serializable(package="ctrkit")
class BatchNorm1d(keras.layers.Layer):
    """``torch.nn.BatchNorm1d`` over the last axis of ``[B, C]``, with torch's exact statistics.

    Training: ``y = (x - mean_B) / sqrt(var_B + eps) * weight + bias`` with the biased batch
    variance, then ``running = momentum * running + (1 - momentum) * batch`` where the running
    variance takes the *unbiased* batch variance (``var_B * n / (n - 1)``) and
    ``num_batches_tracked`` counts the updates -- as torch does, where Keras'
    ``BatchNormalization`` would keep the biased one. Inference uses the running statistics.
    ``momentum = 0.9`` is Keras' convention for torch's ``momentum = 0.1``. Statistics are
    computed in float32 for bf16/fp16 inputs; the output has the compute dtype.

    Args:
        num_features: ``C``.
        momentum: weight of the old running value.
        epsilon: added to the variance.

    Shapes: ``[B, C]`` -> ``[B, C]``.

    Example::

        bn = BatchNorm1d(16)
        bn(tf.random.normal((8, 16)), training=True).shape  # TensorShape([8, 16])
    """

    def __init__(self, num_features: int, momentum: float = 0.9, epsilon: float = 1e-5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_features = check_int("num_features", num_features)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.build()

    def build(self, input_shape=None) -> None:
        if self.built:
            return
        shape = (self.num_features,)
        self.gamma = self.add_weight(shape=shape, initializer="ones", name="gamma", autocast=False)
        self.beta = self.add_weight(shape=shape, initializer="zeros", name="beta", autocast=False)
        self.moving_mean = self.add_weight(shape=shape, initializer="zeros", name="moving_mean",
                                           trainable=False, autocast=False)
        self.moving_variance = self.add_weight(shape=shape, initializer="ones", name="moving_variance",
                                               trainable=False, autocast=False)
        self.num_batches_tracked = self.add_weight(shape=(), initializer="zeros", dtype="int64",
                                                   name="num_batches_tracked", trainable=False)
        self.built = True

    def call(self, x, training=None):
        dtype = widened(x.dtype)
        x = tf.cast(x, dtype)  # (B, C)
        if training and self.trainable:
            mean, variance = tf.nn.moments(x, axes=[0])  # (C,), biased
            n = tf.cast(tf.shape(x)[0], dtype)
            unbiased = variance * n / tf.maximum(n - 1.0, 1.0)
            keep = self.momentum
            self.moving_mean.assign(keep * self.moving_mean + (1.0 - keep) * tf.cast(mean, self.moving_mean.dtype))
            self.moving_variance.assign(
                keep * self.moving_variance + (1.0 - keep) * tf.cast(unbiased, self.moving_variance.dtype)
            )
            self.num_batches_tracked.assign_add(tf.constant(1, tf.int64))
        else:
            mean = tf.cast(self.moving_mean, dtype)
            variance = tf.cast(self.moving_variance, dtype)
        y = (x - mean) * tf.math.rsqrt(variance + self.epsilon) * tf.cast(self.gamma, dtype) + tf.cast(self.beta, dtype)
        return tf.cast(y, self.compute_dtype)  # (B, C)

    def torch_parameters(self) -> TorchParameters:
        return {
            "weight": (self.gamma, "same"),
            "bias": (self.beta, "same"),
            "running_mean": (self.moving_mean, "same"),
            "running_var": (self.moving_variance, "same"),
            "num_batches_tracked": (self.num_batches_tracked, "same"),
        }

    def get_config(self) -> dict:
        return {**super().get_config(), "num_features": self.num_features, "momentum": self.momentum,
                "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="ctrkit")
class MLP(keras.layers.Layer):
    """Feed-forward tower: ``[Dense -> BatchNorm1d? -> activation -> Dropout] x len(hidden_units)``,
    then an optional output ``Dense(output_dim)``.

    The deep component of DeepFM/DCN/xDeepFM/AutoInt+ (e.g. Guo et al., IJCAI 2017,
    https://arxiv.org/abs/1703.04247): ``a^{l+1} = act(W^l a^l + b^l)``.
    Kernels Xavier-normal, biases zero. ``self.layers`` lists the sub-layers in the order (and so
    with the indices) of the torch ``nn.Sequential``: ``layers.{i}.weight`` maps to the Dense at
    index ``i`` (``identity`` activations and dropout keep their slots, as in torch).

    Args:
        input_dim: width of the input.
        hidden_units: sizes of the hidden layers (may be empty).
        activation: name of the activation (``relu`` default, see ``ctrkit.hparam_checks.ACTIVATIONS``).
        dropout: dropout rate after each hidden activation, in [0, 1).
        batch_norm: insert :class:`BatchNorm1d` between each hidden Dense and its activation.
        output_dim: width of a final plain Dense layer, or None for no output layer.

    Shapes: ``[B, input_dim]`` -> ``[B, output_dim or hidden_units[-1] or input_dim]``.

    Example::

        mlp = MLP(64, (32, 16), output_dim=1)
        mlp(tf.random.normal((8, 64))).shape  # TensorShape([8, 1])
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_dim: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.input_dim = check_int("input_dim", input_dim)
        self.hidden_units = check_units("hidden_units", hidden_units)
        self.activation = check_activation("activation", activation)
        self.dropout = check_prob("dropout", dropout)
        self.batch_norm = check_bool("batch_norm", batch_norm)
        policy = self.dtype_policy
        layers: list[keras.layers.Layer] = []
        width = self.input_dim
        for units in self.hidden_units:
            layers.append(dense(units, width, dtype=policy))
            if self.batch_norm:
                layers.append(BatchNorm1d(units, dtype=policy))
            layers.append(keras.layers.Activation(make_activation(self.activation), dtype=policy))
            if self.dropout > 0:
                layers.append(keras.layers.Dropout(self.dropout, dtype=policy))
            width = units
        if output_dim is not None:
            width = check_int("output_dim", output_dim)
            layers.append(dense(width, self.hidden_units[-1] if self.hidden_units else self.input_dim, dtype=policy))
        self.layers = layers
        self.output_dim = width
        self._output_dim_arg = None if output_dim is None else int(output_dim)
        self.built = True

    def call(self, x, training=None):
        for layer in self.layers:
            if isinstance(layer, (BatchNorm1d, keras.layers.Dropout)):
                x = layer(x, training=training)
            else:
                x = layer(x)
        return x  # (B, output_dim)

    def torch_parameters(self) -> TorchParameters:
        children = {}
        for index, layer in enumerate(self.layers):
            if isinstance(layer, keras.layers.Dense):
                children[f"layers.{index}"] = dense_torch_parameters(layer)
            elif isinstance(layer, BatchNorm1d):
                children[f"layers.{index}"] = layer
        return compose_torch_parameters(children)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "input_dim": self.input_dim,
            "hidden_units": list(self.hidden_units),
            "activation": self.activation,
            "dropout": self.dropout,
            "batch_norm": self.batch_norm,
            "output_dim": self._output_dim_arg,
        }
