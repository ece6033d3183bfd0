"""torch-rechub runner: the library's ``CTRTrainer.train_one_epoch`` over one epoch, timed.

torch-rechub's own ``DataGenerator`` collates every batch row by row (one dict of 39 scalars per
row), which would make its input pipeline, not its model, the bottleneck; this runner gives it the
best case instead: whole batches gathered with one index per batch (a ``BatchSampler`` over a
random permutation), so the measured time is the library's model and training step.

torch-rechub has no xDeepFM and no ONN. Its FiBiNet applies ONE bilinear layer to both the
embeddings and the SENET output (ours, DeepCTR's and FuxiCTR's have two). Its ``MLP`` always puts a
``BatchNorm1d`` after each hidden Linear (there is no switch), and its AutoInt attention width per
head is ``embed_size / num_heads``.
"""

from __future__ import annotations

import tempfile
import time

import _common

spec = _common.read_spec()
_common.set_thread_env(spec["threads"])

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler  # noqa: E402
from torch_rechub.basic.features import SparseFeature  # noqa: E402
from torch_rechub.models.ranking import DCN, DeepFM  # noqa: E402
from torch_rechub.trainers import CTRTrainer  # noqa: E402

_common.seed_torch(spec)

rows = _common.load_rows(spec)
names = rows["field_names"]
hp = spec["hparams"]
features = [SparseFeature(name, vocab_size=v, embed_dim=hp["embed_size"]) for name, v in zip(names, rows["vocab_sizes"])]
mlp_params = {"dims": list(hp["hidden_units"]), "dropout": 0.0, "activation": "relu"}
model_name = spec["model"]
if model_name == "deepfm":
    model = DeepFM(deep_features=features, fm_features=features, mlp_params=mlp_params)
elif model_name == "dcn":
    model = DCN(features=features, n_cross_layers=hp["cross_layers"], mlp_params=mlp_params)
elif model_name == "autoint+":
    from torch_rechub.models.ranking import AutoInt

    if hp["embed_size"] // hp["num_heads"] != hp["attention_dim"]:
        raise SystemExit(f"torch-rechub AutoInt needs attention_dim = embed_size / num_heads, got {hp}")
    model = AutoInt(sparse_features=features, dense_features=[], num_layers=hp["attention_layers"],
                    num_heads=hp["num_heads"], dropout=0.0, mlp_params=mlp_params)
elif model_name == "dcnv2":
    from torch_rechub.models.ranking import DCNv2

    model = DCNv2(features=features, n_cross_layers=hp["cross_layers"], mlp_params=mlp_params,
                  model_structure=hp["model_structure"], use_low_rank_mixture=hp["use_low_rank_mixture"])
elif model_name == "fibinet":
    from torch_rechub.models.ranking import FiBiNet

    model = FiBiNet(features=features, mlp_params=mlp_params, reduction_ratio=hp["reduction_ratio"],
                    bilinear_type=hp["bilinear_type"])
else:
    raise SystemExit(f"torch-rechub has no {model_name}")


class WholeBatches(Dataset):
    """``dataset[list_of_rows]`` -> one batch: ``({field: LongTensor[B]}, FloatTensor[B])``."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x = torch.from_numpy(x.astype(np.int64))
        self.y = torch.from_numpy(y)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index):
        block = self.x[index]  # (B, F)
        return {name: block[:, j] for j, name in enumerate(names)}, self.y[index]


def loader(x, y, shuffle: bool, batch_size: int) -> DataLoader:
    data = WholeBatches(x, y)
    base = RandomSampler(data, generator=torch.Generator().manual_seed(spec["seed"])) if shuffle else range(len(data))
    return DataLoader(data, sampler=BatchSampler(base, batch_size, drop_last=False), batch_size=None)


with tempfile.TemporaryDirectory() as tmp:
    trainer = CTRTrainer(model, optimizer_params={"lr": spec["lr"], "weight_decay": 0.0}, n_epoch=1, device="cpu",
                         model_path=tmp)
clock = _common.StepClock()
batch_size = spec["batch_size"]
n = len(rows["train_y"])
_step = trainer.optimizer.step


def timed_step(*args, **kwargs):
    out = _step(*args, **kwargs)
    done = len(clock.times)
    clock.tick(min(batch_size, n - done * batch_size))
    return out


trainer.optimizer.step = timed_step
train_loader = loader(rows["train_x"], rows["train_y"], True, batch_size)
rss_before = _common.own_rss_mb()
clock.start = start = time.perf_counter()
trainer.train_one_epoch(train_loader)
seconds = time.perf_counter() - start

model.eval()
probs = []
with torch.no_grad():
    for x, _ in loader(rows["test_x"], rows["test_y"], False, 16384):
        probs.append(model(x).reshape(-1).double().numpy())
_common.save_predictions(spec, np.concatenate(probs))
_common.emit(_common.result_base(spec, n, seconds, clock, rss_before, params=sum(p.numel() for p in model.parameters()),
                                 library="torch-rechub " + getattr(__import__("torch_rechub"), "__version__", "?"),
                                 torch=torch.__version__,
                                 notes="BatchNorm1d in every hidden layer (torch-rechub MLP has no switch)"))
