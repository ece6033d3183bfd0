"""DeepCTR-Torch runner: the library's own ``compile`` + ``fit`` (one epoch), timed; see ``_common``.

Model settings follow the benchmark protocol: embedding 16, DNN (400, 400, 400), no dropout, every
``l2_reg_*`` = 0, Adam lr 1e-3 (``torch.optim.Adam``), batch 4096, ``torch.set_num_threads``.
"""

from __future__ import annotations

import time

import _common

spec = _common.read_spec()
_common.set_thread_env(spec["threads"])

import numpy as np  # noqa: E402
import torch  # noqa: E402
from deepctr_torch.inputs import SparseFeat  # noqa: E402
from deepctr_torch.models import DCN, ONN, AutoInt, DCNMix, DeepFM, FiBiNET, xDeepFM  # noqa: E402

_common.seed_torch(spec)

rows = _common.load_rows(spec)
names = rows["field_names"]
hp = spec["hparams"]
if spec["model"] == "autoint+" and hp["embed_size"] // hp["num_heads"] != hp["attention_dim"]:
    # DeepCTR-Torch splits the embedding into the heads: d' = embed_size / heads (8 here).
    raise SystemExit(f"DeepCTR-Torch AutoInt needs attention_dim = embed_size / num_heads, got {hp}")
model = _common.build_deepctr_model(
    spec, rows, SparseFeat,
    {"DeepFM": DeepFM, "DCN": DCN, "xDeepFM": xDeepFM, "AutoInt": AutoInt, "DCNMix": DCNMix, "FiBiNET": FiBiNET,
     "ONN": ONN}, "DeepCTR-Torch",
    device="cpu",
)

optimizer = torch.optim.Adam(model.parameters(), lr=spec["lr"])
model.compile(optimizer, "binary_crossentropy", metrics=[])

batch_size = spec["batch_size"]
n = len(rows["train_y"])
clock = _common.clock_optimizer(optimizer, batch_size, n)
x_train = {name: rows["train_x"][:, j] for j, name in enumerate(names)}
rss_before = _common.own_rss_mb()
clock.start = start = time.perf_counter()
model.fit(x_train, rows["train_y"], batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
seconds = time.perf_counter() - start

x_test = {name: rows["test_x"][:, j] for j, name in enumerate(names)}
probs = model.predict(x_test, batch_size=16384)
_common.save_predictions(spec, probs)
_common.emit(_common.result_base(spec, n, seconds, clock, rss_before, params=sum(p.numel() for p in model.parameters()),
                                 library="deepctr-torch " + __import__("deepctr_torch").__version__,
                                 torch=torch.__version__))
