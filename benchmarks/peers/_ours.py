"""Shared by ctrkit's two runners (``run_ours.py``: PyTorch, ``run_ours_tf.py``: TensorFlow), which
drive the trainers the same way: the ``TrainConfig`` of the spec, the per-step clock on the
trainer's ``step_hook``, and the trainer's own training-loop rate as the result's ``rows/s``.

Imports ctrkit but no framework (the runners import theirs first, after the thread settings).
"""

from __future__ import annotations

from typing import Any

import _common

from ctrkit.config import MODEL_HPARAMS, TrainConfig
from ctrkit.data.store import Store


def train_config(spec: dict[str, Any], store: Store, save_dir: str, framework: str) -> tuple[TrainConfig, int]:
    """The spec as a ``TrainConfig`` of one epoch, and the rows of the full train split.

    With ``train_rows`` below the split's size the run stops after ``train_rows / batch_size``
    steps (``max_steps``), i.e. on exactly the first ``train_rows`` rows of the trainer's order,
    the order ``bench_models.py`` dumped for the peers.
    """
    hp = dict(spec["hparams"])
    full_rows = store.split("train").rows
    train_rows = int(spec["train_rows"])
    max_steps = 0 if train_rows >= full_rows else train_rows // spec["batch_size"]
    config = TrainConfig(
        model=spec.get("registry_model", spec["model"]), framework=framework, data=spec["store"], epochs=1,
        batch_size=spec["batch_size"], optimizer="Adam", lr=spec["lr"], model_save_dir=save_dir, seed=spec["seed"],
        precision=spec["precision"], xla=bool(spec.get("xla", False)),
        threads=spec["threads"], num_workers=0, init=spec.get("init", "xavier_normal"), max_steps=max_steps,
        log_every=10**9, patience=1,
        **{k: v for k, v in hp.items() if k in MODEL_HPARAMS},
        model_args={k: v for k, v in hp.items() if k not in MODEL_HPARAMS},
    ).validate()
    return config, full_rows


def attach_clock(trainer: Any, batch_size: int, full_rows: int) -> _common.StepClock:
    """A step clock ticked by the trainer's ``step_hook`` after every step."""
    clock = _common.StepClock()
    trainer.step_hook = lambda step: clock.tick(min(batch_size, full_rows - (step - 1) * batch_size))
    return clock


def result(spec: dict[str, Any], metrics: dict[str, Any], clock: _common.StepClock, rss_before: float,
           fit_wall: float, **extra: Any) -> dict[str, Any]:
    """The runner's result: rows/s = the trainer's own rate of the training loop (reading batches,
    forward, backward, optimiser; not validation, test or checkpoints at the epoch's end)."""
    rows_done = sum(clock.rows)
    rate = metrics["history"][0]["rows_per_s"] if metrics["history"] else metrics["rows_per_s"]
    return _common.result_base(spec, rows_done, rows_done / rate, clock, rss_before, library="ctrkit",
                               precision=spec["precision"], fit_wall_seconds=fit_wall,
                               trainer_test_auc=(metrics.get("test") or {}).get("auc"),
                               stopped=metrics.get("stopped"), **extra)
