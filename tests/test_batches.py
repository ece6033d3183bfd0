"""Properties of BatchReader: exact sharding, seeded shuffling, worker striding, resume."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctrkit.data.batches import BatchReader
from ctrkit.data.store import StoreWriter
from ctrkit.errors import ConfigError
from ctrkit.schema import Field, Schema

SCHEMA = Schema((Field("a", "sparse", vocab_size=1 << 30), Field("x", "dense")))


def build_store(path, rows: int, chunk_rows: int):
    ids = np.arange(rows)
    with StoreWriter(path, SCHEMA, chunk_rows=chunk_rows) as writer:
        writer.append("train", {"label": (ids % 2).astype(np.float32), "sparse": ids[:, None].astype(np.int32), "dense": ids[:, None].astype(np.float32)})
        return writer.commit()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("batches") / "s.lmdb", rows=1000, chunk_rows=64)


def row_ids(batches) -> list[int]:
    return [int(v) for b in batches for v in b["sparse"][:, 0]]


def test_batches_carry_every_column_aligned(store):
    batch = next(iter(BatchReader(store, "train", 100, shuffle=True, seed=1).iter_epoch(0)))
    assert set(batch) == {"label", "sparse", "dense"}
    assert batch["sparse"].dtype == np.int32 and batch["label"].dtype == np.float32
    np.testing.assert_array_equal(batch["dense"][:, 0], batch["sparse"][:, 0])
    np.testing.assert_array_equal(batch["label"], batch["sparse"][:, 0] % 2)


def test_unshuffled_reads_in_store_order(store):
    reader = BatchReader(store, "train", 96)
    assert row_ids(reader.iter_epoch(0)) == list(range(1000))
    assert len(reader) == 11


def test_shuffle_depends_on_seed_and_epoch_only(store):
    def order(seed, epoch):
        return row_ids(BatchReader(store, "train", 50, shuffle=True, seed=seed).iter_epoch(epoch))

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    assert sorted(order(1, 3)) == list(range(1000))
    # rows move across chunk boundaries (chunk order and within-window shuffling)
    first = order(1, 0)[:64]
    assert len({r // 64 for r in first}) > 1


def test_columns_selection(store):
    batch = next(iter(BatchReader(store, "train", 10, columns=("sparse",)).iter_epoch(0)))
    assert set(batch) == {"sparse"}


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 4, "rank": 2, "world_size": 2}, "rank 2"),
    ({"batch_size": 4, "shuffle_window": 0}, "shuffle_window"),
])
def test_bad_arguments(store, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BatchReader(store, "train", **kwargs)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 300),
    chunk_rows=st.integers(1, 70),
    batch_size=st.integers(1, 64),
    world_size=st.integers(1, 4),
    num_workers=st.integers(1, 3),
    window=st.integers(1, 4),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    even=st.booleans(),
    epoch=st.integers(0, 5),
)
def test_sharding_is_disjoint_complete_and_worker_invariant(tmp_path_factory, rows, chunk_rows, batch_size, world_size, num_workers, window, shuffle, drop_last, even, epoch):
    store = build_store(tmp_path_factory.mktemp("h") / "s.lmdb", rows, chunk_rows)
    seen = []
    lengths = []
    for rank in range(world_size):
        reader = BatchReader(store, "train", batch_size, shuffle=shuffle, seed=7, shuffle_window=window, drop_last=drop_last, rank=rank, world_size=world_size, even_shards=even)
        single = list(reader.iter_epoch(epoch))
        assert len(single) == len(reader)
        assert all(len(b["label"]) == batch_size for b in single[:-1])
        if drop_last and single:
            assert len(single[-1]["label"]) == batch_size
        # workers stride over batches: merging them round-robin gives the single-process order
        per_worker = [list(reader.iter_epoch(epoch, worker_id=w, num_workers=num_workers)) for w in range(num_workers)]
        merged = [per_worker[i % num_workers][i // num_workers] for i in range(len(single))]
        assert sum(len(p) for p in per_worker) == len(single)
        assert row_ids(merged) == row_ids(single)
        # resuming at any batch reproduces the rest of the epoch
        for start in sorted({0, len(single) // 2, max(len(single) - 1, 0)}):
            assert row_ids(reader.iter_epoch(epoch, start_batch=start)) == row_ids(single[start:])
        seen += row_ids(single)
        lengths.append(reader.num_rows)
    assert len(seen) == len(set(seen)), "a row was read twice"
    if even:
        assert len(set(lengths)) == 1 and rows - sum(lengths) < world_size
    if not drop_last and not even:
        assert sorted(seen) == list(range(rows)), "a row was never read"
    if not drop_last and even:
        assert len(seen) == (rows // world_size) * world_size
