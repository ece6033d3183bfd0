"""What the two frameworks' ``Trainer`` classes offer their users in the same words, written once.

``ctrkit.pytorch.trainer.Trainer`` and ``ctrkit.tensorflow.trainer.Trainer`` differ in how they
train and predict (each is the :class:`~ctrkit.training.backend.Backend` of its framework), not in
what a user asks of them: where the current run stands (:attr:`progress`, :attr:`schedule`), whether
a store fits the model (:meth:`check_schema`) and the metrics of a split (:meth:`evaluate`). A
subclass provides ``loop`` (the :class:`~ctrkit.training.loop.TrainingLoop` of its last ``fit``, or
None), ``schema`` and ``predict_split(store, split) -> (probs, labels, groups)``.
"""

from __future__ import annotations

import os
from typing import Any

from ctrkit.data.store import Store
from ctrkit.errors import StoreError
from ctrkit.metrics import evaluation_metrics
from ctrkit.training.policy import PlateauSchedule
from ctrkit.training.progress import Progress


def open_store(store: Store | str | os.PathLike) -> Store:
    """``store`` itself, or the store at that path."""
    return store if isinstance(store, Store) else Store(store)


class TrainerFacade:
    """Mixin: the framework-neutral public part of a ``Trainer``."""

    loop: Any = None
    schema: Any = None

    @property
    def progress(self) -> Progress:
        """Where the current (or last) run stands."""
        return self.loop.progress if self.loop is not None else Progress()

    @property
    def schedule(self) -> PlateauSchedule | None:
        """The learning-rate schedule of the current (or last) run."""
        return self.loop.schedule if self.loop is not None else None

    def check_schema(self, store: Store) -> None:
        """StoreError unless ``store`` has the schema the model was trained on (adopts it if none yet)."""
        if self.schema is None:
            self.schema = store.schema
        elif self.schema.to_dict() != store.schema.to_dict():
            raise StoreError(
                f"store {store.path} has a different schema (fields or vocabulary sizes) from the one "
                "this model was trained on; use the store the model was trained with"
            )

    def evaluate(self, store: Store | str | os.PathLike, split: str = "test") -> dict[str, Any]:
        """AUC, logloss, rows and observed CTR (and gAUC, with a ``group`` column) of the current weights."""
        store = open_store(store)
        self.check_schema(store)
        if not store.split(split).labeled:
            raise StoreError(f"split {split!r} of {store.path} has no labels; use `ctrkit predict`")
        probs, labels, groups = self.predict_split(store, split)
        return {"split": split, **evaluation_metrics(labels, probs, groups)}

    def predict_split(self, store: Store, split: str) -> tuple[Any, Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError
