"""The epoch policy, the same for every framework.

After each epoch the loop validates, then asks the policy:

* **improvement** — :meth:`EpochPolicy.is_improvement`: the monitored metric (``auc`` by default;
  ``gauc`` or ``logloss`` possible) beats the best so far, and every reported score is finite (a NaN
  logloss with a good AUC is a broken model, not the best epoch);
* **early stopping** — ``patience`` epochs in a row without improvement stop training;
* **learning rate** — :class:`PlateauSchedule` multiplies it by ``lr_factor`` after more than
  ``lr_patience`` epochs without a better monitored value. It is torch's
  ``ReduceLROnPlateau(threshold=0)`` as plain Python, so that TensorFlow (which has no such
  scheduler) follows the same rule and a framework only sets the learning rate it is given;
* **divergence** — :func:`check_finite_loss`; an epoch loss far above that of a constant
  prediction is only a warning (:func:`high_loss_warning`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ctrkit.errors import ConfigError

#: Monitored metrics and their direction: ``max`` = higher is better.
MONITORS = {"auc": "max", "gauc": "max", "logloss": "min"}
#: An epoch's mean training loss above this is far worse than predicting 50 % for every row
#: (BCE log 2), itself no better than the base rate: a sign of a too high learning rate.
LOSS_WARNING_FACTOR = 10.0
#: Scores that must be finite for an epoch to count as an improvement (besides the monitored one).
CHECKED_SCORES = ("auc", "logloss")


def _mode_of(monitor: str) -> str:
    if monitor not in MONITORS:
        raise ConfigError(f"--monitor must be one of {', '.join(MONITORS)}, got {monitor!r}")
    return MONITORS[monitor]


def is_improvement(score: Mapping[str, float], best: float, monitor: str = "auc") -> bool:
    """Whether a validation result beats the best monitored value so far, every score finite.

    (``nan > x`` is already False, but a NaN logloss with a finite AUC, or an infinite AUC, would
    otherwise count as the best epoch and be saved as the best checkpoint.)
    """
    mode = _mode_of(monitor)
    if monitor not in score:
        return False
    names = dict.fromkeys((*CHECKED_SCORES, monitor))
    if not all(math.isfinite(float(score[name])) for name in names if name in score):
        return False
    value = float(score[monitor])
    return value > best if mode == "max" else value < best


# ---------------------------------------------------------------------------------------------
# Learning rate on a plateau
# ---------------------------------------------------------------------------------------------
class PlateauSchedule:
    """Learning rate x ``factor`` after more than ``patience`` epochs without a better score.

    The rule of ``torch.optim.lr_scheduler.ReduceLROnPlateau(mode, factor, patience, threshold=0,
    cooldown=0, min_lr=min_lr, eps=eps)``, step for step: a score is better when it is strictly
    greater (``max``) or smaller (``min``) than the best seen (NaN never is; the first finite or
    infinite score is); a reduction smaller than ``eps`` is skipped. It holds the learning rate
    itself; the framework applies the value :meth:`step` returns.

    Example::

        schedule = PlateauSchedule(1e-3, factor=0.1, patience=0)
        schedule.step(0.70)  # 1e-3
        schedule.step(0.69)  # 1e-4: no better score for more than 0 epochs
    """

    STATE_FORMAT = "ctrkit-plateau-schedule"

    def __init__(self, lr: float, *, factor: float = 0.1, patience: int = 0, mode: str = "max",
                 min_lr: float = 0.0, eps: float = 1e-8):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        self.lr = float(lr)
        self.factor = float(factor)
        self.patience = int(patience)
        self.mode = mode
        self.min_lr = float(min_lr)
        self.eps = float(eps)
        self.best = -math.inf if mode == "max" else math.inf
        self.num_bad_epochs = 0
        self.last_epoch = 0

    def is_better(self, score: float) -> bool:
        return score > self.best if self.mode == "max" else score < self.best

    def step(self, score: float) -> float:
        """Record one epoch's score; returns the learning rate for the next epoch."""
        current = float(score)
        self.last_epoch += 1
        if self.is_better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.num_bad_epochs = 0
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        return {"format": self.STATE_FORMAT, "lr": self.lr, "best": self.best,
                "num_bad_epochs": self.num_bad_epochs, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`, or the state of a torch ``ReduceLROnPlateau`` (older checkpoints).

        Raises:
            ValueError: the state is neither (the caller names the file).
        """
        if state.get("format") == self.STATE_FORMAT:
            lr = state["lr"]
        elif "mode_worse" in state and "_last_lr" in state:  # torch's ReduceLROnPlateau, ctrkit < issue 8
            if state.get("mode") != self.mode or state.get("cooldown", 0) != 0 or state.get("threshold", 0) != 0:
                raise ValueError(f"a learning-rate scheduler state unlike ctrkit's (mode {state.get('mode')!r}, "
                                 f"threshold {state.get('threshold')!r}, cooldown {state.get('cooldown')!r})")
            lr = state["_last_lr"][0]
        else:
            raise ValueError("it is not a plateau schedule state")
        self.lr = float(lr)
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.last_epoch = int(state["last_epoch"])


# ---------------------------------------------------------------------------------------------
# Best epoch and early stopping
# ---------------------------------------------------------------------------------------------
@dataclass
class EpochPolicy:
    """Best tracking, early stopping and the learning-rate schedule of one run.

    Args:
        monitor: the validation metric that decides (``auc``, ``gauc`` or ``logloss``).
        patience: epochs without improvement before training stops (0 acts as 1).
        lr_patience, lr_factor: the :class:`PlateauSchedule`.
    """

    monitor: str = "auc"
    patience: int = 2
    lr_patience: int = 0
    lr_factor: float = 0.1

    def __post_init__(self) -> None:
        self.mode = _mode_of(self.monitor)

    @classmethod
    def from_config(cls, config: Any) -> "EpochPolicy":
        return cls(monitor=getattr(config, "monitor", "auc"), patience=config.patience,
                   lr_patience=config.lr_patience, lr_factor=config.lr_factor)

    def initial_best(self) -> float:
        return -math.inf if self.mode == "max" else math.inf

    def schedule(self, lr: float) -> PlateauSchedule:
        return PlateauSchedule(lr, factor=self.lr_factor, patience=self.lr_patience, mode=self.mode)

    def is_improvement(self, score: Mapping[str, float], best: float) -> bool:
        return is_improvement(score, best, self.monitor)

    def end_epoch(self, progress: Any, score: Mapping[str, float], epoch: int) -> bool:
        """Update ``progress`` (best score and epoch, bad epochs, ``stopped``); returns whether it improved."""
        improved = self.is_improvement(score, progress.best_score)
        if improved:
            progress.best_score, progress.best_epoch, progress.bad_epochs = float(score[self.monitor]), epoch, 0
        else:
            progress.bad_epochs += 1
        if progress.bad_epochs >= max(self.patience, 1):
            progress.stopped = "early_stopping"
        return improved


# ---------------------------------------------------------------------------------------------
# Divergence and the high-loss warning
# ---------------------------------------------------------------------------------------------
def base_rate_loss(ctr: float) -> float:
    """BCE of predicting the constant ``ctr`` for every row (the loss of knowing only the base rate)."""
    if not 0.0 < ctr < 1.0:
        return 0.0
    return -(ctr * math.log(ctr) + (1.0 - ctr) * math.log(1.0 - ctr))


def high_loss_warning(epoch: int, train_loss: float, ctr: float, lr: float) -> str | None:
    """A warning when an epoch's loss is far above that of a constant prediction, else None."""
    if not train_loss > LOSS_WARNING_FACTOR * math.log(2.0):
        return None
    if 0.0 < ctr < 1.0:
        constant = f"{base_rate_loss(ctr):.3f}, the loss of predicting the training CTR {ctr:.3g} for every row"
    else:
        constant = f"{math.log(2.0):.3f}, the loss of predicting 50 % for every row"
    return (f"warning: epoch {epoch} train_loss {train_loss:.6g} is far above {constant}; "
            f"the learning rate (--lr {lr:g}) is probably too high")
