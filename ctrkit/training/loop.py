"""The epoch loop, the same for every framework: :class:`TrainingLoop` drives a :class:`Backend`.

One run::

    open the run directory (rank 0: create, lock, tidy)   rundir.open_run_directory
    backend.prepare(store)                                 seed, threads, model, optimiser
    --resume: restore last (weights, optimiser, RNG; progress and schedule here)
    backend.start(store)                                   e.g. wrap the model for DDP
    for each epoch:
        for each batch from backend.train_batches(...):
            loss = backend.train_step(batch)               the BCE, a device scalar (no host sync)
            every log_every steps: progress bar, TensorBoard, divergence check
            a signal, max_steps or checkpoint_every: save last
        validate (backend.predict_split), policy: best / plateau / early stop
        save best (if improved) and last, metrics.json
    load the best weights, test metrics and predictions (test_predictions.npz), metrics.json,
    the hyper-parameters and final scores for TensorBoard's HParams plugin

Rank 0 alone writes files and prints; every rank runs the loop, and the collectives
(``reduce_sum``, ``barrier``, ``broadcast_object``) are called by all ranks at the same points.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ctrkit.data.batches import BatchReader
from ctrkit.data.encoder import copy_encoder_to_run_dir
from ctrkit.errors import ConfigError, CtrkitError, InputError
from ctrkit.fileio import write_json_atomic
from ctrkit.metrics import evaluation_metrics
from ctrkit.training import reporting
from ctrkit.training.backend import Backend, RunMeta
from ctrkit.training.errors import TrainingDivergedError, TrainingInterrupted
from ctrkit.training.policy import MONITORS, EpochPolicy, PlateauSchedule, high_loss_warning
from ctrkit.training.progress import Progress
from ctrkit.training.rundir import checkpoint_name, check_resumable, open_run_directory
from ctrkit.training.signals import StopSignals


class TrainingLoop:
    """Train one model through ``backend``, with the policy of ``config``.

    Args:
        backend: the framework's side (:class:`~ctrkit.training.backend.Backend`).
        config: the validated :class:`~ctrkit.config.TrainConfig`.
        meta: what checkpoints and ``metrics.json`` record about the model.
        step_hook: called with the step number after every step (tests use it to interrupt runs).
        directory_ready: the run directory is already created, tidied and locked (by the process
            that launched this rank).
        policy: defaults to :meth:`EpochPolicy.from_config`.

    After :meth:`run`, ``progress`` and ``schedule`` hold the final state.
    """

    def __init__(self, backend: Backend, config: Any, meta: RunMeta, *,
                 step_hook: Callable[[int], None] | None = None, directory_ready: bool = False,
                 policy: EpochPolicy | None = None):
        self.backend = backend
        self.config = config
        self.meta = meta
        self.step_hook = step_hook
        self.directory_ready = directory_ready
        self.policy = policy or EpochPolicy.from_config(config)
        self.progress = Progress(best_score=self.policy.initial_best())
        self.schedule: PlateauSchedule = self.policy.schedule(config.lr)
        self.signals = StopSignals()
        self.writer: reporting.ScalarWriter | None = None
        self.loss_sum: Any = None  # the epoch's running BCE * rows, a backend accumulator
        self.saved_last = ""  # where the last checkpoint on disk stands ("epoch 2, step 30")
        self.saved_best = 0  # epoch of the best checkpoint on disk

    # -- paths and messages --------------------------------------------------------------------
    def path(self, kind: str) -> Path:
        return self.config.save_dir / checkpoint_name(self.backend.framework, kind)

    def log(self, message: str) -> None:
        if self.backend.is_main:
            print(message, flush=True)

    def warn(self, message: str) -> None:
        if self.backend.is_main:
            print(message, file=sys.stderr, flush=True)

    def on_main(self, action: Callable[[], Any]) -> Any:
        """``action()`` on rank 0 and its result on every rank; a user error there is raised on every rank.

        (Raised on rank 0 alone, it would leave the other ranks waiting in their next collective.)
        """
        backend = self.backend
        result, failure = None, None
        if backend.is_main:
            try:
                result = action()
            except CtrkitError as exc:
                failure = exc
        if backend.world_size > 1:
            result, failure = backend.broadcast_object((result, failure))
        if failure is not None:
            raise failure
        return result

    # -- the run -----------------------------------------------------------------------------
    def run(self, store: Any) -> dict[str, Any]:
        """Train on ``store``; returns the final ``metrics.json`` content."""
        cfg = self.config
        with contextlib.ExitStack() as stack:
            if not self.directory_ready:
                self.on_main(lambda: stack.enter_context(
                    open_run_directory(cfg.save_dir, resume=cfg.resume, overwrite=cfg.overwrite, log=self.log)))
            return self._run_in_directory(store)

    def _run_in_directory(self, store: Any) -> dict[str, Any]:
        cfg, backend = self.config, self.backend
        backend.prepare(store)
        # the dataset's encoder beside the checkpoints: `ctrkit predict` on raw rows needs no store
        self.on_main(lambda: copy_encoder_to_run_dir(store, cfg.save_dir))
        self.progress = Progress(best_score=self.policy.initial_best())
        self.schedule = self.policy.schedule(cfg.lr)
        self.loss_sum = backend.new_loss_sum(0.0)
        self.saved_last, self.saved_best = "", 0
        if cfg.resume:
            self._restore(self.path("last"))
        backend.start(store)
        reader = train_reader(store, cfg, backend)
        if backend.is_main:
            self.writer = backend.open_scalar_writer(cfg.save_dir / reporting.TENSORBOARD,
                                                     self.progress.step if cfg.resume else None)
        self.signals = StopSignals()  # a fresh one per run: an earlier run's signal is spent
        try:
            # SIGINT/SIGTERM end a single-process run cleanly after a step; with several processes
            # all would have to agree on that step (a collective per step): there they keep their defaults
            with self.signals if backend.world_size == 1 else contextlib.nullcontext():
                stopped, rows_per_s = self._epochs(store, reader)
            return self._finish(store, stopped, rows_per_s)
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
            backend.stop()

    def _epochs(self, store: Any, reader: BatchReader) -> tuple[str, float]:
        """Train epoch after epoch; returns why training stopped and the mean training rows/s."""
        cfg, progress = self.config, self.progress
        if progress.stopped:
            return progress.stopped, 0.0
        rows_total, seconds_total = 0, 0.0
        while progress.epoch < cfg.epochs:
            completed, rows, seconds, train_loss = self._train_epoch(reader)
            rows_total, seconds_total = rows_total + rows, seconds_total + seconds
            if not completed:
                return "max_steps", rows_total / max(seconds_total, 1e-9)
            self._end_epoch(store, train_loss, rows / max(seconds, 1e-9), seconds)
            if self.signals.received is not None:  # arrived during validation: last is written
                raise self._interrupted()
            if progress.stopped:
                break
            if cfg.max_steps and progress.step >= cfg.max_steps:
                progress.stopped = "max_steps"
                break
        return progress.stopped or "completed", rows_total / max(seconds_total, 1e-9)

    def _train_epoch(self, reader: BatchReader) -> tuple[bool, int, float, float]:
        """One (possibly resumed) epoch; returns (completed, rows, seconds, mean train loss)."""
        cfg, backend, progress = self.config, self.backend, self.progress
        total = len(reader)
        backend.begin_epoch()
        batches = backend.train_batches(reader, progress.epoch, progress.batch,
                                        ignore_signals=self.signals.installed)
        bar = reporting.progress_bar(total, progress.batch, f"epoch {progress.epoch + 1}/{cfg.epochs}",
                                     backend.is_main)
        loss_sum = self.loss_sum
        rows, last_logged, start = 0, progress.batch, time.perf_counter()
        try:
            for batch in batches:
                loss = backend.train_step(batch)
                n = backend.batch_rows(batch)
                loss_sum = backend.accumulate_loss(loss_sum, loss, n)  # no host sync
                rows += n
                progress.epoch_loss_rows += n
                progress.step += 1
                progress.batch += 1
                if progress.step % cfg.log_every == 0:
                    self._check_loss(loss_sum)  # the same host sync as the log's
                    self._log_step(bar, loss, progress.batch - last_logged, rows, start)
                    last_logged = progress.batch
                if self.step_hook is not None:
                    self.step_hook(progress.step)
                if self.signals.received is not None:
                    self.loss_sum = loss_sum
                    self._check_loss(loss_sum)
                    self._save_last()
                    raise self._interrupted()
                if cfg.max_steps and progress.step >= cfg.max_steps and progress.batch < total:
                    self.loss_sum = loss_sum
                    self._check_loss(loss_sum)
                    self._save_last()
                    return False, rows * backend.world_size, time.perf_counter() - start, float("nan")
                if cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0 and progress.batch < total:
                    self.loss_sum = loss_sum
                    self._check_loss(loss_sum)
                    self._save_last()
        finally:
            self.loss_sum = loss_sum
            bar.close()
        seconds = time.perf_counter() - start
        loss_total, loss_rows = backend.reduce_sum(loss_sum), backend.reduce_sum(progress.epoch_loss_rows)
        train_loss = loss_total / max(loss_rows, 1.0)
        if not math.isfinite(train_loss):
            raise self._diverged(f"the epoch's training loss is {train_loss}")
        return True, rows * backend.world_size, seconds, train_loss

    def _log_step(self, bar: Any, loss: Any, batches: int, rows: int, start: float) -> None:
        """Every ``log_every`` steps: one host sync for the bar's loss and TensorBoard."""
        if bar.disable and self.writer is None:
            return
        value = float(loss)
        speed = rows * self.backend.world_size / max(time.perf_counter() - start, 1e-9)
        bar.update(batches)
        bar.set_postfix(loss=f"{value:.4f}", rows_s=f"{speed:,.0f}", refresh=False)
        reporting.write_scalars(self.writer, {"train/loss": value}, self.progress.step)

    def _end_epoch(self, store: Any, train_loss: float, rows_per_s: float, seconds: float) -> None:
        """Validate, update best/plateau/early-stopping state, log, checkpoint."""
        cfg, progress = self.config, self.progress
        valid = self.evaluate(store, "valid")
        self._check_monitored(valid)
        lr = self.schedule.lr
        epoch = progress.epoch + 1
        warning = high_loss_warning(epoch, train_loss, store.splits["train"].ctr, lr)
        if warning:
            self.warn(warning)
        improved = self.policy.end_epoch(progress, valid, epoch)
        new_lr = self.schedule.step(valid[self.policy.monitor])
        if new_lr != lr:
            self.backend.set_lr(new_lr)
        record = reporting.epoch_record(epoch=epoch, steps=progress.step, train_loss=train_loss, valid=valid,
                                        lr=lr, seconds=seconds, rows_per_s=rows_per_s, improved=improved)
        progress.history.append(record)
        progress.epoch, progress.batch, progress.epoch_loss_rows = epoch, 0, 0
        self.loss_sum = self.backend.new_loss_sum(0.0)
        self.log(reporting.epoch_line(record, cfg.epochs, early_stop=bool(progress.stopped)))
        reporting.write_scalars(self.writer, reporting.epoch_scalars(record, rows_per_s), epoch)
        if improved:
            self._save_best(epoch, valid)
        self._save_last()
        self._write_metrics(self.summary("running", 0.0, None))

    def _finish(self, store: Any, stopped: str, rows_per_s: float) -> dict[str, Any]:
        """Test metrics and predictions of the best weights; final ``metrics.json``; the HParams."""
        self._load_best()
        test = None
        if "test" in store.splits and store.splits["test"].labeled and store.splits["test"].rows:
            probs, labels, groups = self.backend.predict_split(store, "test")
            test = evaluation_metrics(labels, probs, groups)
            self.log(reporting.test_line(test, self.progress.best_epoch))
            reporting.write_scalars(self.writer, reporting.test_scalars(test), self.progress.best_epoch)
            self.on_main(lambda: reporting.write_test_predictions(self.config.save_dir, probs, labels, groups))
        summary = self.summary(stopped, rows_per_s, test)
        self._write_metrics(summary)
        if self.writer is not None:  # TensorBoard is on: the run's row of the HParams table
            reporting.write_hparams(self.config.save_dir / reporting.TENSORBOARD,
                                    reporting.hparams_values(summary["config"], summary["hparams"]),
                                    reporting.hparams_metrics(summary["best_valid"], test), self.progress.epoch)
        return summary

    def _check_monitored(self, valid: dict[str, Any]) -> None:
        """ConfigError when the validation metrics lack the monitored one (gAUC without user ids)."""
        monitor = self.policy.monitor
        if monitor not in valid:
            raise ConfigError(f"--monitor {monitor}: the validation split reports {', '.join(m for m in MONITORS if m in valid)} but not "
                              f"{monitor}; gAUC needs a store with a user (group) column, or use --monitor auc")

    def evaluate(self, store: Any, split: str) -> dict[str, Any]:
        """Metrics of a split, predicted in shards by all ranks and gathered (the same on every rank)."""
        probs, labels, groups = self.backend.predict_split(store, split)
        return evaluation_metrics(labels, probs, groups)

    # -- divergence and interruption -----------------------------------------------------------
    def _check_loss(self, loss_sum: Any) -> None:
        """TrainingDivergedError once the epoch's running loss sum (summed over ranks) is not finite.

        A sum of non-negative BCE terms is finite exactly when every term was, so one read-back
        covers every step since the epoch began.
        """
        total = self.backend.reduce_sum(loss_sum)
        if not math.isfinite(total):
            raise self._diverged(f"the training loss became {total}")

    def _check_weights(self) -> None:
        """TrainingDivergedError before a checkpoint would store NaN or infinite weights."""
        bad = self.backend.non_finite_weight()
        if bad is not None:
            raise self._diverged(f"weight {bad} became NaN or infinite")

    def _diverged(self, what: str) -> TrainingDivergedError:
        """The error that ends a diverged run (``metrics.json`` says ``stopped: diverged``)."""
        cfg = self.config
        self._write_metrics(self.summary("diverged", 0.0, None))
        kept = self._kept_checkpoints()
        kept = f"{kept} in {cfg.save_dir} keep the last finite weights" if kept else "no checkpoint was written"
        return TrainingDivergedError(
            f"training diverged: {what} by {self.progress.position()} (--optimizer {cfg.optimizer} --lr {cfg.lr:g}); "
            f"{kept}; lower --lr and train again"
        )

    def _interrupted(self) -> TrainingInterrupted:
        """The error that ends a run stopped by a signal, once the last checkpoint is written."""
        self._write_metrics(self.summary("interrupted", 0.0, None))
        return TrainingInterrupted(
            f"interrupted by {self.signals.name} at {self.progress.position()}; {self.path('last').name} saved; "
            "continue with --resume",
            self.signals.received,
        )

    def _kept_checkpoints(self) -> str:
        """``last.pt (epoch 2, step 30) and best.pt (epoch 1)``: this run's checkpoints on disk, or ""."""
        parts = [f"{self.path('last').name} ({self.saved_last})"] if self.saved_last else []
        parts += [f"{self.path('best').name} (epoch {self.saved_best})"] if self.saved_best else []
        return " and ".join(parts)

    def _kept_note(self) -> str:
        """What a failed checkpoint write leaves, for :class:`OutputError` messages."""
        kept = self._kept_checkpoints()
        return f"the previous {kept} are intact" if kept else "no checkpoint of this run had been written yet"

    # -- checkpoints ---------------------------------------------------------------------------
    def _entries(self, kind: str) -> dict[str, Any]:
        """The neutral entries of a checkpoint; the backend adds its weights and state."""
        return {"kind": kind, **self.meta.entries()}

    def _save_last(self) -> None:
        """``last``: everything needed to continue exactly from this step (called on all ranks).

        The running loss of the epoch is saved summed over ranks; on resume rank 0 carries it.
        """
        backend = self.backend
        self._check_weights()  # the same on every rank: the ranks keep the weights equal
        loss_sum = backend.reduce_sum(self.loss_sum)
        loss_rows = backend.reduce_sum(self.progress.epoch_loss_rows)
        if backend.is_main:
            entries = self._entries("last")
            entries.update(
                progress=self.progress.to_state(epoch_loss_sum=loss_sum, epoch_loss_rows=int(loss_rows),
                                                world_size=backend.world_size),
                scheduler=self.schedule.state_dict(),
            )
            backend.save_checkpoint(self.path("last"), entries, kept=self._kept_note())
        self.saved_last = self.progress.position()
        backend.barrier()

    def _save_best(self, epoch: int, valid: Mapping[str, Any]) -> None:
        backend = self.backend
        self._check_weights()
        if backend.is_main:
            entries = self._entries("best")
            entries.update(epoch=epoch, valid={k: float(v) for k, v in valid.items()})
            backend.save_checkpoint(self.path("best"), entries, kept=self._kept_note())
        self.saved_best = epoch
        backend.barrier()

    def _restore(self, path: Path) -> None:
        """Continue from ``last``: the backend's weights, optimiser and RNG; progress and schedule here."""
        backend = self.backend
        payload = self.on_main(lambda: backend.read_checkpoint(path, resume=True))
        check_resumable(payload, path, config=self.config, hparams=self.meta.hparams, schema=self.meta.schema,
                        world_size=backend.world_size)
        backend.restore(payload, path)
        saved = dict(payload["progress"])
        loss_sum = float(saved.pop("epoch_loss_sum"))
        if not backend.is_main:  # rank 0 carries the ranks' summed running loss
            loss_sum, saved["epoch_loss_rows"] = 0.0, 0
        try:
            self.schedule.load_state_dict(payload["scheduler"])
            progress = Progress.from_state(saved)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"{path}: its training state (optimizer, scheduler, progress or RNG) is damaged: "
                             f"{_first_line(exc)}") from None
        backend.set_lr(self.schedule.lr)
        self.loss_sum = backend.new_loss_sum(loss_sum)
        self.progress = progress
        self.saved_last, self.saved_best = progress.position(), progress.best_epoch
        self.log(f"resumed from {path}: epoch {progress.epoch + 1}, batch {progress.batch}, step {progress.step}")

    def _load_best(self) -> None:
        """Best weights (from the best checkpoint) on every rank; current weights if none."""
        path = self.path("best")
        state = self.on_main(
            lambda: self.backend.read_weights(path) if self.progress.best_epoch and path.exists() else None)
        if state is not None:
            self.backend.set_weights(state, path)

    # -- metrics.json ---------------------------------------------------------------------------
    def summary(self, stopped: str, rows_per_s: float, test: Mapping[str, Any] | None) -> dict[str, Any]:
        return reporting.run_summary(
            model=self.meta.model_name, hparams=self.meta.hparams, stopped=stopped, progress=self.progress,
            rows_per_s=rows_per_s, test=test, world_size=self.backend.world_size,
            device=self.backend.device_name, config=self.config.to_dict(),
            parameters=self.backend.parameter_count(), peak_device_memory_bytes=self.backend.peak_device_memory(),
        )

    def _write_metrics(self, summary: Mapping[str, Any]) -> None:
        if self.backend.is_main:
            write_json_atomic(self.config.save_dir / reporting.METRICS, dict(summary), flag="--model_save_dir")


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type (``EOFError()`` has no text)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def train_reader(store: Any, config: Any, backend: Backend) -> BatchReader:
    """The training reader of ``backend``'s process: the even shard ``rank`` of ``world_size``
    with ``batch_size / world_size`` rows a step, or, for a backend whose process feeds several
    replicas (TF's ``MirroredStrategy``: :meth:`~ctrkit.training.backend.Backend.train_shard`),
    the even shard of its first replica among all replicas. Its length is then the number of
    steps the replicas' own shards give, which can be one less than that of one shard of the
    same rows (a global batch that only the leftover rows would have filled)."""
    shard = getattr(backend, "train_shard", None)
    rank, world = shard() if shard is not None else (backend.rank, backend.world_size)
    return BatchReader(store, "train", config.batch_size // world, shuffle=True, seed=config.seed,
                       rank=rank, world_size=world, even_shards=True, drop_last=False)
