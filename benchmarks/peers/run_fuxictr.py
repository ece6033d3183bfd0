"""FuxiCTR runner: the model zoo's ``DCNv2``, ``FiBiNET`` and ``ONNv2`` (PyTorch) trained one epoch
with the library's own ``BaseModel.train_step`` (forward, BCE, backward, ``clip_grad_norm_`` at
FuxiCTR's default ``max_gradient_norm=10``, Adam), timed.

The model zoo is not part of the ``fuxictr`` wheel: the models are read from a checkout of the
FuxiCTR repository (``spec["fuxictr_zoo"]``, default ``benchmarks/.peers-venv/FuxiCTR/model_zoo``,
made by ``make bench-peers``). FuxiCTR's ``fit`` also validates at the epoch's end, loads its best
checkpoint and reads h5/parquet/npz files through its own data loaders; this runner gives its models
the dumped rows as whole batches instead (one index per batch, as for torch-rechub: the library's
model and training step, without its input pipeline) and times the loop of ``train_step`` calls.

Recipe mapping: embedding ``embedding_dim``; DNN ``hidden_units`` (DCNv2: ``parallel_dnn_hidden_units``);
no dropout, no BatchNorm, no regularizers; Xavier-normal Linear layers and N(0, 1e-4) embeddings
(FuxiCTR's own initialisation, the same as ours). ONN is ``ONNv2``: one table of ``F * D``-wide rows,
inner products of the operation-aware embeddings plus the copy embeddings into the DNN (FuxiCTR's
``ONN`` is the same function with ``F`` separate tables); FuxiCTR has no Hadamard ONN.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import _common

spec = _common.read_spec()
_common.set_thread_env(spec["threads"])

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fuxictr.features import FeatureMap  # noqa: E402

_common.seed_torch(spec)

ZOO = {"dcnv2": ("DCNv2", "DCNv2.py", "DCNv2"), "fibinet": ("FiBiNET", "FiBiNET.py", "FiBiNET"),
       "onn-inner": ("ONN/ONN_torch", "ONNv2.py", "ONNv2")}


def zoo_class(model: str):
    """The model zoo's class for ``model``, imported from its source file."""
    if model not in ZOO:
        raise SystemExit(f"FuxiCTR runner: no {model} (the runner has {', '.join(ZOO)})")
    folder, filename, name = ZOO[model]
    path = Path(spec["fuxictr_zoo"]) / folder / "src" / filename
    if not path.is_file():
        raise SystemExit(f"FuxiCTR runner: no model zoo file {path} (run make bench-peers)")
    module_spec = importlib.util.spec_from_file_location(f"fuxictr_zoo_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


rows = _common.load_rows(spec)
names = rows["field_names"]
hp = spec["hparams"]
model_name = spec["model"]
zoo = zoo_class(model_name)

with tempfile.TemporaryDirectory(prefix="fuxictr-bench-") as tmp:
    feature_map = FeatureMap("bench", tmp)
    feature_map.features = OrderedDict((name, {"type": "categorical", "source": "", "vocab_size": int(v)})
                                       for name, v in zip(names, rows["vocab_sizes"]))
    feature_map.labels = ["label"]
    feature_map.default_emb_dim = hp["embed_size"]  # what FeatureMap.load takes from the params
    feature_map.num_fields = feature_map.get_num_fields()
    feature_map.set_column_index()
    common = dict(model_root=tmp, optimizer="adam", loss="binary_crossentropy", verbose=0, metrics=["AUC"],
                  learning_rate=spec["lr"], embedding_dim=hp["embed_size"], net_dropout=0.0, batch_norm=False,
                  embedding_regularizer=None, net_regularizer=None, gpu=-1)
    if model_name == "dcnv2":
        model = zoo(feature_map, model_structure=hp["model_structure"],
                    use_low_rank_mixture=hp["use_low_rank_mixture"], num_cross_layers=hp["cross_layers"],
                    parallel_dnn_hidden_units=list(hp["hidden_units"]),
                    stacked_dnn_hidden_units=list(hp["hidden_units"]), **common)
    elif model_name == "fibinet":
        model = zoo(feature_map, hidden_units=list(hp["hidden_units"]), reduction_ratio=hp["reduction_ratio"],
                    bilinear_type=hp["bilinear_type"], **common)
    else:
        model = zoo(feature_map, hidden_units=list(hp["hidden_units"]), **common)
model._max_gradient_norm = 10.0  # what BaseModel.fit sets (its default) before train_step runs

x_train = torch.from_numpy(rows["train_x"].astype(np.int64))
y_train = torch.from_numpy(rows["train_y"].copy())


def batch_of(x: torch.Tensor, y: torch.Tensor, index) -> dict[str, torch.Tensor]:
    block = x[index]  # (B, F)
    out = {name: block[:, j] for j, name in enumerate(names)}
    out["label"] = y[index]
    return out


clock = _common.StepClock()
batch_size = spec["batch_size"]
n = len(y_train)
order = torch.randperm(n, generator=torch.Generator().manual_seed(spec["seed"]))
model.train()
rss_before = _common.own_rss_mb()
clock.start = start = time.perf_counter()
for begin in range(0, n, batch_size):
    index = order[begin:begin + batch_size]
    model.train_step(batch_of(x_train, y_train, index))
    clock.tick(len(index))
seconds = time.perf_counter() - start

model.eval()
x_test = torch.from_numpy(rows["test_x"].astype(np.int64))
y_test = torch.from_numpy(rows["test_y"].copy())
probs = []
with torch.no_grad():
    for begin in range(0, len(y_test), 16384):
        index = torch.arange(begin, min(begin + 16384, len(y_test)))
        probs.append(model(batch_of(x_test, y_test, index))["y_pred"].reshape(-1).double().numpy())
_common.save_predictions(spec, np.concatenate(probs))
_common.emit(_common.result_base(spec, n, seconds, clock, rss_before, params=sum(p.numel() for p in model.parameters()),
                                 library="fuxictr " + __import__("fuxictr").__version__ + " (model zoo)",
                                 model_zoo=spec["fuxictr_zoo"], torch=torch.__version__,
                                 notes="train_step with clip_grad_norm_(10), FuxiCTR's default"))
