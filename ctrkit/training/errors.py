"""How a training run ends when it does not complete: divergence and preemption."""

from __future__ import annotations

from ctrkit.errors import CtrkitError


class TrainingDivergedError(CtrkitError):
    """The training loss or the weights became non-finite; the checkpoints keep the last finite weights."""


class TrainingInterrupted(CtrkitError):
    """SIGINT or SIGTERM stopped training; ``exit_code`` is the shell's ``128 + signal number``."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum

    def __reduce__(self):  # pickle both arguments (Exception's default passes only the message)
        return type(self), (str(self), self.signum)
