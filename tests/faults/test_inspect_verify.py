"""``ctrkit inspect``: ``--verify`` finds damaged stores, and damaged metadata gives one line, not a
traceback (issue 7, items 5 and 10)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import lmdb
import pytest
import xxhash

from ctrkit.cli import main
from ctrkit.data.criteo import CriteoOptions, preprocess_criteo
from ctrkit.data.store import Store
from ctrkit.data.synthetic import write_synthetic_criteo

META = b"__meta__"


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    """A small store of 3 splits in chunks of 500 rows (several chunks per split)."""
    directory = tmp_path_factory.mktemp("healthy")
    raw = directory / "synth.tsv"
    write_synthetic_criteo(raw, 4000, seed=2)
    out = directory / "s.lmdb"
    preprocess_criteo([raw], out, CriteoOptions(min_count=2, chunk_rows=500), progress=False)
    return out


@pytest.fixture
def copy_of_healthy(healthy, tmp_path):
    """Fresh copies of the healthy store to damage with LMDB directly.

    A copy is damaged before anything in this process opens it as a Store: LMDB allows one open
    environment per file and process, and the Store keeps its read handle.
    """
    copies = iter(range(100))

    def make() -> Path:
        copy = tmp_path / f"copy{next(copies)}.lmdb"
        shutil.copytree(healthy, copy)
        return copy

    return make


@pytest.fixture
def damaged(copy_of_healthy):
    return copy_of_healthy()


def read_value(store: Path, key: bytes) -> bytes:
    with lmdb.open(str(store), subdir=True, readonly=True, lock=False) as env, env.begin() as txn:
        return bytes(txn.get(key))


def write_value(store: Path, key: bytes, value: bytes) -> None:
    with lmdb.open(str(store), subdir=True, map_size=1 << 30) as env, env.begin(write=True) as txn:
        txn.put(key, value)


def edit_meta(store: Path, change) -> None:
    """Change ``__meta__`` and give it a valid checksum again."""
    meta = json.loads(read_value(store, META))
    change(meta)
    write_value(store, META, reseal_meta(meta))


def inspect(capsys, *args) -> tuple[int, str, str]:
    rc = main(["inspect", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("ctrkit inspect: error: "), err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# item 10 (inspect side): damaged metadata
# ---------------------------------------------------------------------------------------------
def _drop_optional_parts(meta: dict) -> None:
    for key in ("created", "ctrkit_version", "source_format", "encoder"):
        meta.pop(key, None)
    meta["options"] = "not a mapping"
    meta["sources"] = [{"role": "raw"}, "not a mapping"]
    meta["bad_rows"] = {"count": 2}  # examples lost


def test_describe_survives_missing_optional_metadata(damaged, capsys):
    edit_meta(damaged, _drop_optional_parts)
    rc, out, err = inspect(capsys, damaged)
    assert rc == 0 and err == ""
    assert "total           4,000" in out
    assert "source file ? (raw): ? lines, ? skipped, ? bytes" in out
    assert "malformed   2 rows skipped" in out


@pytest.mark.parametrize("value, names", [
    (b"{not json", "__meta__"),
    (json.dumps({"format": "ctrkit-store", "format_version": 1, "splits": {}}).encode(), "schema"),
])
def test_unreadable_metadata_gives_one_line(damaged, capsys, value, names):
    write_value(damaged, META, value)
    for flags in ((), ("--verify",)):
        rc, out, err = inspect(capsys, damaged, *flags)
        message = one_error_line(err)
        assert rc == 2 and str(damaged) in message and names in message


# ---------------------------------------------------------------------------------------------
# item 5: inspect --verify
# ---------------------------------------------------------------------------------------------
def chunk_count(store: Path) -> tuple[int, int]:
    splits = Store(store).splits.values()
    return sum(s.num_chunks for s in splits), sum(s.rows for s in splits)


def test_healthy_store_verifies(healthy, capsys):
    chunks, rows = chunk_count(healthy)
    assert chunks >= 8 and rows == 4000
    rc, out, err = inspect(capsys, healthy, "--verify")
    assert rc == 0, out + err
    assert out.strip() == f"verified: {chunks:,} chunks, {rows:,} rows, no problems"


# The sealing of format 2 as documented in ctrkit/data/store.py, rewritten here so that a damage
# can carry a valid checksum (someone "fixing" a store by hand): the range checks must still catch it.
def reseal_value(key: bytes, body: bytes) -> bytes:
    checksum = xxhash.xxh3_64_intdigest(body, seed=xxhash.xxh3_64_intdigest(key))
    return body + struct.pack("<Q", checksum)


def reseal_meta(meta: dict) -> bytes:
    meta = {k: v for k, v in meta.items() if k != "checksum"}
    canonical = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps({**meta, "checksum": f"xxh3_64:{xxhash.xxh3_64_hexdigest(canonical)}"}).encode()


def chunk_body(store: Path, key: bytes) -> tuple[bytearray, int]:
    """The value of a chunk without its checksum trailer, and where its column data starts."""
    body = bytearray(read_value(store, key)[:-8])
    (header_len,) = struct.unpack_from("<I", body, 0)
    return body, (4 + header_len + 63) // 64 * 64


def column_offset(body: bytes, name: str) -> int:
    (header_len,) = struct.unpack_from("<I", body, 0)
    entries = json.loads(bytes(body[4 : 4 + header_len]))
    data_start = (4 + header_len + 63) // 64 * 64
    return data_start + next(start for n, _, _, start in entries if n == name)


def verify_problems(capsys, store: Path) -> list[str]:
    chunks, rows = chunk_count_of_meta(store)
    rc, out, err = inspect(capsys, store, "--verify")
    assert rc == 1, out + err
    lines = out.strip().splitlines()
    assert lines[-1].startswith(f"{store}: {len(lines) - 1} problem") and lines[-1].endswith(f"in {chunks:,} chunks, {rows:,} rows")
    return lines[:-1]


def chunk_count_of_meta(store: Path) -> tuple[int, int]:
    splits = json.loads(read_value(store, META))["splits"].values()
    return sum(len(s["chunk_rows"]) for s in splits), sum(s["rows"] for s in splits)


KEY = b"chunk/train/00000001"
WHERE = "chunk 1 of split 'train' (key chunk/train/00000001)"


def test_flipped_bytes_in_one_chunk_fail_verification(damaged, capsys):
    value = bytearray(read_value(damaged, KEY))
    at = column_offset(value, "sparse") + 100
    value[at : at + 4] = bytes(b ^ 0xFF for b in value[at : at + 4])
    write_value(damaged, KEY, bytes(value))
    (problem,) = verify_problems(capsys, damaged)
    assert WHERE in problem and "checksum mismatch" in problem


def test_label_set_to_7_fails_verification_with_or_without_a_valid_checksum(copy_of_healthy, capsys):
    stale, resealed = copy_of_healthy(), copy_of_healthy()
    body, _ = chunk_body(stale, KEY)
    struct.pack_into("<f", body, column_offset(body, "label") + 4 * 3, 7.0)  # row 3 of the chunk
    write_value(stale, KEY, bytes(body) + read_value(stale, KEY)[-8:])  # the old checksum
    (problem,) = verify_problems(capsys, stale)
    assert WHERE in problem and "checksum mismatch" in problem

    write_value(resealed, KEY, reseal_value(KEY, bytes(body)))
    problems = verify_problems(capsys, resealed)
    assert any(WHERE in p and "label" in p and "7" in p for p in problems), problems


def test_vocabulary_size_changed_in_meta_fails(copy_of_healthy, capsys):
    stale, resealed = copy_of_healthy(), copy_of_healthy()
    meta = json.loads(read_value(stale, META))
    field = next(f for f in meta["schema"]["fields"] if f["name"] == "C1")
    field["vocab_size"] = 2  # ids 2.. of C1 are now out of range, and array/vocab/C1 is too long

    write_value(stale, META, json.dumps(meta).encode())  # the checksum no longer matches
    rc, _, err = inspect(capsys, stale, "--verify")
    assert rc == 2 and "__meta__" in one_error_line(err) and "checksum" in err

    write_value(resealed, META, reseal_meta(meta))
    problems = verify_problems(capsys, resealed)
    assert any("array/vocab/C1" in p and "vocab_size 2" in p for p in problems), problems
    assert any("chunk/train/00000000" in p and "C1" in p for p in problems), problems


def test_progress_callback_reaches_the_total(healthy):
    from ctrkit.commands.inspect import verify_store

    calls = []
    store = Store(healthy)
    original = store.verify
    store.verify = lambda on_progress=None: original(on_progress=lambda d, t: (calls.append((d, t)), on_progress(d, t)))
    assert verify_store(store, progress=False) == []
    assert calls and calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == list(range(1, calls[-1][1] + 1))
