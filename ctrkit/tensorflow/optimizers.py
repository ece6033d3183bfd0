"""Optimisers with PyTorch's exact update rules, over the parameter groups of the regularisation spec.

Keras's optimisers are not torch's, so a model trained with ``--framework tf`` would drift from
the same run in torch:

* Keras ``Adam`` adds ``epsilon`` to ``sqrt(v_hat)`` computed as ``sqrt(v) / sqrt(1 - b2^t)``
  folded into the step size (``eps`` effectively scaled by ``sqrt(1 - b2^t)``); torch divides
  first and adds ``eps`` after: ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``;
* Keras ``Adagrad`` starts its accumulator at 0.1 and puts ``eps`` inside the square root; torch
  starts at 0 and uses ``p -= lr * g / (sqrt(sum g^2) + eps)`` with ``eps = 1e-10``;
* torch's ``weight_decay`` is an L2 term added to the gradient (``g += wd * p``) for Adam, Adagrad
  and SGD, and the decoupled ``p *= 1 - lr * wd`` for AdamW; Keras's is decoupled everywhere.

The rules here, per variable ``p`` with gradient ``g`` at step ``t`` (torch's defaults)::

    SGD      g += wd p;  p -= lr g
    Adagrad  g += wd p;  s += g^2;  p -= lr g / (sqrt(s) + 1e-10)
    Adam     g += wd p;  m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2
             p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + 1e-8)      (b1, b2 = 0.9, 0.999)
    AdamW    p *= 1 - lr wd;  then Adam without the L2 term

with the scalars (``lr / (1 - b1^t)``, ``sqrt(1 - b2^t)``) computed in float64 as torch does in
Python, and a weight decay per group (:func:`parameter_groups`: none on biases, norms and
embeddings, :mod:`ctrkit.training.regularization`). Slot names are torch's optimizer-state names
(``exp_avg``, ``exp_avg_sq``, ``sum``), so a checkpoint's optimiser state reads like torch's.

**Dense embedding gradients.** The gradient of a ``tf.gather`` is a ``tf.IndexedSlices`` with one
row per looked-up id, duplicates included. Keras' sparse Adam path scatter-adds the *squares* of
duplicate rows into ``v`` (not the square of their sum) and updates only the rows a batch touched
(lazy Adam), a different optimiser from torch's dense one. So every gradient is densified first
(``tf.convert_to_tensor``: duplicates summed, zeros elsewhere) and the whole table is updated, as
torch does with its dense ``nn.Embedding`` gradients. The cost is that of torch's own step: a
table-sized gradient and a table-sized update per step. Measured on this repository's 2-core
machine for a Criteo-size table (1,000,000 rows x 16, one 4096 x 39 lookup), inside a
``tf.function``: the lazy sparse Keras Adam step about 30 ms, this dense step about 60 ms
(scatter into a zeroed 64 MB gradient + three table-sized passes); torch's fused dense Adam on
the same table about 45 ms (command: the docstring of ``tests/tf/test_optimizers.py``).

Example::

    groups = parameter_groups(model, weight_decay=1e-5)
    optimizer = make_optimizer("Adam", groups, lr=1e-3)
    with tf.GradientTape() as tape:
        loss = ...
    optimizer.apply_gradients(zip(tape.gradient(loss, optimizer.variables), optimizer.variables))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf

from ctrkit.errors import ConfigError
from ctrkit.tensorflow.layers import Bias, BatchNorm1d, EmbeddingTable
from ctrkit.training.regularization import GROUPS, RegularizationSpec

_NORM_TYPES = (BatchNorm1d, keras.layers.BatchNormalization, keras.layers.LayerNormalization,
               keras.layers.GroupNormalization)
#: Keras layers whose ``bias`` attribute is the bias of a torch ``nn.Linear``/``nn.Conv*``
_BIASED_TYPES = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Conv1D, keras.layers.Conv2D)


# ---------------------------------------------------------------------------------------------
# Parameter groups
# ---------------------------------------------------------------------------------------------
@dataclass
class ParamGroup:
    """One group of trainable variables with its weight decay (torch's ``param_groups`` entry)."""

    name: str
    variables: list = field(default_factory=list)
    weight_decay: float = 0.0


def parameter_role(layer: keras.layers.Layer, variable: Any) -> str:
    """The :mod:`~ctrkit.training.regularization` role of ``layer``'s own ``variable`` (by layer type)."""
    if isinstance(layer, EmbeddingTable):
        return "embedding"
    if isinstance(layer, _NORM_TYPES):
        return "norm"
    if isinstance(layer, Bias) or (isinstance(layer, _BIASED_TYPES) and variable is getattr(layer, "bias", None)):
        return "bias"
    return "weight"


def parameter_groups(model: keras.layers.Layer, weight_decay: float = 0.0) -> list[ParamGroup]:
    """Trainable variables split into ``decay``, ``no_decay`` and ``embedding`` (empty groups left out).

    Each layer's own variables are assigned by the layer's type, as
    :func:`ctrkit.pytorch.trainer.parameter_groups` does with torch modules.
    """
    spec = RegularizationSpec(weight_decay=weight_decay)
    groups = {name: ParamGroup(name, [], spec.weight_decay_of(name)) for name in GROUPS}
    seen: set[int] = set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for variable in layer._trainable_variables:
            if id(variable) in seen or not variable.trainable:
                continue
            seen.add(id(variable))
            groups[spec.group_of(parameter_role(layer, variable))].variables.append(variable)
    return [group for group in groups.values() if group.variables]


# ---------------------------------------------------------------------------------------------
# Optimisers
# ---------------------------------------------------------------------------------------------
class TorchRuleOptimizer:
    """Base of the optimisers: variables, slots, learning rate and step count; subclasses give the rule.

    Args:
        groups: the parameter groups (:func:`parameter_groups`), in torch's order.
        lr: the learning rate of every group (:meth:`set_lr` changes it between steps).

    Attributes:
        variables: the trainable variables of all groups, in order (what gradients are taken of).
        slots: slot name -> one variable per entry of ``variables`` (zeros at the start).
        iterations: int64 step count (torch's ``step``), ``lr``: float64 learning rate, both variables
            so that a compiled step reads their current values.

    Create it where the model's variables live (inside ``strategy.scope()`` when distributed):
    the slots are mirrored like the weights.
    """

    name = ""
    slot_names: tuple[str, ...] = ()

    def __init__(self, groups: Sequence[ParamGroup], lr: float) -> None:
        self.groups = [g for g in groups if g.variables]
        self.variables = [v for g in self.groups for v in g.variables]
        self._decay = [float(g.weight_decay) for g in self.groups for _ in g.variables]
        self._index = {id(v): i for i, v in enumerate(self.variables)}
        with tf.init_scope():  # created eagerly even when first used inside a tf.function
            self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
            self.lr = tf.Variable(float(lr), dtype=tf.float64, trainable=False, name="lr")
            self.slots = {slot: [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name=slot)
                                 for v in self.variables] for slot in self.slot_names}

    def set_lr(self, lr: float) -> None:
        self.lr.assign(float(lr))

    def slot_variables(self) -> list[tf.Variable]:
        return [variable for slot in self.slot_names for variable in self.slots[slot]]

    # -- a step --------------------------------------------------------------------------------
    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Any]]) -> None:
        """One step over ``(gradient, variable)`` pairs (variables of :attr:`variables`; None gradients skip)."""
        pairs = []
        for grad, variable in grads_and_vars:
            if id(variable) not in self._index:
                raise ValueError(f"variable {getattr(variable, 'path', variable.name)} is not in this optimiser's groups")
            if grad is not None:
                pairs.append((self._index[id(variable)], grad))
        self.apply(pairs)

    def apply(self, indexed_grads: Sequence[tuple[int, Any]]) -> None:
        """One step over ``(index into variables, gradient)`` pairs; in or outside a tf.function.

        Under a ``tf.distribute`` strategy, call it in cross-replica context with gradients that
        are already summed over the replicas (plain tensors, e.g. from ``strategy.reduce``): the
        update is computed once and every replica's copy of a variable and its slots is assigned
        the same value (a mirrored variable's ``assign`` in cross-replica context).
        """
        self.iterations.assign_add(1)
        scalars = self._scalars(tf.cast(self.iterations, tf.float64), tf.identity(self.lr))
        for index, grad in indexed_grads:
            grad = tf.convert_to_tensor(grad)  # IndexedSlices -> dense (see the module docstring)
            slots = tuple(self.slots[slot][index] for slot in self.slot_names)
            self._update(tf_variable(self.variables[index]), grad, slots, self._decay[index], scalars)

    def _scalars(self, step: tf.Tensor, lr: tf.Tensor) -> dict[str, tf.Tensor]:
        """float64 scalars of this step, shared by every variable."""
        return {"lr": lr}

    def _update(self, variable, grad, slots, decay: float, scalars) -> None:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def _cast(scalar: tf.Tensor, variable) -> tf.Tensor:
        return tf.cast(scalar, variable.dtype)


class SGD(TorchRuleOptimizer):
    """``torch.optim.SGD`` without momentum: ``g += wd p; p -= lr g``."""

    name = "SGD"

    def _update(self, variable, grad, slots, decay, scalars):
        if decay:
            grad = grad + decay * variable
        variable.assign_sub(self._cast(scalars["lr"], variable) * grad)


class Adagrad(TorchRuleOptimizer):
    """``torch.optim.Adagrad`` (accumulator from 0, ``eps = 1e-10``, no lr decay)."""

    name = "Adagrad"
    slot_names = ("sum",)

    def __init__(self, groups: Sequence[ParamGroup], lr: float, eps: float = 1e-10) -> None:
        super().__init__(groups, lr)
        self.eps = float(eps)

    def _update(self, variable, grad, slots, decay, scalars):
        (state_sum,) = slots
        if decay:
            grad = grad + decay * variable
        total = state_sum.assign_add(grad * grad)
        variable.assign_sub(self._cast(scalars["lr"], variable) * grad / (tf.sqrt(total) + self.eps))


class Adam(TorchRuleOptimizer):
    """``torch.optim.Adam``: coupled L2 weight decay, ``eps`` added after the bias-corrected sqrt."""

    name = "Adam"
    slot_names = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, groups: Sequence[ParamGroup], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(groups, lr)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)

    def _scalars(self, step, lr):
        return {
            "lr": lr,
            "step_size": lr / (1.0 - tf.pow(tf.constant(self.beta1, tf.float64), step)),
            "bias_correction2_sqrt": tf.sqrt(1.0 - tf.pow(tf.constant(self.beta2, tf.float64), step)),
        }

    def _update(self, variable, grad, slots, decay, scalars):
        exp_avg, exp_avg_sq = slots
        if decay and self.decoupled:
            variable.assign(variable * self._cast(1.0 - scalars["lr"] * decay, variable))
        elif decay:
            grad = grad + decay * variable
        m = exp_avg.assign_add((1.0 - self.beta1) * (grad - exp_avg))  # torch's lerp
        v = exp_avg_sq.assign(exp_avg_sq * self.beta2 + (1.0 - self.beta2) * grad * grad)
        denom = tf.sqrt(v) / self._cast(scalars["bias_correction2_sqrt"], variable) + self.eps
        variable.assign_sub(self._cast(scalars["step_size"], variable) * m / denom)


class AdamW(Adam):
    """``torch.optim.AdamW``: decoupled weight decay ``p *= 1 - lr wd`` before the Adam step."""

    name = "AdamW"
    decoupled = True


def tf_variable(variable: Any) -> Any:
    """The ``tf.Variable`` behind a Keras variable (what ``tf.distribute`` updates replica by replica)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


OPTIMIZERS = {cls.name: cls for cls in (Adam, AdamW, Adagrad, SGD)}


def make_optimizer(name: str, groups: Sequence[ParamGroup], lr: float) -> TorchRuleOptimizer:
    """The optimiser ``name`` (``TrainConfig.optimizer``) with torch's defaults over ``groups``."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}") from None
    return cls(groups, lr)


def build_optimizer(model: keras.layers.Layer, config: Any) -> TorchRuleOptimizer:
    """The configured optimiser over :func:`parameter_groups` (mirror of the torch trainer's)."""
    return make_optimizer(config.optimizer, parameter_groups(model, config.weight_decay), config.lr)
