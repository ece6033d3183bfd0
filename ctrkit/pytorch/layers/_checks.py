"""Re-export of :mod:`ctrkit.hparam_checks` (the checks' framework-neutral home) under its old path."""

from ctrkit.hparam_checks import (
    ACTIVATIONS,
    check_activation,
    check_bool,
    check_int,
    check_prob,
    check_units,
)

__all__ = ["ACTIVATIONS", "check_activation", "check_bool", "check_int", "check_prob", "check_units"]
