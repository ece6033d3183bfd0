"""Shared base class of the TensorFlow (Keras 3) CTR models; mirror of :mod:`ctrkit.pytorch.models.base`."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import keras
import tensorflow as tf

from ctrkit.parity import TorchParameters, compose_torch_parameters
from ctrkit.registry import HPARAMS_ATTRIBUTE, NAME_ATTRIBUTE, plain
from ctrkit.schema import Schema
from ctrkit.tensorflow.layers._dtypes import promoted
from ctrkit.tensorflow.layers.embedding import as_schema
from ctrkit.tensorflow.layers.mlp import dense_torch_parameters


@contextlib.contextmanager
def _global_dtype_policy(policy: Any) -> Iterator[None]:
    """Keras's global dtype policy set to ``policy`` (a serialised policy or None: unchanged) inside the block."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(keras.dtype_policies.deserialize(policy) if isinstance(policy, dict) else policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


_UNTRACKED = frozenset({"_constructor_arguments", NAME_ATTRIBUTE, HPARAMS_ATTRIBUTE})


@keras.saving.register_keras_serializable(package="ctrkit")
class CTRModel(keras.Model):
    """A pure model: ``model(batch, training=False) -> logits`` float32 ``[B]`` (no sigmoid, no loss, no optimizer).

    Subclasses implement :meth:`logits` returning ``[B, 1]`` (any float dtype); :meth:`call`
    flattens it and casts low-precision logits (``mixed_bfloat16``) to float32; a model built under
    a float64 policy keeps float64 (torch's ``promote_types(dtype, float32)``).

    The batch is a dict: ``"sparse"`` int ``[B, n_sparse]``, ``"dense"`` float ``[B, n_dense]``
    (when the schema has dense fields), ``"seq:<name>"`` int ``[B, L]``; other keys (``"label"``)
    are ignored. The model does not autocast its inputs: the dense values meet the float32
    embedding rows in float32 under ``mixed_bfloat16``, as in torch autocast.

    Weights are created when the model is constructed (every shape follows from the schema and the
    hyper-parameters), so converted PyTorch weights (:mod:`ctrkit.parity`) or a checkpoint can be
    loaded before the model has seen a batch. The dtype policy is Keras's global one at
    construction (``ctrkit.tensorflow.devices.precision_policy``); the constructors take exactly
    the torch models' arguments.

    ``unused_hparams`` names constructor keywords that the current configuration ignores (for
    example ``hidden_units`` of AutoInt without its DNN); the registry reports them to the CLI.

    Subclasses list in ``torch_children`` the torch attribute names of their sub-layers; the
    Python attribute has the same name except where Keras reserves it (``RENAMED``, e.g. torch's
    ``output`` is ``output_layer`` here). :meth:`torch_parameters` composes them into the names of
    the torch model's ``state_dict``.
    """

    unused_hparams: tuple[str, ...] = ()
    #: torch attribute names of the sub-layers holding weights, in the torch module's order
    torch_children: tuple[str, ...] = ()
    #: torch attribute name -> Python attribute, where Keras reserves the torch name
    RENAMED: dict[str, str] = {"output": "output_layer"}

    def __new__(cls, *args, **kwargs):
        # Record the constructor arguments, defaults included, before __init__ validates them:
        # get_config() returns them so that from_config() rebuilds the same model.
        instance = super().__new__(cls, *args, **kwargs)
        bound = inspect.signature(cls).bind(*args, **kwargs)
        bound.apply_defaults()
        instance._constructor_arguments = {k: v for k, v in bound.arguments.items() if k != "schema"}
        return instance

    def __setattr__(self, name: str, value: Any) -> None:
        # Records of plain values (the registry's name and hyper-parameters, the constructor
        # arguments) stay plain dicts and lists: Keras would wrap them in tracked containers.
        if name in _UNTRACKED:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def __init__(self, schema: Schema) -> None:
        super().__init__()
        self.schema = as_schema(schema)
        self.autocast = False  # dense inputs stay float32 (see the class docstring)
        self.built = True  # the sub-layers create every weight when they are constructed

    def logits(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:  # pragma: no cover
        raise NotImplementedError

    def call(self, batch: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        logits = tf.reshape(self.logits(batch, training=training), (-1,))  # (B,)
        return tf.cast(logits, promoted(logits.dtype, tf.float32))

    def torch_parameters(self) -> TorchParameters:
        """The torch model's ``state_dict`` names -> (Keras variable, layout); see :mod:`ctrkit.parity`."""
        children = {}
        for name in self.torch_children:
            child = getattr(self, self.RENAMED.get(name, name))
            if isinstance(child, (list, tuple)):  # an nn.Sequential: children named by index
                children.update({f"{name}.{i}": _torch_view(layer) for i, layer in enumerate(child)})
            else:
                children[name] = _torch_view(child)
        return compose_torch_parameters(children)

    def get_config(self) -> dict:
        config = {**super().get_config(), "schema": self.schema.to_dict()}
        config.update(plain(self._constructor_arguments))
        return config

    @classmethod
    def from_config(cls, config: dict) -> CTRModel:
        config = dict(config)
        name, trainable, policy = config.pop("name", None), config.pop("trainable", True), config.pop("dtype", None)
        keywords = {k: v for k, v in config.items() if k in inspect.signature(cls).parameters}
        with _global_dtype_policy(policy):
            model = cls(**keywords)
        if name:
            model.name = name
        model.trainable = trainable
        return model


def _torch_view(child: Any) -> Any:
    """What :func:`compose_torch_parameters` takes for a child: Dense layers get their ``nn.Linear`` names."""
    if child is None:
        return None
    if isinstance(child, keras.layers.Dense):
        return dense_torch_parameters(child)
    return child


def flatten_fields(e: tf.Tensor) -> tf.Tensor:
    """``[B, F, D]`` -> ``[B, F*D]`` (torch's ``e.flatten(1)``), keeping the width static for the Dense kernels."""
    return tf.reshape(e, (-1, e.shape[1] * e.shape[2]))  # (B, F*D)


def add_promoted(*terms: tf.Tensor) -> tf.Tensor:
    """``terms[0] + terms[1] + ...`` in torch's promoted dtype (a bf16 DNN logit plus a float32 FM term is float32)."""
    dtype = functools.reduce(promoted, [t.dtype for t in terms])
    return functools.reduce(tf.add, [tf.cast(t, dtype) for t in terms])
