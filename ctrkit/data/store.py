"""The LMDB store: rows in chunks of contiguous column arrays, plus metadata and vocabularies.

Layout of one store (an LMDB environment directory)::

    __meta__                  JSON completion record: format, version, schema, splits, options,
                              sources, vocabulary index, preprocessing summary. Written last.
    chunk/<split>/<index>     one chunk: a small JSON header + 64-byte aligned raw column arrays
                              (``label`` float32 [n], ``sparse`` int32 [n, n_sparse], ``dense``
                              float32 [n, n_dense], ``seq:<name>`` int32 [n, L]).
    array/<name>              one raw numpy array (vocabularies: ``array/vocab/<field>``).

Every value is raw bytes decoded with ``np.frombuffer``; nothing is pickled. A store is built
under a temporary name beside its final path and renamed into place after ``__meta__`` is
committed and synced, so a store either is complete or does not exist under its name; a directory
without ``__meta__`` (a copy of an interrupted build) refuses to open.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from ctrkit import __version__
from ctrkit.errors import StoreError
from ctrkit.schema import Schema

FORMAT_NAME = "ctrkit-store"
FORMAT_VERSION = 1
META_KEY = b"__meta__"
DEFAULT_CHUNK_ROWS = 65_536
_ALIGN = 64
_HEADER_LEN = struct.Struct("<I")


# ---------------------------------------------------------------------------------------------
# Binary codec for a group of named arrays (a chunk) and for one array.
# ---------------------------------------------------------------------------------------------
def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def encode_arrays(arrays: dict[str, np.ndarray]) -> bytearray:
    """Pack named arrays into one buffer: ``u32 header length | JSON header | aligned data``."""
    entries, offset = [], 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        entries.append([name, array.dtype.str, list(array.shape), offset])
        offset = _align(offset + array.nbytes)
    header = json.dumps(entries).encode()
    data_start = _align(_HEADER_LEN.size + len(header))
    out = bytearray(data_start + offset)
    _HEADER_LEN.pack_into(out, 0, len(header))
    out[_HEADER_LEN.size : _HEADER_LEN.size + len(header)] = header
    for (name, _, _, start), array in zip(entries, arrays.values()):
        raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        out[data_start + start : data_start + start + raw.size] = memoryview(raw)
    return out


def decode_arrays(buffer: bytes | memoryview) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_arrays`; arrays are read-only views of ``buffer`` (no copy)."""
    (header_len,) = _HEADER_LEN.unpack_from(buffer, 0)
    entries = json.loads(bytes(buffer[_HEADER_LEN.size : _HEADER_LEN.size + header_len]))
    data_start = _align(_HEADER_LEN.size + header_len)
    arrays = {}
    for name, dtype, shape, start in entries:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=data_start + start)
        arrays[name] = flat.reshape(shape)
    return arrays


def chunk_key(split: str, index: int) -> bytes:
    return f"chunk/{split}/{index:08d}".encode()


def array_key(name: str) -> bytes:
    return f"array/{name}".encode()


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
# LMDB allows one environment per file per process, so every Store of the same file in a process
# shares one read-only handle. The key holds the inode (a replaced store is a new file) and the
# pid: a forked child (a loader worker) closes the handles it inherited and opens its own.
_READ_ENVIRONMENTS: dict[tuple[str, int, int], lmdb.Environment] = {}


def _open_readonly(path: Path) -> lmdb.Environment:
    pid = os.getpid()
    for key in [k for k in _READ_ENVIRONMENTS if k[2] != pid]:
        _READ_ENVIRONMENTS.pop(key).close()  # unmaps the child's copy only; MDB_NOLOCK holds no reader slot
    data_file = path / "data.mdb"
    key = (str(path.resolve()), data_file.stat().st_ino, pid)
    env = _READ_ENVIRONMENTS.get(key)
    if env is None:
        for stale in [k for k in _READ_ENVIRONMENTS if k[0] == key[0]]:
            _READ_ENVIRONMENTS.pop(stale).close()  # the store at this path was replaced
        try:
            env = lmdb.open(key[0], readonly=True, lock=False, subdir=True, max_readers=4096, max_dbs=0)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        _READ_ENVIRONMENTS[key] = env
    return env


@dataclass(frozen=True)
class SplitInfo:
    """Rows of one split and how they are cut into chunks."""

    name: str
    rows: int
    chunk_rows: tuple[int, ...]
    labeled: bool = True
    positives: int = 0

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_rows)

    @property
    def ctr(self) -> float:
        return self.positives / self.rows if self.rows and self.labeled else float("nan")


class Store:
    """A read-only view of a complete store.

    The metadata is read once at construction. The LMDB environment is opened lazily, once per
    process (LMDB handles must not cross a ``fork``), read-only and without the lock file, so the
    store can be read by many loader workers and from read-only media.

    Example::

        store = Store("criteo.lmdb")
        store.splits["train"].rows
        chunk = store.read_chunk("train", 0)   # {"label": (n,), "sparse": (n, 39)}
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._env: lmdb.Environment | None = None
        self._env_pid: int | None = None
        self.meta = self._read_meta()
        self.schema = Schema.from_dict(self.meta["schema"])
        self.splits = {
            name: SplitInfo(
                name=name,
                rows=int(info["rows"]),
                chunk_rows=tuple(int(n) for n in info["chunk_rows"]),
                labeled=bool(info.get("labeled", True)),
                positives=int(info.get("positives", 0)),
            )
            for name, info in self.meta["splits"].items()
        }

    # -- opening -----------------------------------------------------------------------------
    def _read_meta(self) -> dict[str, Any]:
        path = self.path
        if not path.exists():
            raise StoreError(f"no store at {path}: run `ctrkit preprocess` to build one")
        if not path.is_dir() or not (path / "data.mdb").is_file():
            raise StoreError(f"{path} is not a ctrkit store (an LMDB directory holding data.mdb)")
        with self._environment().begin(buffers=False) as txn:
            raw = txn.get(META_KEY)
        if raw is None:
            raise StoreError(
                f"{path} is an incomplete store: it has no completion record, so the run that built "
                "it did not finish. Delete it and run `ctrkit preprocess` again."
            )
        meta = json.loads(raw)
        if meta.get("format") != FORMAT_NAME:
            raise StoreError(f"{path} is not a ctrkit store (format {meta.get('format')!r})")
        if int(meta.get("format_version", -1)) > FORMAT_VERSION:
            raise StoreError(
                f"{path} has store format version {meta['format_version']}, newer than this ctrkit "
                f"understands ({FORMAT_VERSION}); upgrade ctrkit"
            )
        return meta

    def _environment(self) -> lmdb.Environment:
        if self._env is None or self._env_pid != os.getpid():
            self._env = _open_readonly(self.path)
            self._env_pid = os.getpid()
        return self._env

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_env"] = None  # never ship an LMDB handle to another process
        state["_env_pid"] = None
        return state

    def close(self) -> None:
        """Forget this object's handle; the process-wide environment stays open for other readers."""
        self._env = None

    # -- reading -----------------------------------------------------------------------------
    def split(self, name: str) -> SplitInfo:
        try:
            return self.splits[name]
        except KeyError:
            raise StoreError(f"store {self.path} has no split {name!r} (it has {sorted(self.splits)})") from None

    def read_chunk(self, split: str, index: int) -> dict[str, np.ndarray]:
        """Arrays of one chunk (read-only numpy views of one bytes object copied out of LMDB)."""
        with self._environment().begin(buffers=False) as txn:
            raw = txn.get(chunk_key(split, index))
        if raw is None:
            raise StoreError(f"store {self.path}: chunk {index} of split {split!r} is missing")
        return decode_arrays(raw)

    def read_array(self, name: str) -> np.ndarray:
        with self._environment().begin(buffers=False) as txn:
            raw = txn.get(array_key(name))
        if raw is None:
            raise StoreError(f"store {self.path} has no array {name!r}")
        return decode_arrays(raw)["array"]

    def vocabulary(self, field: str) -> np.ndarray:
        """Raw tokens of a sparse field in id order: element ``i`` has id ``i + 1`` (id 0 is OOV)."""
        return self.read_array(f"vocab/{field}")

    def read_split(self, split: str) -> dict[str, np.ndarray]:
        """All rows of a split in store order (for small splits and tests)."""
        info = self.split(split)
        chunks = [self.read_chunk(split, i) for i in range(info.num_chunks)]
        if not chunks:
            return {}
        return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
class StoreWriter:
    """Builds a store under a temporary name; :meth:`commit` makes it appear at ``path``.

    Rows are appended per split in any block size and cut into chunks of ``chunk_rows``. Used as a
    context manager, an exception removes the temporary directory and leaves ``path`` untouched.

    Example::

        with StoreWriter("out.lmdb", schema) as writer:
            writer.append("train", {"label": y, "sparse": ids})
            writer.put_array("vocab/C1", tokens)
            writer.commit({"options": {...}})
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: Schema,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        overwrite: bool = False,
        initial_map_size: int = 1 << 30,
    ):
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path} already exists; remove it or pass --overwrite")
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot create {self.path}: directory {self.path.parent} does not exist")
        self.schema = schema
        self.chunk_rows = chunk_rows
        self.tmp_path = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}"
        if self.tmp_path.exists():
            shutil.rmtree(self.tmp_path)
        self._map_size = initial_map_size
        self._env = lmdb.open(
            str(self.tmp_path), map_size=self._map_size, subdir=True, sync=False, metasync=False, max_dbs=0
        )
        self._buffers: dict[str, dict[str, np.ndarray]] = {}
        self._filled: dict[str, int] = {}
        self._splits: dict[str, dict[str, Any]] = {}
        self._closed = False

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed:
            self.abort()

    # -- low level ---------------------------------------------------------------------------
    def _put(self, key: bytes, value: bytes | bytearray) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    txn.put(key, value)
                return
            except lmdb.MapFullError:
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)

    def put_array(self, name: str, array: np.ndarray) -> None:
        self._put(array_key(name), encode_arrays({"array": np.asarray(array)}))

    # -- rows --------------------------------------------------------------------------------
    def declare_split(self, split: str, *, labeled: bool = True) -> None:
        """Record a split (so that an empty one still appears in the metadata)."""
        self._splits.setdefault(split, {"rows": 0, "chunk_rows": [], "labeled": labeled, "positives": 0})
        self._filled.setdefault(split, 0)

    def append(self, split: str, columns: dict[str, np.ndarray]) -> None:
        """Append rows to ``split``; every column has the same first dimension."""
        self.declare_split(split, labeled="label" in columns)
        lengths = {len(a) for a in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns of different lengths appended to {split!r}: {lengths}")
        (n,) = lengths
        buffer = self._chunk_buffer(split, columns)
        offset = 0
        while offset < n:
            filled = self._filled[split]
            take = min(self.chunk_rows - filled, n - offset)
            for key, array in columns.items():
                buffer[key][filled : filled + take] = array[offset : offset + take]
            self._filled[split] = filled + take
            offset += take
            if self._filled[split] == self.chunk_rows:
                self._flush(split)

    def _chunk_buffer(self, split: str, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The reused buffer that collects one chunk of ``split`` (allocated on first use)."""
        buffer = self._buffers.get(split)
        if buffer is None:
            buffer = {key: np.empty((self.chunk_rows, *a.shape[1:]), dtype=a.dtype) for key, a in columns.items()}
            self._buffers[split] = buffer
        if buffer.keys() != columns.keys() or any(buffer[k].shape[1:] != a.shape[1:] for k, a in columns.items()):
            raise ValueError(f"rows appended to {split!r} do not match the earlier columns {sorted(buffer)}")
        return buffer

    def _flush(self, split: str) -> None:
        rows = self._filled[split]
        chunk = {key: array[:rows] for key, array in self._buffers[split].items()}
        info = self._splits[split]
        self._put(chunk_key(split, len(info["chunk_rows"])), encode_arrays(chunk))
        info["chunk_rows"].append(rows)
        info["rows"] += rows
        if "label" in chunk:
            info["positives"] += int(np.count_nonzero(chunk["label"] > 0.5))
        self._filled[split] = 0

    # -- completion --------------------------------------------------------------------------
    def commit(self, meta: dict[str, Any] | None = None) -> Store:
        """Flush partial chunks, write the completion record and move the store into place."""
        for split, rows in self._filled.items():
            if rows:
                self._flush(split)
        record = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "ctrkit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "schema": self.schema.to_dict(),
            "chunk_rows": self.chunk_rows,
            "splits": self._splits,
            **(meta or {}),
        }
        self._put(META_KEY, json.dumps(record, sort_keys=True).encode())
        self._env.sync(True)
        self._env.close()
        self._closed = True
        (self.tmp_path / "lock.mdb").unlink(missing_ok=True)  # readers never lock
        _replace_directory(self.tmp_path, self.path)
        return Store(self.path)

    def abort(self) -> None:
        """Discard everything written so far."""
        if not self._closed:
            self._env.close()
            self._closed = True
        shutil.rmtree(self.tmp_path, ignore_errors=True)


def _replace_directory(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` is removed only after the swap."""
    if not target.exists():
        os.rename(source, target)
        return
    trash = target.parent / f".{target.name}.old-{os.getpid()}"
    os.rename(target, trash)
    os.rename(source, target)
    shutil.rmtree(trash, ignore_errors=True)

