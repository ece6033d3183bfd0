"""Faults of the store (issue 7, items 1, 3, 5, 8, 9, 10, 13): what a damaged, replaced, truncated or
half-built store does to its readers and writers.

Damage is made by writing bytes with ``lmdb`` into a copy of a small store. Where a test needs a
value whose checksum is right but whose content is wrong ("someone recomputed the checksum"), it
re-seals the value itself, following the format described in ``ctrkit/data/store.py``: a chunk or
array value ends with the little-endian ``xxh3_64`` of the bytes before it, seeded with
``xxh3_64`` of its key; ``__meta__`` holds ``"checksum": "xxh3_64:<hex>"`` of its other members'
canonical JSON.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable

import lmdb
import numpy as np
import pytest
import xxhash

from ctrkit.data.batches import BatchReader
from ctrkit.data.contract import ContractError
from ctrkit.data.store import META_KEY, Store, StoreWriter, decode_arrays, encode_arrays
from ctrkit.errors import OutputError, StoreError
from ctrkit.schema import Field, Schema

SCHEMA = Schema((Field("a", "sparse", vocab_size=50), Field("b", "sparse", vocab_size=7), Field("x", "dense")))
CHUNK_ROWS = 16
LOCK = ".s.lmdb.lock"
CHUNK_1 = b"chunk/train/00000001"


def rows(n: int, start: int = 0) -> dict[str, np.ndarray]:
    ids = np.arange(start, start + n)
    return {
        "label": (ids % 3 == 0).astype(np.float32),
        "sparse": np.stack([ids % 50, ids % 7], axis=1).astype(np.int32),
        "dense": (ids[:, None] * 0.25).astype(np.float32),
    }


def build(path: Path, n: int = 40, start: int = 0, **kwargs) -> Store:
    with StoreWriter(path, SCHEMA, chunk_rows=CHUNK_ROWS, **kwargs) as writer:
        writer.append("train", rows(n, start))
        writer.append("valid", rows(10, 1000))
        writer.put_array("vocab/a", np.arange(100, 149, dtype=np.int64))
        writer.put_array("vocab/b", np.arange(200, 206, dtype=np.int64))
        return writer.commit({"note": "fault tests"})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "s.lmdb"
    build(path)
    return path


@pytest.fixture
def copy(pristine, tmp_path) -> Path:
    """A fresh copy of the small store, never opened by this process (so lmdb may edit it)."""
    target = tmp_path / "copy.lmdb"
    shutil.copytree(pristine, target)
    return target


# ---------------------------------------------------------------------------------------------
# Editing a store behind ctrkit's back
# ---------------------------------------------------------------------------------------------
def get_raw(path: Path, key: bytes) -> bytes:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return txn.get(key)
    finally:
        env.close()


def put_raw(path: Path, changes: dict[bytes, bytes | None]) -> None:
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for key, value in changes.items():
            if value is None:
                txn.delete(key)
            else:
                txn.put(key, value)
    env.close()


def reseal(key: bytes, body: bytes) -> bytes:
    return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body, seed=xxhash.xxh3_64_intdigest(key)))


def rewrite_chunk(path: Path, key: bytes, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Change a chunk's arrays and store them with a correct checksum."""
    raw = get_raw(path, key)
    arrays = {name: array.copy() for name, array in decode_arrays(memoryview(raw)[:-8]).items()}
    change(arrays)
    put_raw(path, {key: reseal(key, bytes(encode_arrays(arrays)))})


def meta_bytes(meta: dict) -> bytes:
    """``__meta__`` with a correct checksum."""
    meta = {k: v for k, v in meta.items() if k != "checksum"}
    canonical = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps({**meta, "checksum": f"xxh3_64:{xxhash.xxh3_64_hexdigest(canonical)}"}, sort_keys=True).encode()


def rewrite_meta(path: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads(get_raw(path, META_KEY))
    change(meta)
    put_raw(path, {META_KEY: meta_bytes(meta)})


def read_everything(path: Path) -> None:
    store = Store(path)
    for split in store.splits:
        store.read_split(split)


def assert_one_line(exc: BaseException, *parts: str) -> str:
    message = str(exc)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------------------------
# Item 1: the writer enforces the batch contract before committing a chunk
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("column, row, value, reason", [
    ("label", 20, np.nan, "label of row 4 is nan"),
    ("label", 21, 7.0, "label of row 5 is 7.0"),
    ("sparse", 18, 50, "field a has id 50 in row 2"),
    ("sparse", 19, -1, "field a has id -1 in row 3"),
    ("dense", 17, np.inf, "dense field x is inf in row 1"),
])
def test_writer_refuses_a_chunk_that_breaks_the_contract(tmp_path, column, row, value, reason):
    path = tmp_path / "s.lmdb"
    bad = rows(40)
    if column == "sparse":
        bad["sparse"][row, 0] = value
    else:
        bad[column][row] = value
    with pytest.raises(ContractError) as info:
        with StoreWriter(path, SCHEMA, chunk_rows=CHUNK_ROWS) as writer:
            writer.append("train", bad)
            writer.commit()
    assert_one_line(info.value, f"cannot build store {path}", "chunk 1 of split 'train' (rows 16..31 of the split)",
                    reason, f"nothing was created at {path}")
    assert [p.name for p in tmp_path.iterdir()] == [LOCK]


def test_writer_contract_failure_keeps_the_old_store_and_aborts_by_itself(tmp_path):
    path = tmp_path / "s.lmdb"
    old = build(path, n=20).read_split("train")
    writer = StoreWriter(path, SCHEMA, chunk_rows=CHUNK_ROWS, overwrite=True)  # no `with`: the writer aborts itself
    bad = rows(40)
    bad["label"][39] = np.nan  # in the last, partial chunk: found at commit
    writer.append("train", bad)
    with pytest.raises(ContractError) as info:
        writer.commit()
    assert_one_line(info.value, "chunk 2 of split 'train'", f"the existing store at {path} is unchanged")
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK, "s.lmdb"]
    np.testing.assert_array_equal(Store(path).read_split("train")["sparse"], old["sparse"])


def test_writer_checks_sequence_ids_against_the_shared_field(tmp_path):
    schema = Schema((Field("item", "sparse", vocab_size=10), Field("history", "sequence", max_len=3, shares="item")))
    history = np.array([[0, 1, 9], [2, 3, 10]], dtype=np.int32)
    with pytest.raises(ContractError, match="field history has id 10 in row 1; its ids must lie in \\[0, 10\\)"):
        with StoreWriter(tmp_path / "s.lmdb", schema) as writer:
            writer.append("train", {"label": np.zeros(2, np.float32), "sparse": np.ones((2, 1), np.int32), "seq:history": history})
            writer.commit()
    assert not (tmp_path / "s.lmdb").exists()


# ---------------------------------------------------------------------------------------------
# Item 5: checksums, range checks at decode, verify
# ---------------------------------------------------------------------------------------------
def test_flipped_bytes_in_a_chunk_are_refused_when_read(copy):
    raw = bytearray(get_raw(copy, CHUNK_1))
    arrays = decode_arrays(memoryview(raw)[:-8])
    position = arrays["sparse"].ctypes.data - np.frombuffer(raw, np.uint8).ctypes.data
    raw[position] += 1  # id 16 -> 17 of field a: still in range, so only the checksum can tell
    put_raw(copy, {CHUNK_1: bytes(raw)})
    store = Store(copy)
    np.testing.assert_array_equal(store.read_chunk("train", 0)["sparse"], rows(16)["sparse"])  # other chunks still read
    with pytest.raises(StoreError) as info:
        store.read_chunk("train", 1)
    assert_one_line(info.value, f"store {copy}", "chunk 1 of split 'train'", "checksum mismatch")
    with pytest.raises(StoreError, match="chunk 1 of split 'train'"):
        list(BatchReader(store, "train", 8).iter_epoch(0))
    problems = store.verify()
    assert len(problems) == 1 and "chunk 1 of split 'train'" in problems[0] and "checksum" in problems[0]


def test_vocabulary_size_changed_in_meta_is_refused(copy):
    meta = json.loads(get_raw(copy, META_KEY))
    meta["schema"]["fields"][0]["vocab_size"] = 60
    put_raw(copy, {META_KEY: json.dumps(meta, sort_keys=True).encode()})  # the old checksum stays
    with pytest.raises(StoreError) as info:
        Store(copy)
    assert_one_line(info.value, f"store {copy}", "__meta__", "checksum")


@pytest.mark.parametrize("change, reason", [
    (lambda a: a["label"].__setitem__(3, 7.0), "label of row 3 is 7.0"),
    (lambda a: a["label"].__setitem__(4, np.nan), "label of row 4 is nan"),
    (lambda a: a["sparse"].__setitem__((slice(None), 1), a["sparse"][:, 1] + 1), "field b has id 7"),
    (lambda a: a["sparse"].__setitem__((0, 0), -3), "field a has id -3 in row 0"),
    (lambda a: a["dense"].__setitem__((2, 0), np.nan), "dense field x is nan in row 2"),
])
def test_values_out_of_range_are_refused_even_with_a_recomputed_checksum(copy, change, reason):
    rewrite_chunk(copy, CHUNK_1, change)
    store = Store(copy)
    with pytest.raises(StoreError) as info:
        store.read_chunk("train", 1)
    assert_one_line(info.value, f"store {copy}", "chunk 1 of split 'train'", reason)
    with pytest.raises(StoreError, match=reason.replace("(", "\\(")):
        for _ in BatchReader(store, "train", 8, shuffle=True).iter_epoch(0):
            pass
    assert any(reason in line for line in store.verify())


def test_verify_of_a_healthy_store_is_empty_and_reports_progress(copy):
    store = Store(copy)
    progress = []
    assert store.verify(lambda done, total: progress.append((done, total))) == []
    total = 3 + 1 + 2  # chunks of train and valid, two vocabularies
    assert progress == [(i, total) for i in range(1, total + 1)]
    assert store.checksummed and len(store.build_id) == 32


def test_verify_finds_vocabularies_and_counts_that_disagree_with_meta(copy):
    def smaller_vocabulary_and_more_positives(meta):
        meta["schema"]["fields"][1]["vocab_size"] = 8  # field b: vocabulary array has 6 tokens
        meta["splits"]["valid"]["positives"] += 1

    rewrite_meta(copy, smaller_vocabulary_and_more_positives)
    key = b"array/vocab/a"
    put_raw(copy, {key: get_raw(copy, key)[:-1] + b"\0"})  # one byte of the checksum changed
    problems = Store(copy).verify()
    assert len(problems) == 3, problems
    assert any("array vocab/a" in p and "checksum mismatch" in p for p in problems)
    assert any("array/vocab/b holds (6,) tokens" in p and "vocab_size 8" in p for p in problems)
    assert any("split 'valid' has 3 positive rows, __meta__ says 4" in p for p in problems)
    with pytest.raises(StoreError, match="array vocab/a .* is damaged: checksum mismatch"):
        Store(copy).vocabulary("a")


def test_verify_reports_chunks_missing_or_unlisted(copy):
    put_raw(copy, {CHUNK_1: None, b"chunk/train/00000007": get_raw(copy, b"chunk/train/00000000")})
    problems = Store(copy).verify()
    assert any("chunk 1 of split 'train'" in p and "is missing" in p for p in problems), problems
    assert any("chunk/train/00000007 is not listed in __meta__" in p for p in problems), problems


def _write_format_1_store(path: Path, label_of_row_0: float = 0.0) -> None:
    """A store as ctrkit 0.1 wrote it: no checksums, no build id."""
    columns = rows(20)
    columns["label"][0] = label_of_row_0
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"chunk/train/00000000", bytes(encode_arrays(columns)))
        meta = {"format": "ctrkit-store", "format_version": 1, "schema": SCHEMA.to_dict(), "chunk_rows": 20,
                "splits": {"train": {"rows": 20, "chunk_rows": [20], "labeled": True,
                                      "positives": int(columns["label"].sum())}}}
        txn.put(META_KEY, json.dumps(meta, sort_keys=True).encode())
    env.close()


def test_format_1_stores_are_read_and_verified_with_a_warning_about_their_missing_checksums(tmp_path):
    _write_format_1_store(tmp_path / "v1.lmdb")
    store = Store(tmp_path / "v1.lmdb")
    assert not store.checksummed and store.build_id is None
    np.testing.assert_array_equal(store.read_split("train")["sparse"], rows(20)["sparse"])
    assert store.verify() == []  # an old store is not a damaged one
    assert store.checksum_warning == (
        f"store {store.path} has no checksums (format version 1): flipped bytes that keep ids and labels in range "
        "cannot be detected; rebuild it with `ctrkit preprocess` to add them"
    )
    assert build(tmp_path / "v2.lmdb").checksum_warning is None
    _write_format_1_store(tmp_path / "bad.lmdb", label_of_row_0=7.0)
    with pytest.raises(StoreError, match="chunk 0 of split 'train'.*label of row 0 is 7.0"):
        Store(tmp_path / "bad.lmdb").read_chunk("train", 0)
    assert any("label of row 0 is 7.0" in p for p in Store(tmp_path / "bad.lmdb").verify())


def test_inspect_verify_passes_a_format_1_store_with_a_warning_and_fails_a_damaged_one(tmp_path, capsys):
    from ctrkit.cli import main

    _write_format_1_store(tmp_path / "v1.lmdb")
    assert main(["inspect", "--verify", str(tmp_path / "v1.lmdb")]) == 0
    out, err = capsys.readouterr()
    assert out == "verified: 1 chunks, 20 rows, no problems (ids, labels and counts only: no checksums)\n"
    assert err.startswith("ctrkit inspect: warning: store ") and "rebuild it with `ctrkit preprocess`" in err
    assert len(err.strip().splitlines()) == 1
    _write_format_1_store(tmp_path / "bad.lmdb", label_of_row_0=7.0)
    assert main(["inspect", "--verify", str(tmp_path / "bad.lmdb")]) == 1
    out, err = capsys.readouterr()
    assert "label of row 0 is 7.0" in out and "1 problem found" in out and "warning" in err


# ---------------------------------------------------------------------------------------------
# Item 3: a store replaced under a running reader
# ---------------------------------------------------------------------------------------------
def test_store_replaced_under_a_loader_worker_is_an_error(tmp_path):
    from ctrkit.pytorch.loader import make_loader

    path = tmp_path / "s.lmdb"
    store = build(path)
    reader = BatchReader(store, "train", 8)
    replacement = build(path, n=40, start=500, overwrite=True)
    assert replacement.build_id != store.build_id
    with pytest.raises(StoreError) as info:
        list(make_loader(reader, num_workers=1))
    assert str(info.value) == f"store {path} was replaced while in use: built {store.build_id}, now {replacement.build_id}; restart the run"
    # the process that opened the old build keeps reading it by its handle, never a mixture
    np.testing.assert_array_equal(store.read_split("train")["sparse"], rows(40)["sparse"])


def test_store_identity_is_the_build_id_or_the_metadata_of_an_old_store(tmp_path):
    store = build(tmp_path / "s.lmdb")
    assert store.identity == store.build_id and len(store.build_id) == 32
    assert build(tmp_path / "t.lmdb").identity != store.identity
    _write_format_1_store(tmp_path / "v1.lmdb")
    old = Store(tmp_path / "v1.lmdb")
    assert old.build_id is None and old.identity.startswith("at ? (meta ") and old.identity == Store(old.path).identity


def test_store_reopened_after_replacement_is_an_error(tmp_path):
    path = tmp_path / "s.lmdb"
    store = build(path)
    store.close()
    replacement = build(path, n=40, start=500, overwrite=True)
    with pytest.raises(StoreError) as info:
        store.read_chunk("train", 0)
    assert_one_line(info.value, f"built {store.build_id}, now {replacement.build_id}")


# ---------------------------------------------------------------------------------------------
# Item 9: a truncated data.mdb
# ---------------------------------------------------------------------------------------------
READ_ALL = """
import sys
from ctrkit.data.store import Store
from ctrkit.errors import CtrkitError
try:
    store = Store(sys.argv[1])
    for split in store.splits:
        store.read_split(split)
except CtrkitError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
"""


def test_truncated_store_is_refused_instead_of_killing_the_process(tmp_path):
    path = tmp_path / "s.lmdb"
    with StoreWriter(path, SCHEMA, chunk_rows=256) as writer:
        writer.append("train", rows(4000))
        writer.commit({"note": "n" * 20_000})  # a long __meta__ lands on new pages at the file's end
    data = path / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, size // 2)
    ctrkit = Path(sys.executable).parent / "ctrkit"
    for command in ([str(ctrkit), "inspect", str(path)], [sys.executable, "-c", READ_ALL, str(path)]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (command, result.returncode, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"store {path} is truncated: data.mdb has {size // 2:,} bytes, its last page needs" in lines[0], lines


# ---------------------------------------------------------------------------------------------
# Item 10: corrupt metadata and chunk headers
# ---------------------------------------------------------------------------------------------
def _header(entries) -> bytes:
    header = json.dumps(entries).encode()
    return struct.pack("<I", len(header)) + header + bytes(64)


def _drop(key: str) -> Callable[[dict], None]:
    return lambda meta: meta.pop(key)


META_DAMAGE = {
    "invalid JSON": (lambda p: put_raw(p, {META_KEY: b'{"format": "ctrkit-store", "format_'}), "key __meta__ is not valid JSON"),
    "no schema": (lambda p: rewrite_meta(p, _drop("schema")), "key __meta__ has no 'schema'"),
    "no splits": (lambda p: rewrite_meta(p, _drop("splits")), "key __meta__ has no 'splits'"),
    "bad schema": (lambda p: rewrite_meta(p, lambda m: m["schema"].update(fields=[{"name": "a"}])), "'schema' is damaged"),
    "rows disagree": (lambda p: rewrite_meta(p, lambda m: m["splits"]["train"].update(rows=41)), "split 'train': 'rows' is 41, but its chunks hold 40"),
    "split not an object": (lambda p: rewrite_meta(p, lambda m: m["splits"].update(train=[1])), "split 'train' is not an object"),
    "version not a number": (lambda p: rewrite_meta(p, lambda m: m.update(format_version="2")), "invalid format_version '2'"),
}


@pytest.mark.parametrize("damage", sorted(META_DAMAGE))
def test_corrupt_metadata_is_a_one_line_store_error(copy, damage):
    make, reason = META_DAMAGE[damage]
    make(copy)
    with pytest.raises(StoreError) as info:
        Store(copy)
    assert_one_line(info.value, f"store {copy}", reason)


CHUNK_DAMAGE = {
    "header not JSON": (b"\x10\0\0\0" + b"\xff" * 80, "header is not JSON"),
    "header length past the end": (b"\xff\xff\0\0" + b"[]" * 8, "header length 65535 runs past the end"),
    "too short": (b"\x01", "too short for a header"),
    "array past the end": (_header([["label", "<f4", [16], 0], ["sparse", "<i4", [16, 2], 64], ["dense", "<f4", [16, 1], 192]]),
                           "array 'label' (16,) float32 ends at byte"),
    "object dtype": (_header([["label", "|O", [1], 0]]), "not a plain number type"),
    "unknown dtype": (_header([["label", "<q9", [1], 0]]), "unknown dtype"),
    "bad entry": (_header([["label", "<f4"]]), "is not [name, dtype, shape, offset]"),
}


@pytest.mark.parametrize("damage", sorted(CHUNK_DAMAGE))
def test_corrupt_chunk_headers_are_a_one_line_store_error(copy, damage):
    body, reason = CHUNK_DAMAGE[damage]
    put_raw(copy, {CHUNK_1: reseal(CHUNK_1, body)})
    with pytest.raises(StoreError) as info:
        read_everything(copy)
    assert_one_line(info.value, f"store {copy}", "chunk 1 of split 'train' (key chunk/train/00000001)", reason)


def test_chunk_without_its_sparse_column_is_a_store_error(copy):
    rewrite_chunk(copy, CHUNK_1, lambda arrays: arrays.pop("sparse"))
    with pytest.raises(StoreError) as info:
        read_everything(copy)
    assert_one_line(info.value, f"store {copy}", "chunk 1 of split 'train'", "no 'sparse' column")


def test_damaged_lmdb_pages_are_a_store_error(copy):
    data = bytearray((copy / "data.mdb").read_bytes())
    page = 4096
    for start in range(2 * page, len(data), page):  # every page but the two meta pages
        data[start : start + page] = bytes(page)
    (copy / "data.mdb").write_bytes(bytes(data))
    with pytest.raises(StoreError) as info:
        read_everything(copy)
    assert_one_line(info.value, f"store {copy}", "cannot read key __meta__", "MDB_CORRUPTED")


# ---------------------------------------------------------------------------------------------
# Items 8 and 13: debris of killed builders, the target lock, a full disk
# ---------------------------------------------------------------------------------------------
def test_writer_removes_the_debris_of_dead_builders_only(tmp_path):
    path = tmp_path / "s.lmdb"
    dead = dead_pid()
    (tmp_path / f".s.lmdb.tmp-{dead}").mkdir()
    (tmp_path / f".s.lmdb.tmp-{dead}" / "data.mdb").write_bytes(b"\0" * 4096)
    (tmp_path / f".s.lmdb.spill-{dead}-0").write_bytes(b"\0" * 4096)
    (tmp_path / ".s.lmdb.spill-1-0").write_bytes(b"live")  # pid 1 is alive: another build's spill
    writer = StoreWriter(path, SCHEMA)
    assert len(writer.cleaned) == 2 and all("left by a killed run" in line for line in writer.cleaned)
    writer.append("train", rows(5))
    writer.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK, ".s.lmdb.spill-1-0", "s.lmdb"]


def test_store_left_between_the_renames_of_an_overwrite_is_restored(tmp_path):
    path = tmp_path / "s.lmdb"
    build(path)
    dead = dead_pid()
    os.rename(path, tmp_path / f".s.lmdb.old-{dead}")  # killed after moving the old store aside
    np.testing.assert_array_equal(Store(path).read_split("train")["label"], rows(40)["label"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK, "s.lmdb"]
    os.rename(path, tmp_path / f".s.lmdb.old-{dead}")
    with pytest.raises(StoreError, match="already exists"):  # the writer restores it too, then refuses to replace it
        StoreWriter(path, SCHEMA)
    assert path.is_dir()


TRY_TO_BUILD = """
import sys
import numpy as np
from ctrkit.data.store import StoreWriter
from ctrkit.errors import CtrkitError
from ctrkit.schema import Field, Schema
try:
    with StoreWriter(sys.argv[1], Schema((Field("a", "sparse", vocab_size=3),)), overwrite=True) as writer:
        writer.append("train", {"label": np.zeros(2, np.float32), "sparse": np.zeros((2, 1), np.int32)})
        writer.commit()
except CtrkitError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
"""


def test_a_second_builder_of_the_same_target_fails_while_the_first_runs(tmp_path):
    path = tmp_path / "s.lmdb"
    writer = StoreWriter(path, SCHEMA)
    second = subprocess.run([sys.executable, "-c", TRY_TO_BUILD, str(path)], capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"{path} is being written by ctrkit pid {os.getpid()} (building a store) right now" in second.stderr
    writer.append("train", rows(3))
    writer.commit()
    assert Store(path).splits["train"].rows == 3
    third = subprocess.run([sys.executable, "-c", TRY_TO_BUILD, str(path)], capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr[-2000:]  # released at commit


def test_a_locked_target_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "s.lmdb"
    with open(tmp_path / LOCK, "a+") as handle:  # another open file description: flock conflicts in-process too
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.write("ctrkit pid 4242 (preprocess)")
        handle.flush()
        with pytest.raises(OutputError, match="being written by ctrkit pid 4242 \\(preprocess\\)"):
            StoreWriter(path, SCHEMA)
    assert not path.exists()


@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_while_building_is_a_one_line_error_that_keeps_what_was_there(full_disk, existing):
    directory = full_disk(256)
    path = directory / "s.lmdb"
    if existing:
        build(path, n=20)
    with pytest.raises(StoreError) as info:
        with StoreWriter(path, SCHEMA, chunk_rows=4096, overwrite=existing) as writer:
            writer.append("train", rows(40_000))  # 640 KB of columns into a 256 KiB file system
            writer.commit()
    kept = f"the existing store at {path} is unchanged" if existing else f"nothing was created at {path}"
    assert_one_line(info.value, f"cannot write store {path}: no space left on device; {kept}")
    assert sorted(p.name for p in directory.iterdir()) == [LOCK] + (["s.lmdb"] if existing else [])
    if existing:
        np.testing.assert_array_equal(Store(path).read_split("train")["label"], rows(20)["label"])


def test_disk_already_full_when_the_build_starts(full_disk):
    directory = full_disk(64)
    with open(directory / "ballast", "wb") as ballast:  # fill the file system to the last byte
        try:
            ballast.write(b"\0" * (1 << 20))
        except OSError:
            pass
    path = directory / "s.lmdb"
    with pytest.raises(StoreError) as info:
        with StoreWriter(path, SCHEMA) as writer:
            writer.append("train", rows(100))
            writer.commit()
    assert_one_line(info.value, f"cannot write store {path}: no space left on device; nothing was created at {path}")
    assert not path.exists() and not any(p.name.startswith(".s.lmdb.tmp") for p in directory.iterdir())
