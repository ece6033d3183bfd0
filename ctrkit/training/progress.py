"""Where a training run stands: :class:`Progress`, saved in ``last`` and restored by ``--resume``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

#: Entries of a saved progress state besides the :class:`Progress` fields: the epoch's running
#: loss sum (summed over ranks; a framework scalar or a float) and the number of processes.
EXTRA_STATE = ("epoch_loss_sum",)
#: Older names of fields, accepted when a state is read (``best_auc``: before the monitored
#: metric became a parameter of the policy).
LEGACY_NAMES = {"best_score": "best_auc"}


@dataclass
class Progress:
    """Counters saved in ``last``: where training is, and the early-stopping bookkeeping."""

    epoch: int = 0  # epoch in progress (0-based)
    batch: int = 0  # batches of that epoch already trained on (per rank)
    step: int = 0  # optimiser steps since the start
    best_score: float = -math.inf  # best value of the monitored validation metric
    best_epoch: int = 0  # 1-based; 0 = none yet
    bad_epochs: int = 0
    stopped: str = ""  # "", "early_stopping"
    epoch_loss_rows: int = 0
    history: list = field(default_factory=list)

    def position(self) -> str:
        """``epoch 2, step 30`` or ``the end of epoch 1, step 24``: where a stop or a save happened."""
        if self.batch == 0 and self.epoch > 0:
            return f"the end of epoch {self.epoch}, step {self.step}"
        return f"epoch {self.epoch + 1}, step {self.step}"

    def to_state(self, *, epoch_loss_sum: float, epoch_loss_rows: int, world_size: int) -> dict[str, Any]:
        """Plain values for a checkpoint; the running loss of the epoch given summed over ranks."""
        state = dataclasses.asdict(self)
        state.update(epoch_loss_sum=float(epoch_loss_sum), epoch_loss_rows=int(epoch_loss_rows),
                     world_size=int(world_size))
        return state

    @staticmethod
    def missing(state: Mapping[str, Any]) -> list[str]:
        """The entries a saved state lacks (an older name counts for its field)."""
        needed = [f.name for f in dataclasses.fields(Progress)] + list(EXTRA_STATE)
        return [name for name in needed if name not in state and LEGACY_NAMES.get(name) not in state]

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Progress":
        """Inverse of :meth:`to_state` (the extra entries are left out; TypeError for unknown ones)."""
        values = {k: v for k, v in state.items() if k not in EXTRA_STATE and k != "world_size"}
        for name, old in LEGACY_NAMES.items():
            if old in values:
                values.setdefault(name, values.pop(old))
        return cls(**values)
