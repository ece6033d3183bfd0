"""Issue 7, item 3 under DistributedDataParallel: ranks that ``Trainer.fit`` spawns must read the
build the launching process opened, and refuse a store replaced at the same path in between, as
loader workers do (tests/faults/test_store_integrity.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import build_store, planted_columns, planted_schema  # noqa: E402

from ctrkit.config import TrainConfig  # noqa: E402
from ctrkit.data.store import StoreWriter  # noqa: E402
from ctrkit.errors import StoreError  # noqa: E402
from ctrkit.pytorch.trainer import Trainer  # noqa: E402
from ctrkit.registry import build_torch_model  # noqa: E402


@pytest.mark.slow
def test_spawned_ranks_refuse_a_store_replaced_after_the_launcher_opened_it(tmp_path):
    path = tmp_path / "store.lmdb"
    store = build_store(path, train=512, valid=256, test=256, chunk_rows=256)
    with StoreWriter(path, planted_schema(), chunk_rows=256, overwrite=True) as writer:
        for split, seed in (("train", 11), ("valid", 12), ("test", 13)):
            writer.append(split, planted_columns(256, seed))
        replacement = writer.commit()
    assert replacement.build_id != store.build_id
    config = TrainConfig(model="lr", data=str(path), epochs=1, batch_size=64, threads=1, cpu_processes=2,
                         model_save_dir=str(tmp_path / "run")).validate()
    model, _ = build_torch_model("lr", store.schema)
    try:
        Trainer(model, config).fit(store)
    except StoreError as exc:
        assert str(exc) == (f"store {path} was replaced while in use: built {store.build_id}, "
                            f"now {replacement.build_id}; restart the run")
    else:
        raise AssertionError("the ranks trained on the replacement store")
