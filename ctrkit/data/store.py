"""The LMDB store: rows in chunks of contiguous column arrays, plus metadata and vocabularies.

Layout of one store (an LMDB environment directory holding ``data.mdb``)::

    __meta__                  JSON completion record: format, version, build id, schema, splits,
                              options, sources, preprocessing summary, and its own checksum.
                              Written last.
    chunk/<split>/<index>     one chunk: ``u32`` header length, a JSON header listing
                              ``[name, dtype, shape, offset]``, then each column array 64-byte
                              aligned (``label`` float32 [n], ``sparse`` int32 [n, n_sparse],
                              ``dense`` float32 [n, n_dense], ``seq:<name>`` int32 [n, L]),
                              then the 8-byte checksum trailer.
    array/<name>              one raw numpy array in the same encoding (vocabularies:
                              ``array/vocab/<field>``, int64, element ``i`` has id ``i + 1``).

Every value is raw bytes decoded with ``np.frombuffer``; nothing is pickled.

Format version 2 (this writer) protects every value:

* a chunk or array value ends with an 8-byte little-endian checksum: ``xxh3_64`` of all the bytes
  before it, seeded with ``xxh3_64`` of the value's key, so a value copied under another key does
  not pass either;
* ``__meta__`` is a JSON object whose ``checksum`` member is ``"xxh3_64:<16 hex digits>"`` of the
  canonical JSON of all its other members (``json.dumps(..., sort_keys=True,
  separators=(",", ":"))``);
* ``__meta__`` holds ``build_id``, a random uuid4 hex drawn when the build started.

Format version 1 stores (no trailers, no meta checksum, no build id) are still read and
verified (contract and consistency); :attr:`Store.checksummed` is false for them and
:attr:`Store.checksum_warning` says what that leaves unchecked.

Reading checks everything that could let a damaged store feed a model garbage:

* on open: ``data.mdb`` must be at least as long as LMDB's last used page (a truncated file would
  otherwise kill the process with SIGBUS on the first read past its end), and ``__meta__`` must
  be valid JSON with a matching checksum and consistent splits;
* on every chunk read: its checksum, its header, its row count, and the batch contract
  (:func:`ctrkit.data.contract.check_batch`: labels 0/1, ids below each field's vocabulary size,
  finite dense values), so flipped bytes are refused even if someone recomputed the checksum.
  The checksum is verified on every read; the contract once per process and chunk content (a
  later read whose checksum is the one already checked has the same bytes). ``Store(path,
  check_reads=False)`` skips both; only ``benchmarks/bench_loader.py`` uses it, to show the cost.
  Rows leave LMDB's memory map in one copy (:meth:`Store.read_rows`: straight into the
  concatenated window a reader asked for), made inside the read transaction in which the
  checksum was verified over the same bytes;
* a :class:`Store` pins the build it opened: when a loader worker (a new process) or a reopen
  finds a different build at the path, it raises instead of reading the new store.

Every problem is a one-line :class:`~ctrkit.errors.StoreError` naming the store and the key.
:meth:`Store.verify` checks a whole store (``ctrkit inspect --verify``) and lists the problems.

A store is built under ``.<name>.tmp-<pid>`` beside its final path, while holding the target's
lock (:func:`ctrkit.fileio.target_lock`), and renamed into place after ``__meta__`` is committed
and synced, so a store either is complete or does not exist under its name. An existing store is
replaced only after the new one is complete (``overwrite=True``): it is renamed to
``.<name>.old-<pid>``, the new one renamed into place, the old one removed; a crash between the
two renames is undone by the next writer or reader (:func:`ctrkit.fileio.clean_debris`, which also
removes the temporary directories of killed builders). The writer enforces the batch contract on
every chunk before writing it, so no source can smuggle a NaN label or an out-of-range id into a
store. A full disk or another write failure aborts the build with a one-line
:class:`~ctrkit.errors.StoreError` saying what was kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Sequence

import lmdb
import numpy as np
import xxhash

from ctrkit import __version__
from ctrkit.data.contract import ContractError, check_batch
from ctrkit.errors import StoreError
from ctrkit.fileio import clean_debris, is_disk_full, os_error_message, target_lock, temporary_sibling
from ctrkit.schema import Schema

FORMAT_NAME = "ctrkit-store"
FORMAT_VERSION = 2
FIRST_CHECKSUMMED_VERSION = 2
META_KEY = b"__meta__"
DEFAULT_CHUNK_ROWS = 65_536
CHECKSUM_ALGORITHM = "xxh3_64"
_ALIGN = 64
_HEADER_LEN = struct.Struct("<I")
_CHECKSUM = struct.Struct("<Q")
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: the only dtypes a header may name
_MAX_PROBLEMS = 100


# ---------------------------------------------------------------------------------------------
# Binary codec for a group of named arrays (a chunk) and for one array.
# ---------------------------------------------------------------------------------------------
def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _encode(arrays: dict[str, np.ndarray], trailer: int) -> bytearray:
    """``u32 header length | JSON header | aligned data`` followed by ``trailer`` zero bytes."""
    arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    entries, offset = [], 0
    for name, array in arrays.items():
        entries.append([name, array.dtype.str, list(array.shape), offset])
        offset = _align(offset + array.nbytes)
    header = json.dumps(entries).encode()
    data_start = _align(_HEADER_LEN.size + len(header))
    out = bytearray(data_start + offset + trailer)
    _HEADER_LEN.pack_into(out, 0, len(header))
    out[_HEADER_LEN.size : _HEADER_LEN.size + len(header)] = header
    for (_, _, _, start), array in zip(entries, arrays.values()):
        raw = array.reshape(-1).view(np.uint8)
        out[data_start + start : data_start + start + raw.size] = memoryview(raw)
    return out


def encode_arrays(arrays: dict[str, np.ndarray]) -> bytearray:
    """Pack named arrays into one buffer: ``u32 header length | JSON header | aligned data``."""
    return _encode(arrays, 0)


def decode_arrays(buffer: bytes | memoryview) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_arrays`; arrays are read-only views of ``buffer`` (no copy).

    Raises ``ValueError`` with a one-line reason when the buffer is not a valid encoding (a
    garbage header, an unknown dtype, an array running past the end), never reading outside it.
    """
    size = len(buffer)
    if size < _HEADER_LEN.size:
        raise ValueError(f"{size} bytes, too short for a header")
    (header_len,) = _HEADER_LEN.unpack_from(buffer, 0)
    if _HEADER_LEN.size + header_len > size:
        raise ValueError(f"header length {header_len} runs past the end of the {size}-byte value")
    try:
        entries = json.loads(bytes(buffer[_HEADER_LEN.size : _HEADER_LEN.size + header_len]))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"header is not JSON ({exc})") from None
    if not isinstance(entries, list):
        raise ValueError("header is not a list of arrays")
    data_start = _align(_HEADER_LEN.size + header_len)
    arrays = {}
    for entry in entries:
        name, dtype, shape, start = _header_entry(entry)
        count = math.prod(shape)
        end = data_start + start + count * dtype.itemsize
        if end > size:
            raise ValueError(f"array {name!r} {tuple(shape)} {dtype} ends at byte {end}, past the end of the {size}-byte value")
        arrays[name] = np.frombuffer(buffer, dtype=dtype, count=count, offset=data_start + start).reshape(shape)
    return arrays


def _header_entry(entry: Any) -> tuple[str, np.dtype, list[int], int]:
    """One ``[name, dtype, shape, offset]`` header entry, validated."""
    if not (isinstance(entry, list) and len(entry) == 4):
        raise ValueError(f"header entry {str(entry)[:80]} is not [name, dtype, shape, offset]")
    name, dtype, shape, start = entry
    if not isinstance(name, str) or not isinstance(dtype, str):
        raise ValueError(f"header entry {str(entry)[:80]} has no name or dtype string")
    try:
        parsed = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"array {name!r} has an unknown dtype {dtype[:40]!r}") from None
    if parsed.kind not in _NUMERIC_KINDS or parsed.hasobject:
        raise ValueError(f"array {name!r} has dtype {dtype[:40]!r}, not a plain number type")

    def natural(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not (isinstance(shape, list) and all(map(natural, shape)) and natural(start)):
        raise ValueError(f"array {name!r} has an invalid shape {str(shape)[:40]} or offset {str(start)[:20]}")
    return name, parsed, shape, start


def chunk_key(split: str, index: int) -> bytes:
    return f"chunk/{split}/{index:08d}".encode()


def array_key(name: str) -> bytes:
    return f"array/{name}".encode()


# ---------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------
def _checksum(key: bytes, data: bytes | memoryview) -> int:
    """``xxh3_64`` of ``data`` seeded with ``xxh3_64`` of the key: the value belongs to that key."""
    return xxhash.xxh3_64_intdigest(data, seed=xxhash.xxh3_64_intdigest(key))


def _encode_sealed(key: bytes, arrays: dict[str, np.ndarray]) -> bytearray:
    """The format-2 value of ``key``: the encoded arrays followed by their checksum."""
    value = _encode(arrays, _CHECKSUM.size)
    body = len(value) - _CHECKSUM.size
    _CHECKSUM.pack_into(value, body, _checksum(key, memoryview(value)[:body]))
    return value


def _unseal(key: bytes, value: bytes | memoryview) -> tuple[memoryview, int]:
    """The body of a sealed value and its stored checksum; ``ValueError`` if they disagree."""
    body = len(value) - _CHECKSUM.size
    if body < 0:
        raise ValueError(f"{len(value)} bytes, too short for its checksum")
    (stored,) = _CHECKSUM.unpack_from(value, body)
    view = memoryview(value)[:body]
    computed = _checksum(key, view)
    if computed != stored:
        raise ValueError(f"checksum mismatch (stored {stored:016x}, computed {computed:016x}): the bytes were changed")
    return view, stored


def _canonical_json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def _meta_checksum(record: dict[str, Any]) -> str:
    return f"{CHECKSUM_ALGORITHM}:{xxhash.xxh3_64_hexdigest(_canonical_json(record))}"


def _seal_meta(record: dict[str, Any]) -> bytes:
    """``__meta__`` bytes: the record plus the checksum of its canonical JSON.

    The record goes through JSON once first, so that the checksum is computed over exactly what
    a reader will parse (tuples become lists, integer keys strings).
    """
    record = json.loads(json.dumps(record))
    record.pop("checksum", None)
    return json.dumps({**record, "checksum": _meta_checksum(record)}, sort_keys=True).encode()


# ---------------------------------------------------------------------------------------------
# The batch contract, checked fast on chunks of the expected layout
# ---------------------------------------------------------------------------------------------
_ROW_BLOCK = 32  # rows folded into one wide row: a max over [n/32, 32·k] runs at memory speed


def _max_per_column(ids: np.ndarray) -> np.ndarray:
    """Column maxima of a C-contiguous ``[n, k]`` uint32 array in one pass over memory.

    A reduction over axis 0 of a narrow array is about ten times slower than over a wide one,
    so blocks of rows are viewed as one wide row and folded back afterwards.
    """
    rows, width = ids.shape
    whole = rows - rows % _ROW_BLOCK
    maxima = np.zeros(width, dtype=ids.dtype)
    if whole:
        maxima = ids[:whole].reshape(-1, width * _ROW_BLOCK).max(axis=0).reshape(_ROW_BLOCK, width).max(axis=0)
    if whole < rows:
        maxima = np.maximum(maxima, ids[whole:].max(axis=0))
    return maxima


def _ids_within(ids: np.ndarray, limits: np.ndarray) -> bool:
    """Every id of column ``j`` in ``[0, limits[j])``: negative int32 ids are huge as uint32."""
    return not ids.size or bool((_max_per_column(ids.view(np.uint32)) < limits).all())


class _ChunkContract:
    """The batch contract of one schema, with a fast path for chunks of the layout the writer makes.

    :meth:`holds` answers "certainly valid" in one pass per column for chunks with the expected
    columns, dtypes and shapes; anything else, and any chunk that fails the fast test, goes to
    :func:`check_batch`, which gives the authoritative answer and the message naming the row.
    """

    def __init__(self, schema: Schema):
        self.schema = schema
        self.sparse_limits = np.asarray(schema.vocab_sizes, dtype=np.uint32)
        self.n_dense = len(schema.dense)
        self.sequences = [(f"seq:{f.name}", f.max_len, np.full(f.max_len, schema[f.shares].vocab_size, np.uint32))
                          for f in schema.sequence]
        self.keys = {"sparse"} | ({"dense"} if self.n_dense else set()) | {key for key, _, _ in self.sequences}

    def check(self, arrays: dict[str, np.ndarray], where: str) -> None:
        if not self.holds(arrays):
            check_batch(arrays, self.schema, where)

    def holds(self, arrays: dict[str, np.ndarray]) -> bool:
        if set(arrays) - {"label", "group"} != self.keys:
            return False
        sparse = arrays["sparse"]
        rows = len(sparse)
        if not self._layout(sparse, rows, len(self.sparse_limits), np.int32) or not _ids_within(sparse, self.sparse_limits):
            return False
        group = arrays.get("group")
        if group is not None and (group.dtype != np.int64 or group.shape != (rows,)):
            return False
        label = arrays.get("label")
        if label is not None:
            if label.dtype != np.float32 or label.shape != (rows,) or ((label != 0) & (label != 1)).any():
                return False
        if self.n_dense:
            dense = arrays["dense"]
            # a finite sum means every term is finite (inf and NaN propagate)
            if not self._layout(dense, rows, self.n_dense, np.float32) or not np.isfinite(dense.sum()):
                return False
        for key, length, limits in self.sequences:
            if not self._layout(arrays[key], rows, length, np.int32) or not _ids_within(arrays[key], limits):
                return False
        return True

    @staticmethod
    def _layout(array: np.ndarray, rows: int, width: int, dtype: type) -> bool:
        return array.dtype == dtype and array.shape == (rows, width) and array.flags.c_contiguous


# ---------------------------------------------------------------------------------------------
# Opening for reading
# ---------------------------------------------------------------------------------------------
# LMDB allows one environment per file per process, so every Store of the same file in a process
# shares one read-only handle. The key holds the file's identity (a replaced store is a new file)
# and the pid: a forked child (a loader worker) closes the handles it inherited and opens its own.
_READ_ENVIRONMENTS: dict[tuple[str, int, int, int], lmdb.Environment] = {}

# Chunks whose contract this process has checked: (build id, split, index, checksum). Their
# checksum is still verified on every read; an unchanged checksum means unchanged bytes, whose
# contract need not be checked again (half the cost of a read's checks).
_CONTRACT_CHECKED: set[tuple[str, str, int, int]] = set()


def forget_checked_chunks() -> None:
    """Make the next read of every chunk check its contract again (to measure the first read's cost)."""
    _CONTRACT_CHECKED.clear()


def _open_readonly(path: Path) -> lmdb.Environment:
    pid = os.getpid()
    for key in [k for k in _READ_ENVIRONMENTS if k[3] != pid]:
        _READ_ENVIRONMENTS.pop(key).close()  # unmaps the child's copy only; MDB_NOLOCK holds no reader slot
    data_file = path / "data.mdb"
    try:
        stat = data_file.stat()
    except OSError as exc:
        raise StoreError(f"cannot open store {path}: {os_error_message(exc)}") from None
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, pid)
    env = _READ_ENVIRONMENTS.get(key)
    if env is None:
        for stale in [k for k in _READ_ENVIRONMENTS if k[0] == key[0]]:
            # the store at this path was replaced; Stores still holding the old handle keep
            # reading the old file through it, and it closes when the last of them goes
            del _READ_ENVIRONMENTS[stale]
        try:
            env = lmdb.open(key[0], readonly=True, lock=False, subdir=True, max_readers=4096, max_dbs=0)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open store {path}: {_lmdb_message(exc)}") from None
        try:
            _check_not_truncated(path, env, stat.st_size)
        except BaseException:
            env.close()
            raise
        _READ_ENVIRONMENTS[key] = env
    return env


def _check_not_truncated(path: Path, env: lmdb.Environment, size: int) -> None:
    """Refuse a ``data.mdb`` shorter than its last page: reading past the end would be a SIGBUS."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    if size < needed:
        raise StoreError(
            f"store {path} is truncated: data.mdb has {size:,} bytes, its last page needs {needed:,}; "
            "copy or build it again"
        )


def _lmdb_message(exc: BaseException) -> str:
    """The first line of an LMDB error (``mdb_get: MDB_CORRUPTED: ...``)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


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

    The metadata is read and checked once at construction. The LMDB environment is opened
    lazily, once per process (LMDB handles must not cross a ``fork``), read-only and without the
    lock file, so the store can be read by many loader workers and from read-only media.

    Args:
        path: the store directory.
        check_reads: verify each chunk's checksum and contract when it is read (default). Only
            ``benchmarks/bench_loader.py`` turns it off, to show what the checks cost.

    Example::

        store = Store("criteo.lmdb")
        store.splits["train"].rows
        chunk = store.read_chunk("train", 0)   # {"label": (n,), "sparse": (n, 39)}
        rows = store.read_rows("train", [(3, 100, 200), (0, 0, 50)])   # 150 rows, in this order
        problems = store.verify()              # [] when every byte checks out
    """

    def __init__(self, path: str | os.PathLike, *, check_reads: bool = True):
        self.path = Path(path)
        self.check_reads = check_reads
        self._env: lmdb.Environment | None = None
        self._env_pid: int | None = None
        self._identity: str | None = None  # the build this object opened; pinned for its life
        self.meta = self._read_meta()
        self.build_id: str | None = self.meta.get("build_id")
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
        self._contract = _ChunkContract(self.schema)

    @property
    def format_version(self) -> int:
        return int(self.meta["format_version"])

    @property
    def checksummed(self) -> bool:
        """Whether the values carry checksums (format version 2 and later)."""
        return self.format_version >= FIRST_CHECKSUMMED_VERSION

    @property
    def identity(self) -> str:
        """The build this object opened and pinned: its build id, or for a format-1 store (which has
        none) its creation time and a hash of its metadata. Processes that must read the same
        build (DDP ranks started independently) can compare it."""
        return self._identity or "?"

    @property
    def checksum_warning(self) -> str | None:
        """For a store without checksums, one line saying what cannot be checked and how to fix it."""
        if self.checksummed:
            return None
        return (f"store {self.path} has no checksums (format version {self.format_version}): flipped bytes that keep "
                "ids and labels in range cannot be detected; rebuild it with `ctrkit preprocess` to add them")

    # -- opening -----------------------------------------------------------------------------
    def _read_meta(self) -> dict[str, Any]:
        path = self.path
        if not path.exists():
            with contextlib.suppress(OSError):
                clean_debris(path)  # puts back a store that a killed overwrite left as .NAME.old-PID
        if not path.exists():
            raise StoreError(f"no store at {path}: run `ctrkit preprocess` to build one")
        if not path.is_dir() or not (path / "data.mdb").is_file():
            raise StoreError(f"{path} is not a ctrkit store (an LMDB directory holding data.mdb)")
        raw = self._get(self._environment(), META_KEY)
        if raw is None:
            raise StoreError(
                f"{path} is an incomplete store: it has no completion record, so the run that built "
                "it did not finish. Delete it and run `ctrkit preprocess` again."
            )
        meta, identity = self._parse_meta(raw)
        self._identity = identity
        return meta

    def _parse_meta(self, raw: bytes | memoryview) -> tuple[dict[str, Any], str]:
        """The checked metadata without its checksum, and the identity of the build."""
        where = f"store {self.path}: key __meta__"
        try:
            meta = json.loads(bytes(raw))
        except ValueError as exc:
            reason = f"{exc.msg} at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise StoreError(f"{where} is not valid JSON ({reason}); the store is damaged") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise StoreError(f"{self.path} is not a ctrkit store (format {found!r})")
        version = meta.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise StoreError(f"{where} has an invalid format_version {version!r}; the store is damaged")
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{self.path} has store format version {version}, newer than this ctrkit "
                f"understands ({FORMAT_VERSION}); upgrade ctrkit"
            )
        if version >= FIRST_CHECKSUMMED_VERSION:
            claimed = meta.pop("checksum", None)
            if claimed is None:
                raise StoreError(f"{where} has no checksum although its format version is {version}; the store is damaged")
            computed = _meta_checksum(meta)
            if claimed != computed:
                raise StoreError(f"{where} is damaged: its checksum {claimed!r} does not match its content ({computed})")
        _check_meta_fields(meta, where)
        build_id = meta.get("build_id")
        identity = build_id if isinstance(build_id, str) else f"at {meta.get('created', '?')} (meta {xxhash.xxh3_64_hexdigest(raw)})"
        return meta, identity

    def _environment(self) -> lmdb.Environment:
        pid = os.getpid()
        if self._env is None or self._env_pid != pid:
            env = _open_readonly(self.path)
            if self._identity is not None:
                self._check_same_build(env)
            self._env, self._env_pid = env, pid
        return self._env

    def _check_same_build(self, env: lmdb.Environment) -> None:
        """A reopened handle (new process, or after :meth:`close`) must still see the pinned build."""
        raw = self._get(env, META_KEY)
        if raw is None:
            raise StoreError(f"store {self.path} was replaced while in use by an incomplete store; restart the run")
        _, identity = self._parse_meta(raw)
        if identity != self._identity:
            raise StoreError(
                f"store {self.path} was replaced while in use: built {self._identity}, now {identity}; restart the run"
            )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_env"] = None  # never ship an LMDB handle to another process
        state["_env_pid"] = None
        return state

    def close(self) -> None:
        """Forget this object's handle; the process-wide environment stays open for other readers."""
        self._env = None

    # -- raw values --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _reading(self) -> Iterator[lmdb.Transaction]:
        """A read transaction whose values are views of LMDB's memory map (``buffers=True``).

        Such a view is valid only inside the transaction: everything that leaves it is a copy.
        """
        env = self._environment()
        try:
            txn = env.begin(buffers=True)
        except lmdb.Error as exc:
            raise StoreError(f"store {self.path}: cannot start reading: {_lmdb_message(exc)}; the file is damaged") from None
        with txn:
            yield txn

    def _view(self, txn: lmdb.Transaction, key: bytes) -> memoryview | None:
        """The value of ``key`` in the memory map (valid inside ``txn`` only), or ``None``."""
        try:
            return txn.get(key)
        except lmdb.Error as exc:
            raise StoreError(f"store {self.path}: cannot read key {key.decode()}: {_lmdb_message(exc)}; the file is damaged") from None

    def _get(self, env: lmdb.Environment, key: bytes) -> bytes | None:
        """A copy of one value (metadata, arrays), or ``None`` where the key is absent."""
        try:
            with env.begin() as txn:
                return txn.get(key)
        except lmdb.Error as exc:
            raise StoreError(f"store {self.path}: cannot read key {key.decode()}: {_lmdb_message(exc)}; the file is damaged") from None

    def _decode(self, key: bytes, value: memoryview, what: str, *, check_sum: bool) -> tuple[dict[str, np.ndarray], int | None]:
        """Arrays of one value and its checksum (``None`` in a format-1 store); ``what`` names it."""
        try:
            stored = None
            if self.checksummed:
                if check_sum:
                    body, stored = _unseal(key, value)
                else:
                    body = memoryview(value)[: max(0, len(value) - _CHECKSUM.size)]
            else:
                body = value
            return decode_arrays(body), stored
        except (ValueError, struct.error) as exc:
            raise StoreError(f"{what} is damaged: {exc}") from None

    # -- reading -----------------------------------------------------------------------------
    def split(self, name: str) -> SplitInfo:
        try:
            return self.splits[name]
        except KeyError:
            raise StoreError(f"store {self.path} has no split {name!r} (it has {sorted(self.splits)})") from None

    def carries_groups(self, split: str) -> bool:
        """Whether the rows of ``split`` carry the optional ``group`` column (a user id per row, for
        gAUC); seen on its first row, since a store's chunks all hold the same columns."""
        info = self.split(split)
        return bool(info.num_chunks) and "group" in self.read_rows(split, [(0, 0, 1)])

    def read_chunk(self, split: str, index: int) -> dict[str, np.ndarray]:
        """Arrays of one chunk (copies out of LMDB).

        The chunk's checksum, row count and batch contract are checked (unless the store was
        opened with ``check_reads=False``); a damaged chunk raises :class:`StoreError`.
        """
        return self._read(split, [(index, 0, None)], None, checked=self.check_reads)

    def read_rows(
        self, split: str, segments: Sequence[tuple[int, int, int]], columns: Collection[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)`` of chunk ``index`` for each ``(index, start, stop)``, concatenated.

        The rows are copied once, straight out of LMDB's memory map into the result, inside the
        read transaction in which each chunk's checksum is verified over the same bytes (and its
        contract checked, on its first read in this process). This is how :class:`BatchReader`
        reads a shuffling window: a separate copy per chunk followed by a concatenation would
        move every byte twice.

        Args:
            split: the split the chunks belong to.
            segments: ``(chunk index, first row, row after the last)`` triples, in result order.
            columns: keys to return (default: all the chunks hold).
        """
        return self._read(split, list(segments), columns, checked=self.check_reads)

    def _read(self, split: str, segments: list[tuple[int, int, int | None]], columns: Collection[str] | None,
              *, checked: bool) -> dict[str, np.ndarray]:
        info = self.split(split)
        with self._reading() as txn:
            pieces = []
            for index, start, stop in segments:
                arrays, what = self._chunk_views(txn, info, index, checked=checked, reuse_checks=True)
                rows = _rows_of(arrays, what)
                stop = rows if stop is None else stop
                if not 0 <= start <= stop <= rows:
                    raise StoreError(f"{what}: rows [{start}, {stop}) asked for, but it holds {rows}")
                pieces.append((arrays, start, stop, what))
            return _gather(pieces, columns)

    def _chunk_views(self, txn: lmdb.Transaction, info: SplitInfo, index: int, *, checked: bool,
                     reuse_checks: bool) -> tuple[dict[str, np.ndarray], str]:
        """Arrays of one chunk as views of the memory map (valid inside ``txn`` only), checked; and its name."""
        key = chunk_key(info.name, index)
        what = f"store {self.path}: chunk {index} of split {info.name!r} (key {key.decode()})"
        value = self._view(txn, key)
        if value is None:
            raise StoreError(f"{what} is missing")
        arrays, stored = self._decode(key, value, what, check_sum=checked)
        if checked:
            if not 0 <= index < info.num_chunks:
                raise StoreError(f"{what} is not listed in __meta__, which has {info.num_chunks} chunks")
            rows = {len(a) if a.ndim else -1 for a in arrays.values()}
            if rows != {info.chunk_rows[index]}:
                raise StoreError(f"{what} is damaged: it holds {sorted(rows)} rows, __meta__ says {info.chunk_rows[index]}")
            if ("label" in arrays) != info.labeled:
                state = "has" if "label" in arrays else "has no"
                raise StoreError(f"{what} is damaged: it {state} labels, but __meta__ says the split is {'un' * (not info.labeled)}labeled")
            self._check_contract(arrays, info.name, index, stored, what, reuse_checks)
        return arrays, what

    def _check_contract(self, arrays, split: str, index: int, stored: int | None, what: str, reuse: bool) -> None:
        seen = (self.build_id, split, index, stored) if stored is not None and self.build_id else None
        if reuse and seen in _CONTRACT_CHECKED:
            return
        try:
            self._contract.check(arrays, what)
        except ContractError as exc:
            raise StoreError(f"{exc}; the store is damaged") from None
        if seen is not None:
            _CONTRACT_CHECKED.add(seen)

    def read_array(self, name: str) -> np.ndarray:
        key = array_key(name)
        value = self._get(self._environment(), key)
        if value is None:
            raise StoreError(f"store {self.path} has no array {name!r}")
        what = f"store {self.path}: array {name} (key {key.decode()})"
        arrays, _ = self._decode(key, value, what, check_sum=True)
        if set(arrays) != {"array"}:
            raise StoreError(f"{what} is damaged: it holds {sorted(arrays)}, not one array")
        return arrays["array"]

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

    # -- verification ------------------------------------------------------------------------
    def verify(self, on_progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Check every byte of the store; return the problems found, one line each ([] = healthy).

        Checks the metadata (its checksum and consistency were checked on open), then every
        chunk (checksum, header, rows and labels against ``__meta__``, the batch contract),
        every split's positives, every array's checksum, and each vocabulary's length
        (``vocab_size - 1``). Keys that ``__meta__`` does not account for are reported too. A
        format-1 store has no checksums to verify, which is not a problem of the store: only its
        contract and consistency are checked (:attr:`checksum_warning` says so).

        Args:
            on_progress: called as ``on_progress(done, total)`` after each chunk or array.
        """
        problems = _Problems(self.path)
        keys = self._all_keys(problems)
        arrays = sorted(k for k in keys if k.startswith(b"array/"))
        unlisted = {k for k in keys if k.startswith(b"chunk/")}
        total = sum(info.num_chunks for info in self.splits.values()) + len(arrays)
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(done, total)

        for info in self.splits.values():
            positives: int | None = 0  # None once a chunk could not be read
            for index in range(info.num_chunks):
                unlisted.discard(chunk_key(info.name, index))
                try:
                    with self._reading() as txn:
                        chunk, _ = self._chunk_views(txn, info, index, checked=True, reuse_checks=False)
                        if positives is not None and "label" in chunk:
                            positives += int(np.count_nonzero(chunk["label"] > 0.5))
                except StoreError as exc:
                    problems.add(str(exc))
                    positives = None
                tick()
            if info.labeled and positives is not None and positives != info.positives:
                problems.add(f"store {self.path}: split {info.name!r} has {positives:,} positive rows, __meta__ says {info.positives:,}")
        for key in sorted(unlisted):
            problems.add(f"store {self.path}: key {key.decode(errors='replace')} is not listed in __meta__")
        for key in sorted(k for k in keys if k != META_KEY and not k.startswith((b"chunk/", b"array/"))):
            problems.add(f"store {self.path}: unexpected key {key.decode(errors='replace')!r}")
        self._verify_arrays(arrays, problems, tick)
        return problems.lines()

    def _all_keys(self, problems: "_Problems") -> list[bytes]:
        try:
            with self._environment().begin(buffers=False) as txn:
                return list(txn.cursor().iternext(keys=True, values=False))
        except lmdb.Error as exc:
            problems.add(f"store {self.path}: cannot list its keys: {_lmdb_message(exc)}; the file is damaged")
            return []

    def _verify_arrays(self, keys: list[bytes], problems: "_Problems", tick: Callable[[], None]) -> None:
        vocabularies = set()
        for key in keys:
            name = key.decode(errors="replace")[len("array/"):]
            field = name[len("vocab/"):] if name.startswith("vocab/") else None
            if field is not None:
                vocabularies.add(field)
            try:
                array = self.read_array(name)
            except StoreError as exc:
                problems.add(str(exc))
                continue
            finally:
                tick()
            if field is None:
                continue
            if field not in self.schema or self.schema[field].kind != "sparse":
                problems.add(f"store {self.path}: key {key.decode()} is the vocabulary of {field!r}, which is not a sparse field")
            elif array.ndim != 1 or len(array) != self.schema[field].vocab_size - 1:
                problems.add(
                    f"store {self.path}: key {key.decode()} holds {array.shape} tokens, but field {field} has "
                    f"vocab_size {self.schema[field].vocab_size} in __meta__ (expected {self.schema[field].vocab_size - 1})"
                )
        if vocabularies:  # a store with vocabularies needs one for every sparse field
            for field in self.schema.sparse:
                if field.name not in vocabularies:
                    problems.add(f"store {self.path}: sparse field {field.name} has no vocabulary (key array/vocab/{field.name})")


class _Problems:
    """Problem lines of :meth:`Store.verify`, capped so that a badly damaged store stays readable."""

    def __init__(self, path: Path):
        self.path = path
        self.found: list[str] = []
        self.count = 0

    def add(self, line: str) -> None:
        self.count += 1
        if len(self.found) < _MAX_PROBLEMS:
            self.found.append(line)

    def lines(self) -> list[str]:
        extra = self.count - len(self.found)
        return self.found + ([f"store {self.path}: {extra:,} more problems not listed"] if extra else [])


def _check_meta_fields(meta: dict[str, Any], where: str) -> None:
    """The members every reader relies on: present, of the right types, and consistent."""
    for key in ("schema", "splits", "chunk_rows"):
        if key not in meta:
            raise StoreError(f"{where} has no {key!r}; the store is damaged")
    if not isinstance(meta["schema"], dict):
        raise StoreError(f"{where}: 'schema' is not an object; the store is damaged")
    try:
        Schema.from_dict(meta["schema"])
    except StoreError as exc:
        raise StoreError(f"{where}: 'schema' is damaged: {exc}") from None
    if not _natural(meta["chunk_rows"]) or meta["chunk_rows"] < 1:
        raise StoreError(f"{where}: 'chunk_rows' is {meta['chunk_rows']!r}, not a positive integer; the store is damaged")
    if "build_id" in meta and not isinstance(meta["build_id"], str):
        raise StoreError(f"{where}: 'build_id' is {meta['build_id']!r}, not a string; the store is damaged")
    splits = meta["splits"]
    if not isinstance(splits, dict):
        raise StoreError(f"{where}: 'splits' is not an object; the store is damaged")
    for name, info in splits.items():
        _check_split(name, info, meta["chunk_rows"], f"{where}: split {name!r}")


def _check_split(name: str, info: Any, chunk_rows: int, where: str) -> None:
    if not isinstance(info, dict):
        raise StoreError(f"{where} is not an object; the store is damaged")
    for key in ("rows", "chunk_rows"):
        if key not in info:
            raise StoreError(f"{where} has no {key!r}; the store is damaged")
    counts = info["chunk_rows"]
    if not isinstance(counts, list) or not all(_natural(n) and 1 <= n <= chunk_rows for n in counts):
        raise StoreError(f"{where}: 'chunk_rows' is not a list of chunk sizes in [1, {chunk_rows}]; the store is damaged")
    if not _natural(info["rows"]) or info["rows"] != sum(counts):
        raise StoreError(f"{where}: 'rows' is {info['rows']!r}, but its chunks hold {sum(counts)}; the store is damaged")
    positives = info.get("positives", 0)
    if not _natural(positives) or positives > info["rows"]:
        raise StoreError(f"{where}: 'positives' is {positives!r}, not a count in [0, {info['rows']}]; the store is damaged")
    if not isinstance(info.get("labeled", True), bool):
        raise StoreError(f"{where}: 'labeled' is {info['labeled']!r}, not true/false; the store is damaged")


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rows_of(arrays: dict[str, np.ndarray], what: str) -> int:
    """Rows of a decoded chunk (0 for one without arrays); differing lengths are damage."""
    lengths = {len(a) if a.ndim else -1 for a in arrays.values()}
    if len(lengths) > 1 or -1 in lengths:
        raise StoreError(f"{what} is damaged: its arrays hold {sorted(lengths)} rows")
    return next(iter(lengths), 0)


def _gather(pieces: list[tuple[dict[str, np.ndarray], int, int, str]], columns: Collection[str] | None) -> dict[str, np.ndarray]:
    """Rows ``[start, stop)`` of each piece's arrays, concatenated per column into new arrays."""
    if not pieces:
        return {}
    first, _, _, _ = pieces[0]
    names = list(first) if columns is None else [name for name in columns if name in first]
    total = sum(stop - start for _, start, stop, _ in pieces)
    out = {name: np.empty((total, *first[name].shape[1:]), np.result_type(*(arrays.get(name, first[name]) for arrays, *_ in pieces)))
           for name in names}
    position = 0
    for arrays, start, stop, what in pieces:
        if arrays.keys() != first.keys() or any(arrays[n].shape[1:] != first[n].shape[1:] for n in names):
            layout = {n: a.shape[1:] for n, a in arrays.items()}
            raise StoreError(f"{what} is damaged: its columns {layout} differ from those of the chunk read with it")
        for name in names:
            out[name][position : position + stop - start] = arrays[name][start:stop]
        position += stop - start
    return out


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
_BUILDING: set[str] = set()  # targets this process is building (the lock is re-entrant in a process)


class StoreWriter:
    """Builds a store under a temporary name; :meth:`commit` makes it appear at ``path``.

    Rows are appended per split in any block size and cut into chunks of ``chunk_rows``; each
    chunk must satisfy the batch contract (:func:`ctrkit.data.contract.check_batch`) before it is
    written. Used as a context manager, an exception removes the temporary directory and leaves
    ``path`` untouched; so does any failure of the writer itself (a chunk breaking the contract,
    a full disk), which raises a one-line error saying what was kept.

    Construction takes the target's lock (held until :meth:`commit` or :meth:`abort`; a second
    builder fails at once naming the holder) and cleans the debris of killed builders beside the
    target (:func:`ctrkit.fileio.clean_debris`; what it did is in :attr:`cleaned`).

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
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot create {self.path}: directory {self.path.parent} does not exist")
        self.schema = schema
        self.chunk_rows = chunk_rows
        self.build_id = uuid.uuid4().hex
        self._closed = True  # until the environment is open: abort() has nothing to close
        self._lock = contextlib.ExitStack()
        try:
            self._lock.enter_context(target_lock(self.path, "building a store"))
        except OSError as exc:  # the lock file's holder line cannot be written on a full disk
            kept = f"the existing store at {self.path} is unchanged" if self.path.exists() else f"nothing was created at {self.path}"
            raise StoreError(f"cannot write store {self.path}: {_write_failure(exc, self.path.parent)}; {kept}") from None
        self._target = str(self.path.resolve())
        try:
            if self._target in _BUILDING:
                raise StoreError(f"{self.path} is already being built by this process")
            self.cleaned = clean_debris(self.path)
            if self.path.exists() and not overwrite:
                raise StoreError(f"{self.path} already exists; remove it or pass --overwrite")
            self.kept = f"the existing store at {self.path} is unchanged" if self.path.exists() else f"nothing was created at {self.path}"
            self.tmp_path = temporary_sibling(self.path, "tmp")
        except BaseException:
            self._lock.close()
            raise
        _BUILDING.add(self._target)
        self._map_size = initial_map_size
        self._buffers: dict[str, dict[str, np.ndarray]] = {}
        self._filled: dict[str, int] = {}
        self._splits: dict[str, dict[str, Any]] = {}
        with self._failures_abort():
            if self.tmp_path.exists():
                shutil.rmtree(self.tmp_path)
            # lock=False: the target lock keeps every other process out of the temporary directory,
            # and LMDB's lock file is a memory map, which faults (SIGBUS) on a full file system
            self._env = lmdb.open(
                str(self.tmp_path), map_size=self._map_size, subdir=True, sync=False, metasync=False, max_dbs=0, lock=False
            )
            self._closed = False

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._closed or self._target in _BUILDING:
            self.abort()

    # -- failures ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _failures_abort(self) -> Iterator[None]:
        """Any failure inside aborts the build; file-system failures become one-line errors."""
        try:
            yield
        except (OSError, lmdb.Error) as exc:
            reason = _write_failure(exc, self.path.parent)  # before abort() frees the space
            self.abort()
            raise StoreError(f"cannot write store {self.path}: {reason}; {self.kept}") from None
        except ContractError as exc:
            self.abort()
            raise ContractError(f"cannot build store {self.path}: {exc}; {self.kept}") from None
        except BaseException:
            self.abort()
            raise

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
        key = array_key(name)
        with self._failures_abort():
            self._put(key, _encode_sealed(key, {"array": np.asarray(array)}))

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
        index = len(info["chunk_rows"])
        key = chunk_key(split, index)
        with self._failures_abort():
            where = f"chunk {index} of split {split!r} (rows {info['rows']}..{info['rows'] + rows - 1} of the split)"
            check_batch(chunk, self.schema, where)
            self._put(key, _encode_sealed(key, chunk))
        info["chunk_rows"].append(rows)
        info["rows"] += rows
        if "label" in chunk:
            info["positives"] += int(np.count_nonzero(chunk["label"] > 0.5))
        self._filled[split] = 0

    # -- completion --------------------------------------------------------------------------
    def commit(self, meta: dict[str, Any] | None = None) -> Store:
        """Flush partial chunks, write the completion record and move the store into place."""
        if self._closed:
            raise StoreError(f"the build of {self.path} was already committed or aborted")
        for split, rows in self._filled.items():
            if rows:
                self._flush(split)
        record = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "ctrkit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_id": self.build_id,
            "checksum_algorithm": CHECKSUM_ALGORITHM,
            "schema": self.schema.to_dict(),
            "chunk_rows": self.chunk_rows,
            "splits": self._splits,
            **(meta or {}),
        }
        with self._failures_abort():
            self._put(META_KEY, _seal_meta(record))
            self._env.sync(True)
            self._env.close()
            self._closed = True
            _replace_directory(self.tmp_path, self.path)
        self._release()
        return Store(self.path)

    def abort(self) -> None:
        """Discard everything written so far and release the target."""
        if not self._closed:
            with contextlib.suppress(lmdb.Error):
                self._env.close()
            self._closed = True
        if getattr(self, "tmp_path", None) is not None:
            shutil.rmtree(self.tmp_path, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        _BUILDING.discard(self._target)
        # closing the lock file retries its holder line, which fails again on a full disk; the
        # descriptor (and with it the lock) is closed all the same
        with contextlib.suppress(OSError):
            self._lock.close()


def _write_failure(exc: BaseException, directory: Path) -> str:
    """Why a write failed, in a few words: a full disk is said plainly whatever layer noticed it."""
    if is_disk_full(exc, near=directory):
        return "no space left on device"
    if isinstance(exc, OSError):
        return os_error_message(exc)
    return _lmdb_message(exc)


def _replace_directory(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` is removed only after the swap.

    A crash between the two renames leaves the old store as ``.<name>.old-<pid>``, which the next
    writer or reader of ``target`` renames back (:func:`ctrkit.fileio.clean_debris`).
    """
    if not target.exists():
        os.rename(source, target)
        return
    trash = temporary_sibling(target, "old")
    os.rename(target, trash)
    try:
        os.rename(source, target)
    except OSError:
        os.rename(trash, target)
        raise
    shutil.rmtree(trash, ignore_errors=True)
