"""A complete :class:`ctrkit.training.backend.Backend` in plain numpy, for the tests of the neutral core.

Logistic regression with one scalar weight per id (the ``sparse`` columns are global ids into
one table) and one per dense column, trained by plain SGD. No framework, no RNG: the loop alone
decides what happens, so these tests pin the loop's behaviour down. It is also the smallest
example of what a framework backend implements.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ctrkit.errors import InputError
from ctrkit.fileio import atomic_output
from ctrkit.training.backend import RunMeta
from ctrkit.training.objective import GROUP, split_output, training_objective


class NumpyLogReg:
    """``model(batch) -> logits``; with ``aux_weight`` also an auxiliary loss (the step contract's mapping)."""

    def __init__(self, vocab: int, dense: int, aux_weight: float = 0.0):
        self.table = np.zeros(vocab)
        self.dense = np.zeros(dense)
        self.bias = 0.0
        self.aux_weight = aux_weight

    def __call__(self, batch: Mapping[str, np.ndarray]) -> Any:
        logits = self.table[batch["sparse"]].sum(axis=1) + batch["dense"] @ self.dense + self.bias
        if not self.aux_weight:
            return logits
        return {"logits": logits, "aux_loss": self.aux_weight * float(np.mean(self.table ** 2))}

    def state(self) -> dict[str, Any]:
        return {"table": self.table.copy(), "dense": self.dense.copy(), "bias": self.bias}

    def load(self, state: Mapping[str, Any]) -> None:
        self.table, self.dense, self.bias = state["table"].copy(), state["dense"].copy(), float(state["bias"])


def bce(logits: np.ndarray, labels: np.ndarray) -> float:
    with np.errstate(invalid="ignore"):  # NaN logits after a poisoned step give a NaN loss
        return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


class NumpyBackend:
    """The Backend protocol for :class:`NumpyLogReg` (one process)."""

    framework = "torch"  # borrows torch's file names; the files themselves are pickles
    rank, world_size, is_main, device_name = 0, 1, True, "numpy"

    def __init__(self, model: NumpyLogReg, config: Any, *, groups_from_field: int | None = None,
                 poison_at_step: int | None = None, frozen: bool = False):
        self.model = model
        self.config = config
        self.lr = config.lr
        self.groups_from_field = groups_from_field  # a "group" column: the id of this sparse field
        self.poison_at_step = poison_at_step
        self.frozen = frozen  # steps change nothing: every epoch after the first is a plateau
        self.steps = 0
        self.objectives: list[float] = []
        self.lr_history: list[float] = []

    def meta(self, store: Any) -> RunMeta:
        from ctrkit.registry import resolved_hparams

        hparams = resolved_hparams(self.config.model, {})
        return RunMeta(self.config.model, hparams, store.schema.to_dict(), self.config.to_dict())

    # lifetime
    def prepare(self, store: Any) -> None:
        pass

    def start(self, store: Any) -> None:
        pass

    def stop(self) -> None:
        pass

    # steps
    def _with_groups(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = dict(batch)
        if self.groups_from_field is not None:
            batch[GROUP] = batch["sparse"][:, self.groups_from_field].astype(np.int64)
        return batch

    def train_batches(self, reader: Any, epoch: int, start_batch: int, *, ignore_signals: bool) -> Iterator[Any]:
        for batch in reader.iter_epoch(epoch, start_batch=start_batch):
            yield self._with_groups(batch)

    def begin_epoch(self) -> None:
        pass

    def train_step(self, batch: Mapping[str, np.ndarray]) -> float:
        logits, aux_loss = split_output(self.model(batch))
        labels = batch["label"].astype(np.float64)
        loss = bce(logits, labels)
        self.objectives.append(training_objective(loss, aux_loss=aux_loss))
        grad = (1.0 / (1.0 + np.exp(-logits)) - labels) / len(labels)  # d BCE / d logits
        table_grad = np.zeros_like(self.model.table)
        np.add.at(table_grad, batch["sparse"], grad[:, None])
        if self.frozen:
            self.steps += 1
            return loss
        if aux_loss is not None:  # d (w * mean(table^2)) / d table
            table_grad += self.model.aux_weight * 2.0 * self.model.table / self.model.table.size
        self.model.table -= self.lr * table_grad
        self.model.dense -= self.lr * (batch["dense"].T @ grad)
        self.model.bias -= self.lr * float(grad.sum())
        self.steps += 1
        if self.poison_at_step == self.steps:
            self.model.table[0] = math.nan
            return math.nan
        return loss

    def batch_rows(self, batch: Mapping[str, np.ndarray]) -> int:
        return len(batch["label"])

    def new_loss_sum(self, value: float) -> float:
        return float(value)

    def accumulate_loss(self, loss_sum: float, loss: float, rows: int) -> float:
        return loss_sum + loss * rows

    def reduce_sum(self, value: Any) -> float:
        return float(value)

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        self.lr_history.append(lr)

    def non_finite_weight(self) -> str | None:
        for name, value in self.model.state().items():
            if not np.all(np.isfinite(value)):
                return name
        return None

    # evaluation
    def predict_split(self, store: Any, split: str):
        from ctrkit.data.batches import BatchReader

        probs, labels, groups = [], [], []
        for batch in BatchReader(store, split, 256).iter_epoch(0):
            batch = self._with_groups(batch)
            logits, _ = split_output(self.model(batch))
            probs.append(1.0 / (1.0 + np.exp(-logits)))
            labels.append(batch["label"].astype(np.float64))
            if GROUP in batch:
                groups.append(batch[GROUP])
        return np.concatenate(probs), np.concatenate(labels), np.concatenate(groups) if groups else None

    # checkpoints
    def save_checkpoint(self, path: Path, entries: Mapping[str, Any], *, kept: str) -> None:
        payload = {**entries, "model": self.model.state()}
        if entries["kind"] == "last":
            payload["optimizer"] = {"lr": self.lr}
        with atomic_output(path, "wb", flag="--model_save_dir", kept=kept) as handle:
            pickle.dump(payload, handle)

    def read_checkpoint(self, path: Path, *, resume: bool) -> Mapping[str, Any]:
        try:
            with open(path, "rb") as handle:
                return pickle.load(handle)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise InputError(f"{path} is not readable: {exc}") from None

    def restore(self, payload: Mapping[str, Any], path: Path) -> None:
        self.model.load(payload["model"])
        self.lr = payload["optimizer"]["lr"]

    def read_weights(self, path: Path) -> Any:
        return self.read_checkpoint(path, resume=False)["model"]

    def set_weights(self, weights: Any, path: Path) -> None:
        self.model.load(weights)

    # processes
    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def parameter_count(self) -> int:
        return sum(np.size(value) for value in self.model.state().values())

    def peak_device_memory(self) -> int | None:
        return None

    def open_scalar_writer(self, log_dir: Path, purge_step: int | None):
        return None
