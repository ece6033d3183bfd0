"""ctrkit TensorFlow runner: ``ctrkit.tensorflow.trainer.Trainer(model, TrainConfig(...)).fit(store)``,
one epoch, the way ``ctrkit train --framework tf`` runs it (``fit_from_config``: the trainer's
thread setting, intra- and inter-op pools of ``threads`` threads; the default strategy; the model
built under the precision policy, ``mixed_bfloat16`` for bf16).

Same rows, order and rate as ``run_ours.py`` (see ``_ours.py``): the rate is the trainer's own rate
of the training loop, and includes the tracing of the compiled step in the first step (our trainer
has no untimed warm-up; ``first_step_seconds`` shows its cost and ``steady_rows_per_s`` the rate
without it).
"""

from __future__ import annotations

import os
import tempfile
import time

import _common

spec = _common.read_spec()
_common.set_thread_env(spec["threads"])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _ours  # noqa: E402
import tensorflow as tf  # noqa: E402

from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.data.store import Store  # noqa: E402
from ctrkit.registry import build_tf_model  # noqa: E402
from ctrkit.tensorflow.devices import make_strategy, precision_policy  # noqa: E402
from ctrkit.tensorflow.trainer import Trainer, set_seed, set_threads  # noqa: E402

store = Store(spec["store"])

with tempfile.TemporaryDirectory(prefix="ctrkit-bench-tf-") as scratch:
    config, full_rows = _ours.train_config(spec, store, os.path.join(scratch, "run"), "tf")
    warning = set_threads(config.threads)
    if warning:
        raise SystemExit(warning)
    strategy = make_strategy(config.gpu_ids, config.cpu_processes)
    set_seed(config.seed)
    with strategy.scope(), precision_policy(config.precision):
        model, ignored = build_tf_model(config.model, store.schema, config.hparams())
    trainer = Trainer(model, config, schema=store.schema, strategy=strategy)
    clock = _ours.attach_clock(trainer, spec["batch_size"], full_rows)
    rss_before = _common.own_rss_mb()
    clock.start = start = time.perf_counter()
    metrics = trainer.fit(store)
    wall = time.perf_counter() - start  # includes validation/test/checkpoints: not the rate

    probs = trainer.predict(BatchReader(store, "test", 16384))
    _common.save_predictions(spec, probs)
    _common.emit(_ours.result(spec, metrics, clock, rss_before, wall, params=int(model.count_params()),
                              tensorflow=tf.__version__, ignored_hparams=ignored,
                              threads=[tf.config.threading.get_intra_op_parallelism_threads(),
                                       tf.config.threading.get_inter_op_parallelism_threads()]))
