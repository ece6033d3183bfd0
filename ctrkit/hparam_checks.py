"""Validation of layer and model hyper-parameters, shared by the PyTorch and TensorFlow blocks.

Every check raises :class:`ctrkit.errors.ConfigError` with a message that names the parameter, so a
bad CLI flag or YAML value ends in one readable line instead of a traceback from deep inside torch
or TensorFlow. Framework-free on purpose: both ``ctrkit.pytorch`` and ``ctrkit.tensorflow`` import
this one copy, so the two frameworks accept exactly the same hyper-parameters.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

from ctrkit.errors import ConfigError

ACTIVATIONS: tuple[str, ...] = (
    "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "tanh", "sigmoid", "identity",
)


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an int >= ``minimum`` (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_prob(name: str, value: object) -> float:
    """Return ``value`` as a float in [0, 1) (a dropout rate)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` as a bool; only real booleans are accepted."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_units(name: str, value: object, allow_empty: bool = True) -> tuple[int, ...]:
    """Return layer sizes as a tuple of positive ints.

    Accepts a list/tuple of ints or a string such as ``"400,400,400"`` / ``"[400, 400]"``.
    """
    if isinstance(value, str):
        text = value.strip().strip("[]()").strip()
        items: Iterable[object] = [t for t in text.replace(",", " ").split()]
        try:
            items = [int(t) for t in items]
        except ValueError:
            raise ConfigError(f"{name} must be a list of positive integers, got {value!r}") from None
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise ConfigError(f"{name} must be a list of positive integers, got {value!r}")
    units = tuple(check_int(f"{name}[{i}]", v) for i, v in enumerate(items))
    if not units and not allow_empty:
        raise ConfigError(f"{name} must list at least one layer size, got {value!r}")
    return units


def check_activation(name: str, value: object) -> str:
    """Return a known activation name (case-insensitive; ``none``/``linear`` mean identity)."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be one of {', '.join(ACTIVATIONS)}, got {value!r}")
    key = value.strip().lower().replace("-", "_")
    key = {"none": "identity", "linear": "identity", "swish": "silu", "leakyrelu": "leaky_relu"}.get(key, key)
    if key not in ACTIVATIONS:
        raise ConfigError(f"{name} must be one of {', '.join(ACTIVATIONS)}, got {value!r}")
    return key


#: standard deviation of the normal initialiser of every embedding table, in both frameworks
EMBEDDING_INIT_STD = 1e-4


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` (case-insensitive, ``-`` read as ``_``) if it is one of ``choices``."""
    choices = tuple(choices)
    key = value.strip().lower().replace("-", "_") if isinstance(value, str) else None
    if key not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return key


def behaviour_fields(schema, model: str) -> tuple:
    """The sequence fields a target-attention model (DIN, DIEN) attends over, all of one ``max_len``.

    Items at the same position of these fields are one behaviour (e.g. a category and a brand);
    its embedding is the concatenation of theirs. Raises a one-line :class:`ConfigError` when the
    schema has no sequence field (a Criteo store) or when their lengths differ.
    """
    fields = tuple(schema.sequence)
    if not fields:
        raise ConfigError(f"{model} needs a store with at least one sequence field (a behaviour history, "
                          "e.g. a Taobao store); this schema has none")
    lengths = {f.name: f.max_len for f in fields}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"{model} attends over aligned behaviour sequences of one length; the sequence "
                          f"fields have max_len {lengths}")
    return fields


def check_weight(name: str, value: object) -> float:
    """Return ``value`` as a float >= 0 (a loss or regulariser weight)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) >= 0.0:
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a float > 0 (a scale, e.g. an initialiser's standard deviation)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0.0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return float(value)
