"""DeepCTR (TensorFlow) runner: the library's models under ``tf_keras`` ``compile`` + ``fit``.

TensorFlow runs with ``intra_op = threads`` and ``inter_op = 1``.

``fit`` traces and optimises the training graph in its first step, which takes several seconds
(8 s of a 14 s DeepFM epoch here). That is a one-time cost, not training speed, so by default
(``spec["tf_warmup"]``) the runner first fits two batches, then restores the initial weights and
zeroes the optimiser's variables (step counter and moments), and times a second ``fit`` over the
whole epoch, which reuses the traced function: the model is trained on exactly the epoch's rows
from its initial state, and the rate excludes tracing (``untimed_warmup_seconds`` reports it).

Keras calls ``on_train_batch_end`` before a step's work has finished, so the per-step clock of
this runner is not a measure of the step rate; ``steady_rows_per_s`` is reported as null.
"""

from __future__ import annotations

import time

import _common

spec = _common.read_spec()
tf = _common.start_deepctr_tf(spec)

from deepctr.feature_column import SparseFeat  # noqa: E402
from deepctr.models import DCN, ONN, AutoInt, DCNMix, DeepFM, FiBiNET, xDeepFM  # noqa: E402

rows = _common.load_rows(spec)
names = rows["field_names"]
hp = spec["hparams"]
model = _common.build_deepctr_model(
    spec, rows, SparseFeat,
    {"DeepFM": DeepFM, "DCN": DCN, "xDeepFM": xDeepFM, "AutoInt": AutoInt, "DCNMix": DCNMix, "FiBiNET": FiBiNET,
     "ONN": ONN}, "DeepCTR",
    autoint_kwargs={"att_embedding_size": hp.get("attention_dim"), "l2_reg_linear": 0.0},  # used for autoint+ only
    onn_kwargs={"use_bn": False, "reduce_sum": False},  # no BatchNorm on the products (DeepCTR's default has one)
)

model.compile(tf.keras.optimizers.Adam(learning_rate=spec["lr"]), "binary_crossentropy")
clock = _common.StepClock()
batch_size = spec["batch_size"]
n = len(rows["train_y"])


class Timer(tf.keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        clock.tick(min(batch_size, n - batch * batch_size))


x_train = {name: rows["train_x"][:, j] for j, name in enumerate(names)}
warmup_seconds = None
if spec.get("tf_warmup", True):
    start = time.perf_counter()
    initial = model.get_weights()
    warm = min(n, 2 * batch_size)
    model.fit({k: v[:warm] for k, v in x_train.items()}, rows["train_y"][:warm], batch_size=batch_size, epochs=1,
              verbose=0, shuffle=False)
    model.set_weights(initial)
    variables = model.optimizer.variables
    for variable in variables() if callable(variables) else variables:
        variable.assign(tf.zeros_like(variable))
    warmup_seconds = time.perf_counter() - start
rss_before = _common.own_rss_mb()
clock.start = start = time.perf_counter()
model.fit(x_train, rows["train_y"], batch_size=batch_size, epochs=1, verbose=0, shuffle=True, callbacks=[Timer()])
seconds = time.perf_counter() - start
clock.times.clear()  # see the module docstring: not a step clock under Keras

x_test = {name: rows["test_x"][:, j] for j, name in enumerate(names)}
probs = model.predict(x_test, batch_size=16384, verbose=0)
_common.save_predictions(spec, probs)
_common.emit(_common.result_base(spec, n, seconds, clock, rss_before, params=int(model.count_params()),
                                 library="deepctr " + __import__("deepctr").__version__, tensorflow=tf.__version__,
                                 untimed_warmup_seconds=warmup_seconds,
                                 optimizer_iterations=int(model.optimizer.iterations.numpy())))
