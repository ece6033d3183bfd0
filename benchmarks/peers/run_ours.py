"""ctrkit runner: ``ctrkit.pytorch.trainer.Trainer(model, TrainConfig(...)).fit(store)``, one epoch.

The trainer trains on the store's ``train`` split in its own shuffled order (``seed``); with
``train_rows`` below the split's size it stops after ``train_rows / batch_size`` steps
(``max_steps``), i.e. on exactly the first ``train_rows`` rows of that order, which is the order
``bench_models.py`` dumped for the peers. The rate is the trainer's own (training loop only:
reading batches, forward, backward, optimiser; not validation, test or checkpoints at epoch end).
The test predictions are written for the orchestrator's AUC.
"""

from __future__ import annotations

import os
import tempfile
import time

import _common

spec = _common.read_spec()
_common.set_thread_env(spec["threads"])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ctrkit.config import MODEL_HPARAMS, TrainConfig  # noqa: E402
from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.data.store import Store  # noqa: E402
from ctrkit.pytorch.trainer import Trainer, set_seed  # noqa: E402
from ctrkit.registry import build_torch_model  # noqa: E402

torch.set_num_interop_threads(1)
store = Store(spec["store"])
hp = dict(spec["hparams"])
full_rows = store.split("train").rows
train_rows = int(spec["train_rows"])
max_steps = 0 if train_rows >= full_rows else train_rows // spec["batch_size"]

with tempfile.TemporaryDirectory(prefix="ctrkit-bench-") as scratch:  # holds the run directory's lock file too
    save_dir = os.path.join(scratch, "run")
    config = TrainConfig(
        model=spec["model"], data=spec["store"], epochs=1, batch_size=spec["batch_size"], optimizer="Adam",
        lr=spec["lr"], model_save_dir=save_dir, seed=spec["seed"], precision=spec["precision"],
        threads=spec["threads"], num_workers=0, init=spec.get("init", "xavier_normal"), max_steps=max_steps,
        log_every=10**9, patience=1,
        **{k: v for k, v in hp.items() if k in MODEL_HPARAMS},
        model_args={k: v for k, v in hp.items() if k not in MODEL_HPARAMS},
    ).validate()
    set_seed(config.seed)
    model, ignored = build_torch_model(config.model, store.schema, config.hparams())
    trainer = Trainer(model, config, schema=store.schema)
    clock = _common.StepClock()
    batch = spec["batch_size"]
    trainer.step_hook = lambda step: clock.tick(min(batch, full_rows - (step - 1) * batch))
    rss_before = _common.own_rss_mb()
    clock.start = start = time.perf_counter()
    metrics = trainer.fit(store)
    wall = time.perf_counter() - start  # includes validation/test/checkpoints: not the rate

    rows_done = sum(clock.rows)
    rate = metrics["history"][0]["rows_per_s"] if metrics["history"] else metrics["rows_per_s"]
    probs = trainer.predict(BatchReader(store, "test", 16384))
    _common.save_predictions(spec, probs)
    result = _common.result_base(spec, rows_done, rows_done / rate, clock, rss_before,
                                 params=sum(p.numel() for p in model.parameters()), library="ctrkit",
                                 torch=torch.__version__, precision=spec["precision"], fit_wall_seconds=wall,
                                 trainer_test_auc=(metrics.get("test") or {}).get("auc"), ignored_hparams=ignored,
                                 stopped=metrics.get("stopped"))
    _common.emit(result)
