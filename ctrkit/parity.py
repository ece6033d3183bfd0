"""Weight mapping between the PyTorch and the TensorFlow implementation of every block and model.

Framework-neutral: numpy only (neither torch nor TensorFlow is imported here).

The contract
------------
Every TensorFlow layer or model of ``ctrkit.tensorflow`` implements::

    torch_parameters(self) -> dict[str, tuple[variable, layout]]

mapping the names of the ``state_dict`` of the *mirrored torch module* (names local to that
module: ``"weight"``, ``"layers.0.weight"``, ``"table.weight"``, ``"bn.running_mean"``) to the
Keras variable holding the same numbers and the name of the :data:`LAYOUTS` entry that converts
between the two array layouts. Containers build their dict from their children's with
:func:`compose_torch_parameters`, prefixing each child's names with the torch attribute name of
that child (``"dnn.layers.0.weight"``), exactly as ``torch.nn.Module.state_dict`` does.

Every entry of the torch ``state_dict`` (persistent buffers included, e.g. BatchNorm's
``num_batches_tracked``) has an entry, and every variable of the Keras layer appears once, so a
conversion is a bijection: :func:`torch_state_to_tf` refuses a state with missing or extra
names or a wrong shape, and :func:`unmapped_variables` lists Keras variables that a
``torch_parameters`` forgot.

Layouts (torch array <-> TensorFlow array):

* ``same``      -- identical arrays (embedding tables, biases, BatchNorm statistics, CrossNet).
* ``transpose`` -- ``nn.Linear.weight`` ``[out, in]`` <-> Dense-style kernel ``[in, out]``.
* ``conv1d``    -- kernel-size-1 ``nn.Conv1d.weight`` ``[out, in, 1]`` <-> kernel ``[in, out]``
  (the CIN filters). A *grouped* Conv1d (``groups=G``) has the weight ``[G*out, in/G, 1]``: the
  same layout gives the kernel ``[in/G, G*out]`` whose column block ``g`` is block ``g``'s
  matrix transposed (CrossNetMix's ``C_i``, BilinearInteraction's ``W_g``; the TF blocks
  contract it as ``[in/G, G, out]``). Its first axis is the fan-in either way.

Example::

    from ctrkit import parity
    parity.torch_state_to_tf(tf_layer, {k: v.numpy() for k, v in torch_module.state_dict().items()})
    torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in parity.tf_to_torch_state(tf_layer).items()})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctrkit.errors import ConfigError, InputError


@dataclass(frozen=True)
class Layout:
    """How one torch array becomes the TensorFlow array and back."""

    to_tf: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]
    description: str


def _conv1d_to_tf(array: np.ndarray) -> np.ndarray:
    if array.ndim != 3 or array.shape[2] != 1:
        raise InputError(f"a kernel-size-1 Conv1d weight [out, in, 1] was expected, got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, 0].T)


def _transpose(array: np.ndarray) -> np.ndarray:
    if array.ndim != 2:
        raise InputError(f"a 2-D Linear weight was expected, got shape {array.shape}")
    return np.ascontiguousarray(array.T)


LAYOUTS: dict[str, Layout] = {
    "same": Layout(lambda a: a, lambda a: a, "identical arrays"),
    "transpose": Layout(_transpose, _transpose, "nn.Linear weight [out, in] <-> kernel [in, out]"),
    "conv1d": Layout(
        _conv1d_to_tf,
        lambda a: np.ascontiguousarray(a.T)[:, :, None],
        "nn.Conv1d weight [out, in, 1] <-> kernel [in, out]",
    ),
}

#: what ``torch_parameters`` returns: torch name -> (Keras variable, layout name)
TorchParameters = dict[str, tuple[Any, str]]


def compose_torch_parameters(children: Mapping[str, Any]) -> TorchParameters:
    """Merge the ``torch_parameters`` of child layers under their torch attribute names.

    ``children`` maps a torch attribute path (``"dnn"``, ``"biases.0"``) to a layer that has
    ``torch_parameters()`` or to an already built dict of that form. ``None`` children (an absent
    optional block) are skipped. Duplicate names are a programming error (ValueError).

    Example::

        compose_torch_parameters({"linear": self.linear, "embedding": self.embedding})
        # {"linear.weights.table.weight": ..., "linear.bias.bias": ..., "embedding.table.weight": ...}
    """
    out: TorchParameters = {}
    for prefix, child in children.items():
        if child is None:
            continue
        entries = child if isinstance(child, Mapping) else child.torch_parameters()
        for name, entry in entries.items():
            key = f"{prefix}.{name}" if prefix else name
            if key in out:
                raise ValueError(f"torch parameter {key!r} is mapped twice")
            out[key] = entry
    return out


def torch_parameters_of(tf_model: Any) -> TorchParameters:
    """``tf_model.torch_parameters()`` with its layouts checked; ConfigError if it has no mapping."""
    method = getattr(tf_model, "torch_parameters", None)
    if method is None:
        raise ConfigError(f"{type(tf_model).__name__} has no weight mapping to PyTorch (no torch_parameters)")
    params = method()
    for name, (_, layout) in params.items():
        if layout not in LAYOUTS:
            raise ValueError(f"torch parameter {name!r}: unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    return params


def _to_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (duck-typed: no torch import) or a list."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _names(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def torch_state_to_tf(tf_model: Any, state: Mapping[str, Any]) -> None:
    """Assign a torch ``state_dict`` (arrays or tensors) to the variables of a TensorFlow layer/model.

    Every name must match (no missing, no extra) and every converted array must have the shape
    of its variable; otherwise :class:`~ctrkit.errors.InputError` names the first problems and
    nothing is assigned. Values are cast to each variable's dtype.
    """
    params = torch_parameters_of(tf_model)
    missing = [k for k in params if k not in state]
    extra = [k for k in state if k not in params]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if extra:
            parts.append(f"unexpected {_names(extra)}")
        raise InputError(f"weights do not match {type(tf_model).__name__}: {'; '.join(parts)}")
    converted = {}
    for name, (variable, layout) in params.items():
        source = _to_numpy(state[name])
        try:
            array = LAYOUTS[layout].to_tf(source)
        except InputError as exc:
            raise InputError(f"weights do not match {type(tf_model).__name__}: {name}: {exc}") from None
        expected = tuple(variable.shape)
        if tuple(array.shape) != expected:
            raise InputError(
                f"weights do not match {type(tf_model).__name__}: {name} has shape {tuple(source.shape)}, "
                f"the model needs {expected} ({layout} layout)"
            )
        converted[name] = array
    for name, (variable, _) in params.items():
        variable.assign(converted[name].astype(_numpy_dtype(variable)))


def _numpy_dtype(variable: Any) -> str:
    dtype = getattr(variable.dtype, "name", variable.dtype)
    return str(dtype)


def tf_to_torch_state(tf_model: Any) -> dict[str, np.ndarray]:
    """The torch ``state_dict`` (as numpy arrays) of a TensorFlow layer/model's current weights."""
    params = torch_parameters_of(tf_model)
    return {name: LAYOUTS[layout].to_torch(np.asarray(variable.numpy())) for name, (variable, layout) in params.items()}


def unmapped_variables(tf_model: Any) -> list[str]:
    """Paths of the Keras variables of ``tf_model`` that its ``torch_parameters`` leaves out (should be empty)."""
    mapped = {id(variable) for variable, _ in torch_parameters_of(tf_model).values()}
    return [v.path for v in tf_model.weights if id(v) not in mapped]
