"""The step contract between a model and a trainer, the same in every framework.

**What a model returns.** ``model(batch)`` returns either

* the logits, a ``[B]`` tensor; or
* a mapping ``{"logits": [B] tensor, "aux_loss": scalar tensor}``, for models with an auxiliary
  objective (DIEN's interest-extractor loss). ``aux_loss`` arrives already weighted: its weight is
  a hyper-parameter of the model (a constructor keyword, so that it is saved with the model's other
  hyper-parameters), never an option of the trainer. Other keys are ignored by the trainers.

:func:`split_output` reads both forms; trainers use only the logits for predictions.

**The objective** of a training step (:func:`training_objective`)::

    objective = BCE(logits, label) + embedding_l2 * sum(looked-up rows ** 2) / B + aux_loss

The reported training loss is the BCE alone, so that it stays comparable across models and
regularisation settings. Weight decay is not part of the objective: the optimiser applies it
(:mod:`ctrkit.training.regularization`).

**Batches.** A batch is a mapping of columns (``sparse``, ``dense``, ``label``, ...). A ``group``
column (an integer id per row, e.g. the user) makes evaluation report gAUC next to AUC and logloss
(:func:`ctrkit.metrics.evaluation_metrics`); models may ignore it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

LOGITS = "logits"
AUX_LOSS = "aux_loss"
#: The batch column holding a per-row group id (users) for gAUC.
GROUP = "group"
LABEL = "label"


class ModelOutput(NamedTuple):
    """A model's output in its two parts: the logits, and the auxiliary loss or None."""

    logits: Any
    aux_loss: Any = None


def split_output(output: Any) -> ModelOutput:
    """``(logits, aux_loss or None)`` of a model's return value (logits, or a mapping with ``logits``).

    Raises:
        TypeError: a mapping without ``logits``.
    """
    if isinstance(output, Mapping):
        if LOGITS not in output:
            raise TypeError(f"a model that returns a mapping must put its logits under {LOGITS!r}; "
                            f"got the keys {sorted(output)}")
        return ModelOutput(output[LOGITS], output.get(AUX_LOSS))
    return ModelOutput(output, None)


def training_objective(bce: Any, *, aux_loss: Any = None, embedding_penalty: Any = None) -> Any:
    """``bce + embedding_penalty + aux_loss``, leaving out the terms that are None.

    Works on any framework's scalars (only ``+`` is used), in this order, so that a run without
    the extra terms computes exactly the BCE.
    """
    objective = bce
    if embedding_penalty is not None:
        objective = objective + embedding_penalty
    if aux_loss is not None:
        objective = objective + aux_loss
    return objective
