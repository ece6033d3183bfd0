"""Errors raised inside DataLoader worker processes (issue 7, items 3 and 5 with ``--num_workers``):
the training process raises the same ctrkit error with its one-line message, and ``ctrkit train``
prints that one line, not PyTorch's "Caught StoreError in DataLoader worker process 0 ... Original
Traceback" text."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import lmdb
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import build_store, run_cli  # noqa: E402

from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.data.contract import ContractError  # noqa: E402
from ctrkit.errors import StoreError  # noqa: E402
from ctrkit.pytorch.loader import WorkerError, make_loader  # noqa: E402

CHUNK = b"chunk/train/00000001"


def flip_a_byte(store_path: Path, key: bytes) -> None:
    """Invert one byte in the middle of a value (its checksum then no longer matches)."""
    env = lmdb.open(str(store_path), max_dbs=0)
    with env.begin(write=True) as txn:
        value = bytearray(txn.get(key))
        value[len(value) // 2] ^= 0xFF
        txn.put(key, bytes(value))
    env.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("workers") / "store.lmdb", train=1024, valid=256, test=256,
                       chunk_rows=256).path


@pytest.fixture
def damaged(pristine, tmp_path) -> Path:
    """A copy of the store (this process holds the original open) with chunk 1 of train damaged."""
    path = tmp_path / "damaged.lmdb"
    shutil.copytree(pristine, path)
    flip_a_byte(path, CHUNK)
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_a_checksum_mismatch_in_a_worker_is_raised_as_one_line(damaged, workers):
    reader = BatchReader(damaged, "train", 64)
    with pytest.raises(StoreError) as info:
        list(make_loader(reader, num_workers=workers))
    message = str(info.value)
    assert "\n" not in message and "Caught" not in message and "Traceback" not in message
    assert message.startswith(f"store {damaged}: chunk 1 of split 'train' (key chunk/train/00000001) is damaged: checksum mismatch")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_batches_before_the_damaged_chunk_arrive_in_order(pristine, damaged):
    # one chunk per window: the four batches of chunk 0 are read before chunk 1 is touched
    expected = [batch["sparse"] for batch in BatchReader(pristine, "train", 64, shuffle_window=1).iter_epoch(0)][:4]
    received = []
    with pytest.raises(StoreError, match="chunk 1 of split 'train'"):
        for batch in make_loader(BatchReader(damaged, "train", 64, shuffle_window=1), num_workers=2):
            received.append(batch["sparse"].numpy())
    assert len(received) == 4
    for ours, theirs in zip(received, expected):
        assert (ours == theirs).all()


def test_worker_error_keeps_the_subclass_or_falls_back_to_its_message():
    with pytest.raises(ContractError, match="^label of row 3 is 7.0$"):
        WorkerError(ContractError("label of row 3 is 7.0")).raise_error()

    class TwoArguments(StoreError):
        def __init__(self, message: str, extra: int):
            super().__init__(message)

    with pytest.raises(Exception) as info:
        WorkerError(TwoArguments("kept line", 1)).raise_error()
    assert str(info.value) == "kept line" and type(info.value).__name__ == "CtrkitError"


@pytest.mark.slow
def test_train_with_a_worker_on_a_damaged_store_prints_one_line(damaged, tmp_path):
    # nothing of TensorFlow's start-up (oneDNN notice) joins ctrkit's line: a torch run does not import it
    result = run_cli("train", "--model", "lr", "--data", str(damaged), "--epochs", "1", "--batch_size", "64",
                     "--threads", "1", "--num_workers", "1", "--model_save_dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"ctrkit train: error: store {damaged}: chunk 1 of split 'train'")
    assert "checksum mismatch" in lines[0]
