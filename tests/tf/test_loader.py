"""ctrkit.tensorflow.loader: the tf.data pipeline yields exactly BatchReader's batches, as tensors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import build_store, planted_columns, planted_schema  # noqa: E402

from ctrkit.data.batches import BatchReader  # noqa: E402
from ctrkit.data.store import StoreWriter  # noqa: E402
from ctrkit.errors import ConfigError  # noqa: E402
from ctrkit.schema import Field, Schema  # noqa: E402
from ctrkit.tensorflow.loader import (  # noqa: E402
    batch_signature,
    make_dataset,
    make_distributed_dataset,
    to_tensors,
)

DTYPES = {"label": tf.float32, "sparse": tf.int32, "dense": tf.float32}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # 2,999 rows in chunks of 256: windows of 2 chunks do not end on batch boundaries of 128,
    # so batches straddle windows, and the last batch is short (2999 = 23 * 128 + 55)
    return build_store(tmp_path_factory.mktemp("tf_loader") / "s.lmdb", train=2999, valid=300, test=0, chunk_rows=256)


@pytest.fixture(scope="module")
def seq_store(tmp_path_factory):
    """A schema with dense and sequence fields (ids of the sequence share C1's vocabulary)."""
    base = planted_schema(dense=True)
    schema = Schema(base.fields + (Field("hist", "sequence", max_len=4, shares="C1"),))
    columns = planted_columns(700, seed=5, dense=True)
    rng = np.random.default_rng(7)
    columns["seq:hist"] = rng.integers(0, schema["C1"].vocab_size, (700, 4)).astype(np.int32)
    with StoreWriter(tmp_path_factory.mktemp("tf_seq") / "s.lmdb", schema, chunk_rows=100) as writer:
        writer.append("train", columns)
        return writer.commit({})


def assert_same_batches(dataset, expected: list[dict[str, np.ndarray]]) -> None:
    got = list(dataset)
    assert len(got) == len(expected), f"{len(got)} batches from tf.data, {len(expected)} from BatchReader"
    for index, (ours, theirs) in enumerate(zip(got, expected)):
        assert sorted(ours) == sorted(theirs), f"batch {index}: keys {sorted(ours)} vs {sorted(theirs)}"
        for key, array in theirs.items():
            assert ours[key].dtype == DTYPES.get(key, tf.int32), f"batch {index} {key}: {ours[key].dtype}"
            np.testing.assert_array_equal(ours[key].numpy(), array, err_msg=f"batch {index}, key {key}")


@pytest.mark.parametrize("shuffle", [False, True], ids=["unshuffled", "shuffled"])
def test_same_batches_in_same_order_as_the_reader(store, shuffle):
    reader = BatchReader(store, "train", 128, shuffle=shuffle, seed=11, shuffle_window=2)
    for epoch in (0, 3):
        assert_same_batches(make_dataset(reader, epoch), list(reader.iter_epoch(epoch)))
    if shuffle:  # the comparison is not vacuous: epochs differ, and differ from store order
        first = [b["sparse"][:4] for b in (next(reader.iter_epoch(e)) for e in (0, 3))]
        assert not np.array_equal(first[0], first[1])


def test_resume_in_the_middle_of_a_shuffled_epoch(store):
    reader = BatchReader(store, "train", 128, shuffle=True, seed=4, shuffle_window=2)
    full = list(reader.iter_epoch(2))
    for start in (1, 9, 23):  # 23 = only the short last batch is left
        dataset = make_dataset(reader, epoch=2, start_batch=start)
        assert int(dataset.cardinality()) == len(full) - start
        assert_same_batches(dataset, full[start:])


def test_short_last_batch_and_drop_last(store):
    dataset = make_dataset(BatchReader(store, "train", 128))
    sizes = [int(b["label"].shape[0]) for b in dataset]
    assert sizes == [128] * 23 + [2999 - 23 * 128]
    dropped = make_dataset(BatchReader(store, "train", 128, drop_last=True))
    assert [int(b["label"].shape[0]) for b in dropped] == [128] * 23


def test_the_dataset_can_be_iterated_twice(store):
    reader = BatchReader(store, "train", 500, shuffle=True, seed=1)
    dataset = make_dataset(reader, epoch=1)
    first, second = list(dataset), list(dataset)
    assert len(first) == len(second) == len(reader)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["sparse"].numpy(), b["sparse"].numpy())


def test_signature_from_the_schema_with_a_free_batch_dimension(store, seq_store):
    dataset = make_dataset(BatchReader(store, "train", 64))
    assert dataset.element_spec == {
        "label": tf.TensorSpec([None], tf.float32, name="label"),
        "sparse": tf.TensorSpec([None, 5], tf.int32, name="sparse"),
        "dense": tf.TensorSpec([None, 2], tf.float32, name="dense"),
    }
    spec = make_dataset(BatchReader(seq_store, "train", 64)).element_spec
    assert spec["seq:hist"] == tf.TensorSpec([None, 4], tf.int32, name="seq_hist")
    unlabeled = batch_signature(seq_store.schema, labeled=False, columns=("sparse", "seq:hist"))
    assert sorted(unlabeled) == ["seq:hist", "sparse"]


def test_dense_and_sequence_fields(seq_store):
    reader = BatchReader(seq_store, "train", 96, shuffle=True, seed=3, shuffle_window=3)
    expected = list(reader.iter_epoch(1))
    assert "seq:hist" in expected[0] and "dense" in expected[0]
    assert_same_batches(make_dataset(reader, epoch=1), expected)


def test_column_selection(store):
    reader = BatchReader(store, "train", 256, shuffle=True, columns=("label", "sparse"))
    dataset = make_dataset(reader)
    assert sorted(dataset.element_spec) == ["label", "sparse"]
    assert_same_batches(dataset, list(reader.iter_epoch(0)))


def test_without_prefetch_or_private_threads(store):
    reader = BatchReader(store, "valid", 64, shuffle=True, seed=9)
    dataset = make_dataset(reader, epoch=5, prefetch=None, private_threads=None)
    assert_same_batches(dataset, list(reader.iter_epoch(5)))


def test_to_tensors_keeps_the_contract_dtypes():
    batch = {
        "label": np.array([0, 1], np.float32),
        "sparse": np.array([[1, 2], [3, 4]], np.int64),
        "dense": np.ones((2, 1), np.float32),
    }
    tensors = to_tensors(batch)
    assert {k: v.dtype for k, v in tensors.items()} == {"label": tf.float32, "sparse": tf.int32, "dense": tf.float32}
    np.testing.assert_array_equal(tensors["sparse"].numpy(), batch["sparse"])


def test_distributed_dataset_on_the_default_strategy_is_the_reader(store):
    reader = BatchReader(store, "train", 256, shuffle=True, seed=2)
    distributed = make_distributed_dataset(tf.distribute.get_strategy(), reader, epoch=1)
    assert_same_batches(distributed, list(reader.iter_epoch(1)))


def test_distributed_dataset_rejects_what_it_cannot_split(store):
    class TwoReplicas:
        num_replicas_in_sync = 2

    with pytest.raises(ConfigError, match="divisible by the number of replicas"):
        make_distributed_dataset(TwoReplicas(), BatchReader(store, "train", 255))
    with pytest.raises(ConfigError, match="unsharded reader"):
        make_distributed_dataset(TwoReplicas(), BatchReader(store, "train", 256, rank=1, world_size=2))
    with pytest.raises(ConfigError, match="start_batch"):
        make_dataset(BatchReader(store, "train", 256), start_batch=-1)
