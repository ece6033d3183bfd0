"""DeepCTR (TensorFlow) runner for DIN and DIEN (``bench_sequence_speed.py``): the library's models
under ``tf_keras`` ``compile`` + ``fit`` (one epoch, ``shuffle=False`` on the rows in the trainer's
order), TensorFlow with ``intra_op = threads``, ``inter_op = 1``.

Mapping of our models onto ``deepctr.models.DIN``/``DIEN``: ``_deepctr_seq.py`` (inputs, feature
columns, negatives, arguments). DeepCTR specifics:

* DIN: ``AttentionSequencePoolingLayer`` (``LocalActivationUnit`` with Dice on ``[q, k, q - k,
  q * k]``), masked by the zero ids, no softmax -- ours.
* DIEN: both GRUs are DeepCTR's ``DynamicGRU``, TF 1's ``dynamic_rnn`` (a ``while_loop`` over the
  steps, one cell call per step) with its own ``GRUCell`` and ``VecAttGRUCell`` (AUGRU); the
  auxiliary loss is ``-log p(pos) - log(1 - p(neg))`` averaged over every (row, step) with the
  padding steps counted as zeros; the attention scores the states against the raw candidate.
* what it took to run DeepCTR 0.9.4's DIEN under TensorFlow 2.21 + tf_keras (each step was tried in
  turn; every error is a build-time failure of the model):
  1. ``AttributeError: module 'tensorflow.python.ops.array_ops' has no attribute 'stack'``, then
     ``... control_flow_ops' has no attribute 'Assert'`` and ``nest.is_sequence``: its contrib RNN
     code (``deepctr/contrib/rnn_v2.py``, ``contrib/utils.py``) calls ``array_ops.stack``/``unstack``,
     ``control_flow_ops.Assert``/``cond``/``while_loop`` and ``nest.is_sequence``, which TF 2.21
     moved to ``array_ops_stack``, ``control_flow_assert``, ``cond``, ``while_loop`` or renamed
     (``nest.is_nested``). The runner aliases them into their old places before importing DeepCTR
     (the result's ``tf_shim`` lists them; ``bench_sequence_speed.py --no-tf-shim`` runs without);
  2. ``RuntimeError: tf.device does not support functions when eager execution is enabled``: its
     ``dynamic_rnn`` sets a TF 1 variable-scope caching device, which only works in graph mode, as
     the model's own ``get_session().run(global_variables_initializer())`` also expects. The
     ``deepctr-tf`` contender runs with ``tf.compat.v1.disable_eager_execution()`` (``graph_mode``
     in the result), i.e. Keras 2's TF 1 session path, the mode DeepCTR was written for (its DIN
     also runs ~2x faster so than in TF 2 mode); ``deepctr-tf2`` runs in the default TF 2 mode
     (``spec["tf_graph_mode"]`` false), where DIN trains and DIEN fails with this error;
  3. ``AttributeError: 'Adam' object has no attribute 'get_updates'``: graph-mode training needs a
     Keras 2 legacy optimiser, ``tf.keras.optimizers.legacy.Adam`` (same update rule and defaults).
* tracing: as ``run_deepctr_tf.py``, by default two batches are fitted untimed first (graph
  tracing), then the initial weights and zeroed optimiser variables are restored and the epoch is
  timed (``untimed_warmup_seconds``); Keras' batch callbacks run ahead of the work, so no steady rate.
"""

from __future__ import annotations

import time

import _common

spec = _common.read_spec()
tf = _common.start_deepctr_tf(spec)

import _deepctr_seq  # noqa: E402
import numpy as np  # noqa: E402

shimmed = []
if spec.get("tf_shim", True):
    # DeepCTR's contrib RNN code (DIEN's DynamicGRU, deepctr/contrib/rnn_v2.py) calls functions that
    # TF 2.21 moved to other modules of tensorflow.python.ops (same functions, new homes); without
    # these aliases DIEN fails to build (see the module docstring).
    import importlib  # noqa: E402

    ops = "tensorflow.python.ops."
    for module, name, home, new_name in (
            (ops + "array_ops", "stack", ops + "array_ops_stack", "stack"),
            (ops + "array_ops", "unstack", ops + "array_ops_stack", "unstack"),
            (ops + "control_flow_ops", "Assert", ops + "control_flow_assert", "Assert"),
            (ops + "control_flow_ops", "cond", ops + "cond", "cond"),
            (ops + "control_flow_ops", "while_loop", ops + "while_loop", "while_loop"),
            ("tensorflow.python.util.nest", "is_sequence", "tensorflow.python.util.nest", "is_nested")):
        target = importlib.import_module(module)
        if not hasattr(target, name):
            setattr(target, name, getattr(importlib.import_module(home), new_name))
            shimmed.append(f"{module}.{name} = {home}.{new_name}")

graph_mode = spec.get("tf_graph_mode", True)
if graph_mode:  # see the module docstring: DeepCTR's DIEN builds its GRUs with TF 1 variable scopes
    tf.compat.v1.disable_eager_execution()

from deepctr.feature_column import DenseFeat, SparseFeat, VarLenSparseFeat  # noqa: E402
from deepctr.models import DIEN, DIN  # noqa: E402

rows, model = _deepctr_seq.build(spec, {"SparseFeat": SparseFeat, "DenseFeat": DenseFeat, "VarLenSparseFeat": VarLenSparseFeat,
                                        "DIN": DIN, "DIEN": DIEN})
# graph mode trains through optimizer.get_updates, which only Keras 2's legacy optimisers have
adam = tf.keras.optimizers.legacy.Adam if graph_mode else tf.keras.optimizers.Adam
model.compile(adam(learning_rate=spec["lr"]), "binary_crossentropy")

batch_size = spec["batch_size"]
x_train, y_train = rows["train_x"], rows["train_y"]
n = len(y_train)
warmup_seconds = None
if spec.get("tf_warmup", True):
    start = time.perf_counter()
    initial = model.get_weights()
    warm = min(n, 2 * batch_size)
    model.fit({k: v[:warm] for k, v in x_train.items()}, y_train[:warm], batch_size=batch_size, epochs=1, verbose=0,
              shuffle=False)
    model.set_weights(initial)
    variables = model.optimizer.variables
    variables = variables() if callable(variables) else variables
    # batch_set_value works in graph mode too (where variable.assign would only build an op)
    tf.keras.backend.batch_set_value([(v, np.zeros(v.shape, v.dtype.as_numpy_dtype)) for v in variables])
    warmup_seconds = time.perf_counter() - start
rss_before = _common.own_rss_mb()
start = time.perf_counter()
model.fit(x_train, y_train, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
seconds = time.perf_counter() - start

probs = model.predict(rows["test_x"], batch_size=16384, verbose=0)
_common.save_predictions(spec, probs)
_common.emit(_common.result_base(spec, n, seconds, _common.StepClock(), rss_before, params=int(model.count_params()),
                                 library="deepctr " + __import__("deepctr").__version__, tensorflow=tf.__version__,
                                 untimed_warmup_seconds=warmup_seconds, tf_shim=shimmed,
                                 graph_mode=graph_mode,
                                 optimizer_iterations=int(tf.keras.backend.get_value(model.optimizer.iterations))))
