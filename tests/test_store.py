import os
import shutil
import subprocess
import sys

import lmdb
import numpy as np
import pytest

from ctrkit.data.store import META_KEY, Store, StoreWriter, decode_arrays, encode_arrays
from ctrkit.errors import StoreError
from ctrkit.schema import Field, Schema

LOCK = ".s.lmdb.lock"  # the build target's lock file stays beside it (ctrkit.fileio.target_lock)
SCHEMA = Schema((Field("a", "sparse", vocab_size=100), Field("b", "sparse", vocab_size=5), Field("x", "dense")))


def rows(n: int, start: int = 0) -> dict[str, np.ndarray]:
    ids = np.arange(start, start + n)
    return {
        "label": (ids % 3 == 0).astype(np.float32),
        "sparse": np.stack([ids % 100, ids % 5], axis=1).astype(np.int32),
        "dense": (ids[:, None] * 0.5).astype(np.float32),
    }


def test_codec_round_trip_is_exact_and_aligned():
    arrays = {"label": np.array([0.0, 1.0], np.float32), "sparse": np.arange(6, dtype=np.int32).reshape(2, 3), "x": np.zeros((2, 0), np.float64)}
    decoded = decode_arrays(bytes(encode_arrays(arrays)))
    assert list(decoded) == list(arrays)
    for key in arrays:
        np.testing.assert_array_equal(decoded[key], arrays[key])
        assert decoded[key].dtype == arrays[key].dtype
        assert decoded[key].ctypes.data % 64 == decoded["label"].ctypes.data % 64


def test_write_read_chunks_and_metadata(tmp_path):
    path = tmp_path / "s.lmdb"
    with StoreWriter(path, SCHEMA, chunk_rows=16) as writer:
        for start in range(0, 50, 7):  # blocks that straddle chunk boundaries
            writer.append("train", rows(min(7, 50 - start), start))
        writer.append("valid", rows(5, 1000))
        writer.declare_split("test")
        writer.put_array("vocab/a", np.arange(99, dtype=np.int64))
        store = writer.commit({"note": "hello"})
    assert not any(p.name.startswith(".") and p.name != LOCK for p in tmp_path.iterdir()), "temporary directory left behind"
    assert store.splits["train"].chunk_rows == (16, 16, 16, 2)
    assert store.splits["train"].rows == 50 and store.splits["valid"].rows == 5 and store.splits["test"].rows == 0
    assert store.splits["train"].positives == int((np.arange(50) % 3 == 0).sum())
    assert store.meta["note"] == "hello" and store.schema == SCHEMA
    data = store.read_split("train")
    expected = rows(50)
    for key in expected:
        np.testing.assert_array_equal(data[key], expected[key])
    np.testing.assert_array_equal(store.vocabulary("a"), np.arange(99))


def test_abort_on_exception_leaves_nothing(tmp_path):
    path = tmp_path / "s.lmdb"
    with pytest.raises(RuntimeError):
        with StoreWriter(path, SCHEMA, chunk_rows=4) as writer:
            writer.append("train", rows(10))
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == [LOCK]


def test_killed_build_leaves_no_store(tmp_path):
    """A process killed mid-build leaves only its temporary directory, never a store at the path."""
    path = tmp_path / "s.lmdb"
    code = (
        "import os, numpy as np\n"
        "from ctrkit.data.store import StoreWriter\n"
        "from ctrkit.schema import Schema, Field\n"
        "w = StoreWriter(%r, Schema((Field('a', 'sparse', vocab_size=3),)), chunk_rows=2)\n"
        "w.append('train', {'label': np.zeros(10, np.float32), 'sparse': np.zeros((10, 1), np.int32)})\n"
        "os._exit(9)\n" % str(path)
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert not path.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name != LOCK]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".s.lmdb.tmp-")
    with pytest.raises(StoreError, match="incomplete store"):
        Store(leftovers[0])


def test_store_without_completion_record_refuses_to_open(tmp_path):
    path = tmp_path / "half.lmdb"
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(b"chunk/train/00000000", b"x")
    env.close()
    with pytest.raises(StoreError, match="incomplete store.*completion record"):
        Store(path)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no store at"),
    (lambda p: p.write_text("hi"), "not a ctrkit store"),
    (lambda p: p.mkdir(), "not a ctrkit store"),
])
def test_missing_or_foreign_paths(tmp_path, make, message):
    path = tmp_path / "x"
    make(path)
    with pytest.raises(StoreError, match=message):
        Store(path)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "s.lmdb"
    with StoreWriter(path, SCHEMA) as writer:
        writer.append("train", rows(3))
        with pytest.raises(StoreError, match="newer than this ctrkit"):
            writer.commit({"format_version": 99})  # committed, then refused when opened
    with pytest.raises(StoreError, match="newer than this ctrkit"):
        Store(path)


def test_existing_path_needs_overwrite_and_is_replaced_atomically(tmp_path):
    path = tmp_path / "s.lmdb"
    with StoreWriter(path, SCHEMA) as writer:
        writer.append("train", rows(3))
        writer.commit()
    with pytest.raises(StoreError, match="already exists"):
        StoreWriter(path, SCHEMA)
    with StoreWriter(path, SCHEMA, overwrite=True) as writer:
        writer.append("train", rows(8))
        writer.commit()
    assert Store(path).splits["train"].rows == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK, "s.lmdb"]


def test_map_grows_as_needed(tmp_path):
    with StoreWriter(tmp_path / "s.lmdb", SCHEMA, chunk_rows=50_000, initial_map_size=1 << 20) as writer:
        writer.append("train", rows(200_000))
        store = writer.commit()
    assert store.splits["train"].rows == 200_000
    np.testing.assert_array_equal(store.read_chunk("train", 3)["sparse"][:, 0], np.arange(150_000, 200_000) % 100)


def test_reader_reopens_after_fork_and_pickles_without_handle(tmp_path):
    import pickle

    with StoreWriter(tmp_path / "s.lmdb", SCHEMA) as writer:
        writer.append("train", rows(10))
        store = writer.commit()
    store.read_chunk("train", 0)
    clone = pickle.loads(pickle.dumps(store))
    assert clone._env is None
    again = Store(store.path)  # a second Store of the same path in one process shares the handle
    np.testing.assert_array_equal(again.read_chunk("train", 0)["label"], rows(10)["label"])
    np.testing.assert_array_equal(clone.read_chunk("train", 0)["sparse"], rows(10)["sparse"])
    pid = os.fork()
    if pid == 0:  # child: must open its own environment
        ok = store.read_chunk("train", 0)["sparse"].shape == (10, 2) and store._env_pid == os.getpid()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_unknown_split_is_a_clear_error(tmp_path):
    with StoreWriter(tmp_path / "s.lmdb", SCHEMA) as writer:
        writer.append("train", rows(3))
        store = writer.commit()
    with pytest.raises(StoreError, match="no split 'valid'"):
        store.split("valid")


def _train_store(tmp_path, n: int = 50, chunk_rows: int = 16, **kwargs) -> Store:
    with StoreWriter(tmp_path / "s.lmdb", SCHEMA, chunk_rows=chunk_rows) as writer:
        writer.append("train", rows(n))
        writer.commit()
    return Store(tmp_path / "s.lmdb", **kwargs)


@pytest.mark.parametrize("check_reads", [True, False])
def test_read_rows_concatenates_segments_in_the_order_asked(tmp_path, check_reads):
    store = _train_store(tmp_path, check_reads=check_reads)
    expected = rows(50)
    segments = [(2, 5, 16), (0, 0, 3), (3, 0, 2), (1, 7, 7), (1, 10, 12)]  # any order, empty pieces too
    got = store.read_rows("train", segments)
    index = np.concatenate([np.arange(16 * c + a, 16 * c + b) for c, a, b in segments])
    assert list(got) == ["label", "sparse", "dense"]
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key][index])
        assert got[key].dtype == expected[key].dtype and got[key].flags.writeable and got[key].flags.owndata
    only = store.read_rows("train", [(0, 0, 4)], columns=("sparse", "label", "not-there"))
    assert list(only) == ["sparse", "label"]
    assert store.read_rows("train", []) == {}


def test_read_rows_results_are_independent_copies(tmp_path):
    store = _train_store(tmp_path)
    first = store.read_rows("train", [(0, 0, 16)])
    first["sparse"][:] = -1  # writing into a result touches neither the store nor the next read
    np.testing.assert_array_equal(store.read_rows("train", [(0, 0, 16)])["sparse"], rows(16)["sparse"])
    np.testing.assert_array_equal(store.read_chunk("train", 0)["sparse"], rows(16)["sparse"])


def test_read_rows_refuses_rows_a_chunk_does_not_hold(tmp_path):
    store = _train_store(tmp_path)
    with pytest.raises(StoreError, match=r"chunk 3 of split 'train' .*: rows \[0, 3\) asked for, but it holds 2$"):
        store.read_rows("train", [(0, 0, 16), (3, 0, 3)])
    with pytest.raises(StoreError, match="chunk 4 of split 'train' .* is missing"):
        store.read_rows("train", [(4, 0, 1)])


def test_read_rows_checks_every_chunk_it_touches(tmp_path):
    _train_store(tmp_path)
    shutil.copytree(tmp_path / "s.lmdb", tmp_path / "copy.lmdb")  # this process holds s.lmdb open
    env = lmdb.open(str(tmp_path / "copy.lmdb"), max_dbs=0)
    with env.begin(write=True) as txn:
        key = b"chunk/train/00000002"
        value = bytearray(txn.get(key))
        value[-20] ^= 1
        txn.put(key, bytes(value))
    env.close()
    fresh = Store(tmp_path / "copy.lmdb")
    np.testing.assert_array_equal(fresh.read_rows("train", [(0, 0, 16), (1, 0, 16)])["sparse"], rows(32)["sparse"])
    with pytest.raises(StoreError, match="chunk 2 of split 'train' .* checksum mismatch"):
        fresh.read_rows("train", [(0, 0, 16), (2, 15, 16)])  # one row of it is enough
