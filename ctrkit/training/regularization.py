"""The regularisation rule, as data that each framework applies to its own parameters.

Every trainable parameter belongs to one of three groups, chosen by the *role* of the parameter
in its layer (by layer type, never by parameter-name substrings):

=============  ==========================================================  =================
group          parameters (role)                                           weight decay
=============  ==========================================================  =================
``embedding``  the tables of the embedding layers (``embedding``)          none: see below
``no_decay``   norm layers' parameters (``norm``) and biases (``bias``)     none
``decay``      everything else: kernels, cross and attention weights       ``weight_decay``
=============  ==========================================================  =================

* ``weight_decay`` is the classic coupled L2 penalty for Adam, Adagrad and SGD (the optimiser adds
  ``weight_decay * w`` to the gradient, the gradient of ``weight_decay / 2 * ||w||^2``) and the
  decoupled decay of Loshchilov & Hutter for AdamW (``w -= lr * weight_decay * w``).
* Embedding tables get no decay over their whole vocabulary; instead
  ``embedding_l2 * sum(rows ** 2) / B`` of the rows the batch actually looked up (a row read twice
  counts twice) is added to the objective, ``O(B)`` per step instead of ``O(vocabulary)``.
  PyTorch collects the rows with forward hooks on the embedding tables; Keras has no hooks, so
  there the embedding layer itself adds the term (``add_loss`` of its looked-up rows, scaled by
  :meth:`RegularizationSpec.embedding_penalty`).

Example::

    spec = RegularizationSpec.from_config(config)
    spec.group_of("bias")            # 'no_decay'
    spec.weight_decay_of("decay")    # config.weight_decay
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The groups, in the order optimisers receive them.
GROUPS = ("decay", "no_decay", "embedding")
#: Parameter roles a framework recognises in its layers, and their group.
ROLE_GROUPS = {"weight": "decay", "bias": "no_decay", "norm": "no_decay", "embedding": "embedding"}


@dataclass(frozen=True)
class RegularizationSpec:
    """``weight_decay`` for the ``decay`` group, ``embedding_l2`` for the looked-up embedding rows."""

    weight_decay: float = 0.0
    embedding_l2: float = 0.0

    @classmethod
    def from_config(cls, config: Any) -> "RegularizationSpec":
        return cls(weight_decay=float(config.weight_decay), embedding_l2=float(config.embedding_l2))

    @staticmethod
    def group_of(role: str) -> str:
        """The group of a parameter with ``role`` (``weight``, ``bias``, ``norm`` or ``embedding``)."""
        try:
            return ROLE_GROUPS[role]
        except KeyError:
            raise ValueError(f"unknown parameter role {role!r}; known: {', '.join(ROLE_GROUPS)}") from None

    def weight_decay_of(self, group: str) -> float:
        """The optimiser's weight decay for a group (only ``decay`` has any)."""
        if group not in GROUPS:
            raise ValueError(f"unknown parameter group {group!r}")
        return self.weight_decay if group == "decay" else 0.0

    @property
    def penalises_embeddings(self) -> bool:
        return self.embedding_l2 > 0

    def embedding_penalty(self, squared_rows_sum: Any, rows: int) -> Any:
        """``embedding_l2 * squared_rows_sum / rows``: the term added to the objective (any framework's scalar)."""
        return self.embedding_l2 * squared_rows_sum / rows
