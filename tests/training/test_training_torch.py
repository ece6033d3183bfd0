"""The step contract through the PyTorch backend: a model's auxiliary loss, and gAUC of a group column."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import build_store  # noqa: E402

from ctrkit.config import TrainConfig  # noqa: E402
from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.metrics import gauc  # noqa: E402
from ctrkit.pytorch import trainer as trainer_module  # noqa: E402
from ctrkit.pytorch.loader import to_tensors  # noqa: E402
from ctrkit.pytorch.trainer import Trainer, train_from_config  # noqa: E402
from ctrkit.registry import build_torch_model  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("contract") / "store.lmdb", train=512, valid=256, test=256)


class AuxModel(torch.nn.Module):
    """A registry model whose output gains an auxiliary loss: ``weight * sum of its squared weights``."""

    def __init__(self, inner: torch.nn.Module, weight: float):
        super().__init__()
        self.inner = inner
        self.weight = weight

    def aux(self) -> torch.Tensor:
        return self.weight * sum(p.pow(2).sum() for p in self.inner.parameters())

    def forward(self, batch):
        return {"logits": self.inner(batch), "aux_loss": self.aux()}


def test_aux_loss_is_added_to_the_objective(store):
    torch.manual_seed(0)
    inner, _ = build_torch_model("deepfm", store.schema, {"embed_size": 4, "hidden_units": [8]})
    batch = to_tensors(next(BatchReader(store, "train", 16).iter_epoch(0)))
    plain = Trainer(inner, TrainConfig(model="deepfm", embedding_l2=0.1).validate(), schema=store.schema)
    objective0, bce0 = plain.compute_loss(batch)
    penalty = objective0.item() - bce0.item()
    assert penalty > 0

    model = AuxModel(inner, weight=0.05)
    trainer = Trainer(model, TrainConfig(model="deepfm", embedding_l2=0.1).validate(), schema=store.schema)
    objective, bce = trainer.compute_loss(batch)
    aux = model.aux().item()
    assert aux > 0 and bce.item() == bce0.item()  # the reported loss is the BCE alone
    assert objective.item() == pytest.approx(bce.item() + penalty + aux, rel=1e-6)
    objective.backward()  # the auxiliary term reaches weights the BCE alone also reaches, and adds to them
    dense_weight = next(p for n, p in model.named_parameters() if n.endswith("weight") and "dnn" in n)
    assert dense_weight.grad is not None and dense_weight.grad.abs().sum() > 0


def test_a_model_with_aux_loss_trains_and_predicts(store, tmp_path, capsys):
    torch.manual_seed(0)
    inner, _ = build_torch_model("lr", store.schema, {})
    model = AuxModel(inner, weight=1e-3)
    trainer = Trainer(model, TrainConfig(model="lr", epochs=1, batch_size=128, threads=1,
                                         model_save_dir=str(tmp_path / "run")).validate(), schema=store.schema)
    metrics = trainer.fit(store)
    assert "not a model of the ctrkit registry" in capsys.readouterr().err  # its own code rebuilds it
    assert math.isfinite(metrics["history"][0]["train_loss"]) and 0.0 < metrics["test"]["auc"] < 1.0
    probs = trainer.predict(BatchReader(store, "test", 100))
    assert probs.shape == (256,) and ((probs > 0) & (probs < 1)).all()


def test_a_group_column_reports_gauc(store, tmp_path, monkeypatch):
    real = trainer_module.make_loader

    def with_groups(*args, **kwargs):  # the users of the rows: the id of the first field
        return ({**b, "group": b["sparse"][:, 0].long()} for b in real(*args, **kwargs))

    monkeypatch.setattr(trainer_module, "make_loader", with_groups)
    save_dir = tmp_path / "run"
    metrics = train_from_config(TrainConfig(model="lr", data=str(store.path), epochs=2, batch_size=128,
                                            threads=1, model_save_dir=str(save_dir)).validate())
    assert all(0.0 < h["valid_gauc"] < 1.0 for h in metrics["history"])
    assert set(metrics["best_valid"]) == {"auc", "logloss", "gauc"}

    trainer = Trainer.from_checkpoint(save_dir)
    probs = trainer.predict(BatchReader(store, "test", 100))
    test = store.read_split("test")
    expected = gauc(test["label"], probs, test["sparse"][:, 0])
    assert metrics["test"]["gauc"] == pytest.approx(expected, abs=1e-9)
    assert trainer.evaluate(store, "test")["gauc"] == pytest.approx(expected, abs=1e-9)
    assert not np.isclose(metrics["test"]["gauc"], metrics["test"]["auc"])
