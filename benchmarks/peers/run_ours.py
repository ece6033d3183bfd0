"""ctrkit runner: ``ctrkit.pytorch.trainer.Trainer(model, TrainConfig(...)).fit(store)``, one epoch.

The trainer trains on the store's ``train`` split in its own shuffled order (``seed``); with
``train_rows`` below the split's size it stops after ``train_rows / batch_size`` steps
(``max_steps``), i.e. on exactly the first ``train_rows`` rows of that order, which is the order
``bench_models.py`` dumped for the peers. The rate is the trainer's own (training loop only:
reading batches, forward, backward, optimiser; not validation, test or checkpoints at epoch end).
The test predictions are written for the orchestrator's AUC. See ``_ours.py``.
"""

from __future__ import annotations

import os
import tempfile
import time

import _common

spec = _common.read_spec()
_common.set_thread_env(spec["threads"])

import _ours  # noqa: E402
import torch  # noqa: E402

from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.data.store import Store  # noqa: E402
from ctrkit.pytorch.trainer import Trainer, set_seed  # noqa: E402
from ctrkit.registry import build_torch_model  # noqa: E402

torch.set_num_interop_threads(1)
store = Store(spec["store"])

with tempfile.TemporaryDirectory(prefix="ctrkit-bench-") as scratch:  # holds the run directory's lock file too
    config, full_rows = _ours.train_config(spec, store, os.path.join(scratch, "run"), "torch")
    set_seed(config.seed)
    model, ignored = build_torch_model(config.model, store.schema, config.hparams())
    trainer = Trainer(model, config, schema=store.schema)
    clock = _ours.attach_clock(trainer, spec["batch_size"], full_rows)
    rss_before = _common.own_rss_mb()
    clock.start = start = time.perf_counter()
    metrics = trainer.fit(store)
    wall = time.perf_counter() - start  # includes validation/test/checkpoints: not the rate

    probs = trainer.predict(BatchReader(store, "test", 16384))
    _common.save_predictions(spec, probs)
    _common.emit(_ours.result(spec, metrics, clock, rss_before, wall, params=sum(p.numel() for p in model.parameters()),
                              torch=torch.__version__, ignored_hparams=ignored))
