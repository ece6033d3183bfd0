"""What a framework supplies to the training core: the :class:`Backend` protocol and :class:`RunMeta`.

:class:`~ctrkit.training.loop.TrainingLoop` owns the epoch loop, the policy, the run directory,
signals, divergence checks, reporting and ``metrics.json``. A backend owns the model and its
optimiser on their devices, and nothing else: one training step, predictions, its checkpoint file
format, RNG states, and the collectives of its processes. ``ctrkit.pytorch.trainer.Trainer`` is
the PyTorch backend; ``ctrkit.tensorflow.trainer.Trainer`` is TensorFlow's.

Values crossing the protocol are plain Python (floats, ints, dicts, numpy arrays), except three
opaque ones the loop only passes back: a *batch* (from :meth:`Backend.train_batches`), a *loss*
(a device scalar from :meth:`Backend.train_step`; the loop calls ``float(loss)`` only every
``log_every`` steps) and the epoch's *loss accumulator* (:meth:`Backend.new_loss_sum`).

Collectives: :meth:`reduce_sum`, :meth:`barrier` and :meth:`broadcast_object` are called by every
process at the same points of the loop; a single-process backend makes them trivial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, runtime_checkable

import numpy as np


@dataclass
class RunMeta:
    """What every checkpoint and ``metrics.json`` record about the model of a run.

    ``model_name`` is the registry name, ``hparams`` every constructor keyword the model was built
    with (defaults included: :func:`ctrkit.registry.resolved_hparams`), ``schema`` the store's
    ``Schema.to_dict()``, ``config`` the ``TrainConfig.to_dict()``.
    """

    model_name: str
    hparams: dict[str, Any]
    schema: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    def entries(self) -> dict[str, Any]:
        """The checkpoint entries ``model_name``, ``hparams``, ``schema`` and ``config``."""
        return {"model_name": self.model_name, "hparams": self.hparams, "schema": self.schema,
                "config": self.config}


@runtime_checkable
class Backend(Protocol):
    """A framework's side of a training run (see the module docstring for the division of work).

    Attributes:
        framework: ``"torch"`` or ``"tf"`` (names the checkpoint files: ``rundir.CHECKPOINT_NAMES``).
        rank, world_size: this process among those training together (1 for one process, also for
            a single-process multi-device strategy such as TF's ``MirroredStrategy``, which splits
            each batch inside :meth:`train_step`).
        is_main: ``rank == 0``: the process that writes files and prints.
        device_name: where the model runs, for ``metrics.json`` (``"cpu"``, ``"cuda:0"``...).
    """

    framework: str
    rank: int
    world_size: int
    is_main: bool
    device_name: str

    # -- lifetime of a run ---------------------------------------------------------------------
    def prepare(self, store: Any) -> None:
        """Before the first step: threads, seeds (python, numpy, the framework's), determinism,
        the schema check against ``store``, the configured initialisation, the model on its
        device, the optimiser over :mod:`~ctrkit.training.regularization`'s groups with
        ``config.lr``. Called on every rank, after the run directory is ready."""

    def start(self, store: Any) -> None:
        """After a resume, before the first step (e.g. wrap the model for data parallelism)."""

    def stop(self) -> None:
        """After the run, also after an error (unwrap; the model stays usable for predictions)."""

    # -- training --------------------------------------------------------------------------------
    def train_batches(self, reader: Any, epoch: int, start_batch: int, *, ignore_signals: bool) -> Iterable[Any]:
        """This rank's training batches of ``epoch`` from ``start_batch`` on, ready for :meth:`train_step`.

        ``reader`` is a :class:`~ctrkit.data.batches.BatchReader` of this rank's shard; its
        ``iter_epoch(epoch, start_batch)`` gives the batches (numpy columns) in the order that
        makes a resumed run exact. ``ignore_signals``: loader worker processes must ignore
        SIGINT/SIGTERM (:class:`~ctrkit.training.signals.IgnoreStopSignals`).
        """

    # optional: ``train_shard() -> (rank, world)`` when a process splits its batches over several
    # replicas, each reading its own even shard (see ``loop.train_reader``); default (rank, world_size)

    def begin_epoch(self) -> None:
        """Put the model in training mode."""

    def train_step(self, batch: Any) -> Any:
        """One optimiser step on ``batch``; returns the batch's mean BCE as a device scalar, without
        a host sync. The objective is :func:`~ctrkit.training.objective.training_objective` of
        the model's output (:func:`~ctrkit.training.objective.split_output`)."""

    def batch_rows(self, batch: Any) -> int:
        """Rows in a batch (of this rank)."""

    def new_loss_sum(self, value: float) -> Any:
        """A float64 accumulator of ``BCE * rows`` on the device, starting at ``value``."""

    def accumulate_loss(self, loss_sum: Any, loss: Any, rows: int) -> Any:
        """``loss_sum + loss * rows`` (in place where the framework can); returns the accumulator."""

    def reduce_sum(self, value: Any) -> float:
        """``value`` (an accumulator, a device scalar or a number) summed over all ranks, as a float."""

    def set_lr(self, lr: float) -> None:
        """Set the optimiser's learning rate (every parameter group)."""

    def non_finite_weight(self) -> str | None:
        """The name of the first weight holding NaN or an infinity, or None."""

    # -- evaluation ------------------------------------------------------------------------------
    def predict_split(self, store: Any, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(probabilities, labels, groups or None)`` of a whole split in store order, float64
        (groups: int64, when the batches have a ``group`` column), predicted in shards by every rank
        and gathered, so that each rank gets the whole split. Leaves the model's mode as it was."""

    # -- what metrics.json records about the model -----------------------------------------------
    def parameter_count(self) -> int:
        """The model's trainable weights, as a number of values (the same in both frameworks for the
        same model: the registry's models mirror each other weight for weight)."""

    def peak_device_memory(self) -> int | None:
        """Bytes of accelerator memory in use at the peak of the run so far (the framework's
        allocator statistics; the largest over this process's devices), or None on a CPU."""

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, entries: Mapping[str, Any], *, kept: str) -> None:
        """Write a checkpoint atomically (rank 0 only): ``entries`` (plain values: ``kind``, the
        :class:`RunMeta` entries, and ``progress`` + ``scheduler`` for ``last``, ``epoch`` + ``valid``
        for ``best``) plus the framework's own: a format tag, versions, the weights, and for
        ``last`` the optimiser and RNG states. A full disk is an ``OutputError`` ending with ``kept``."""

    def read_checkpoint(self, path: Path, *, resume: bool) -> Mapping[str, Any]:
        """A checkpoint checked for every entry (``resume``: also those ``--resume`` needs), as a
        mapping that holds the ``entries`` given to :meth:`save_checkpoint` with ``progress`` /
        ``scheduler`` as saved (``progress["epoch_loss_sum"]`` may be a framework scalar: the loop
        reads it with ``float``). ``InputError`` naming the file otherwise. Rank 0 only."""

    def restore(self, payload: Mapping[str, Any], path: Path) -> None:
        """Load the weights (shapes checked first), the optimiser and RNG states of a ``last``
        checkpoint read by :meth:`read_checkpoint` (on every rank). ``InputError`` naming ``path``."""

    def read_weights(self, path: Path) -> Any:
        """The weights of the (best) checkpoint at ``path`` (rank 0; broadcast by the loop)."""

    def set_weights(self, weights: Any, path: Path) -> None:
        """Load weights from :meth:`read_weights` into the model (every rank)."""

    # -- processes -------------------------------------------------------------------------------
    def barrier(self) -> None:
        """Wait for every rank."""

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's picklable ``obj`` on every rank."""

    def open_scalar_writer(self, log_dir: Path, purge_step: int | None) -> Any:
        """A :class:`~ctrkit.training.reporting.ScalarWriter` for TensorBoard (rank 0), or None if
        unavailable. ``purge_step``: on resume, events at and after this step are dropped."""
