"""DeepCTR-Torch runner for DIN and DIEN (``bench_sequence_speed.py``): the library's own
``compile`` + ``fit`` (one epoch, ``shuffle=False`` on the rows in the trainer's order), timed.

Mapping of our models onto ``deepctr_torch.models.DIN``/``DIEN``: ``_deepctr_seq.py`` (inputs,
feature columns, negatives, arguments). DeepCTR-Torch specifics:

* DIN: ``AttentionSequencePoolingLayer`` on ``[q, k, q - k, q * k]`` with Dice, masked by
  ``seq_length``, no softmax -- ours; its Dice is DeepCTR's (batch statistics over all positions,
  padding included; ours over the non-padding ones).
* DIEN: the interest extractor is ``torch.nn.GRU`` over a ``pack_padded_sequence`` (the C++ GRU,
  not a Python loop); the auxiliary loss is ``binary_cross_entropy`` over the positive and the
  negative pairs of steps ``< seq_length - 1`` (ours averages over the positives' count: the same
  sum, a different divisor); the attention scores the extractor's states against the raw candidate
  (ours projects it first); the evolution is ``DynamicGRU(gru_type="AUGRU")``, an
  ``AUGRUCell`` called once per step in a Python loop over the packed batch sizes.
* init: DeepCTR-Torch's own (embeddings and GRU weights N(0, 1e-4), DNN ``init_std``).
* Adam ``torch.optim.Adam(lr)``, ``torch.set_num_threads(threads)``.
"""

from __future__ import annotations

import time

import _common

spec = _common.read_spec()
_common.set_thread_env(spec["threads"])

import _deepctr_seq  # noqa: E402
import torch  # noqa: E402
from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat  # noqa: E402
from deepctr_torch.models import DIEN, DIN  # noqa: E402

_common.seed_torch(spec)
rows, model = _deepctr_seq.build(spec, {"SparseFeat": SparseFeat, "DenseFeat": DenseFeat, "VarLenSparseFeat": VarLenSparseFeat,
                                        "DIN": DIN, "DIEN": DIEN}, device="cpu")

optimizer = torch.optim.Adam(model.parameters(), lr=spec["lr"])
model.compile(optimizer, "binary_crossentropy", metrics=[])

batch_size = spec["batch_size"]
n = len(rows["train_y"])
clock = _common.clock_optimizer(optimizer, batch_size, n)
rss_before = _common.own_rss_mb()
clock.start = start = time.perf_counter()
model.fit(rows["train_x"], rows["train_y"], batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
seconds = time.perf_counter() - start

probs = model.predict(rows["test_x"], batch_size=16384)
_common.save_predictions(spec, probs)
_common.emit(_common.result_base(spec, n, seconds, clock, rss_before, params=sum(p.numel() for p in model.parameters()),
                                 library="deepctr-torch " + __import__("deepctr_torch").__version__,
                                 torch=torch.__version__))
