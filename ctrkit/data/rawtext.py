"""Reading raw delimited text logs in large blocks of whole lines, with clear errors for bad files.

Shared by every raw format (Criteo TSV now; Taobao CSV tables later): the file checks, the block
reader that keeps track of line numbers, and the record of malformed rows.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
import sys
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Iterator, TypeVar

from ctrkit.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"
STDIN = "-"
STDIN_NAME = "<stdin>"
STREAM_CHUNK_BYTES = 1 << 20
DEFAULT_BLOCK_BYTES = 64 << 20
FINGERPRINT_BYTES = 1 << 20
T = TypeVar("T")


def check_text_file(path: str | os.PathLike) -> Path:
    """Fail early, naming the file, on anything that is not a readable, non-empty text file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a data file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror}") from exc
    if not head:
        raise InputError(f"{path}: file is empty")
    if head.startswith(GZIP_MAGIC):
        raise InputError(f"{path}: is gzip-compressed; decompress it first (gunzip -k {path})")
    if b"\x00" in head:
        raise InputError(f"{path}: contains NUL bytes; this is not a text file")
    return path


def first_line(path: Path) -> bytes:
    """The first line of a file without its line ending (reads at most 1 MiB)."""
    with open(path, "rb") as handle:
        return handle.readline(FINGERPRINT_BYTES).rstrip(b"\r\n")


def fingerprint(path: Path) -> dict:
    """Identify a source file cheaply: size, mtime and a SHA-256 of its first and last MiB."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if stat.st_size > FINGERPRINT_BYTES:
            handle.seek(max(FINGERPRINT_BYTES, stat.st_size - FINGERPRINT_BYTES))
            digest.update(handle.read(FINGERPRINT_BYTES))
    return {
        "path": str(path.resolve()),
        "bytes": stat.st_size,
        "mtime": int(stat.st_mtime),
        "sha256_head_tail": digest.hexdigest(),
    }


@dataclass
class Block:
    """Whole lines of a file: ``data`` ends with a newline; ``first_line`` is 1-based."""

    data: bytes
    first_line: int
    num_lines: int


def read_blocks(path: Path, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[Block]:
    """Yield the file in blocks of about ``block_bytes``, cut after a newline.

    The file is memory-mapped, so each block is one copy out of the page cache. A last line
    without a trailing newline gets one, so that every block parses the same way.
    """
    line = 1
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            start = 0
            while start < size:
                end = min(start + block_bytes, size)
                if end < size:
                    cut = view.rfind(b"\n", start, end) + 1
                    if cut <= start:  # one line longer than a block: take the whole line
                        cut = view.find(b"\n", end) + 1 or size
                    end = cut
                data = view[start:end]
                _release(view, start, end)
                if not data.endswith(b"\n"):
                    data += b"\n"
                count = data.count(b"\n")
                yield Block(data, line, count)
                line += count
                start = end


def _release(view: mmap.mmap, start: int, end: int) -> None:
    """Drop the pages of a block already copied, so resident memory does not grow with the file."""
    page = mmap.PAGESIZE
    first = start // page * page
    if hasattr(mmap, "MADV_DONTNEED") and end > first:
        view.madvise(mmap.MADV_DONTNEED, first, end - first)


class TextStream:
    """Delimited text read once, front to back, from a byte stream: stdin (``-``) or a gzip file.

    Gzip is recognised by its magic bytes (whatever the name), on a file or on stdin, and
    decompressed incrementally (multi-member files too), so memory stays bounded by one block.
    ``name`` is what messages call the input (``<stdin>`` for stdin); :meth:`head` peeks at the
    first line (kept for :meth:`blocks`); ``consumed`` counts the raw (compressed) bytes read so far,
    for progress; ``size`` is the raw file size, None for stdin.
    """

    def __init__(self, name: str | os.PathLike, handle, size: int | None, *, close: bool):
        self.name = Path(name)
        self.size = size
        self.consumed = 0
        self._handle = handle
        self._close = close
        self._pending: list[bytes] = []
        raw = self._raw_chunks()
        first = next(raw, b"")
        if not first:
            raise InputError(f"{self.name}: no input (empty)" if size is None else f"{self.name}: file is empty")
        self.gzip = first.startswith(GZIP_MAGIC)
        self._chunks = _gunzipped(self.name, _chained(first, raw)) if self.gzip else _chained(first, raw)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TextStream":
        """``-`` (stdin) or a file (gzip or not)."""
        if str(path) == STDIN:
            return cls(STDIN_NAME, sys.stdin.buffer, None, close=False)
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise InputError(f"{path}: cannot be read: {exc.strerror}") from None
        info = os.fstat(handle.fileno())
        return cls(path, handle, info.st_size if stat.S_ISREG(info.st_mode) else None, close=True)

    def _raw_chunks(self) -> Iterator[bytes]:
        try:
            while True:
                chunk = self._handle.read(STREAM_CHUNK_BYTES)
                if not chunk:
                    return
                self.consumed += len(chunk)
                yield chunk
        except OSError as exc:
            raise InputError(f"{self.name}: cannot be read: {exc.strerror}") from None
        finally:
            if self._close:
                self._handle.close()

    def head(self, limit: int = FINGERPRINT_BYTES) -> bytes:
        """The first (text) line without its line ending, read ahead and kept for :meth:`blocks`."""
        while b"\n" not in b"".join(self._pending) and sum(map(len, self._pending)) < limit:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._pending.append(chunk)
        data = b"".join(self._pending)
        return data[:limit].split(b"\n", 1)[0].rstrip(b"\r")

    def check_text(self) -> None:
        """Refuse what is not text (NUL bytes near the start: Parquet or another binary format)."""
        head = b"".join(self._pending)[:4096] if self._pending else b""
        if not head:
            self.head()
            head = b"".join(self._pending)[:4096]
        if not head:
            raise InputError(f"{self.name}: no data (the decompressed input is empty)")
        if head.startswith(b"PAR1"):
            raise InputError(f"{self.name}: is Parquet; give it as a file path (Parquet cannot be streamed)")
        if b"\x00" in head:
            raise InputError(f"{self.name}: contains NUL bytes; this is not a text file")

    def blocks(self, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[Block]:
        """Blocks of whole lines of about ``block_bytes`` (a last line without newline gets one)."""
        pending, self._pending = self._pending, []
        line, buffer = 1, bytearray()
        for chunk in _chained_all(pending, self._chunks):
            buffer += chunk
            if len(buffer) < block_bytes:
                continue
            cut = buffer.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a block: keep reading
                continue
            data = bytes(buffer[:cut])
            del buffer[:cut]
            count = data.count(b"\n")
            yield Block(data, line, count)
            line += count
        if buffer:
            data = bytes(buffer) if buffer.endswith(b"\n") else bytes(buffer) + b"\n"
            yield Block(data, line, data.count(b"\n"))


def _chained(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _chained_all(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


def _gunzipped(name: Path, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Decompress gzip data chunk by chunk, member after member; a truncated or corrupt stream is named."""
    decompressor = zlib.decompressobj(wbits=31)
    started = False
    try:
        for chunk in chunks:
            while chunk:
                if decompressor.eof:  # the next member of a multi-member file
                    decompressor = zlib.decompressobj(wbits=31)
                started = True
                out = decompressor.decompress(chunk)
                chunk = decompressor.unused_data if decompressor.eof else b""
                if out:
                    yield out
    except zlib.error as exc:
        raise InputError(f"{name}: corrupt gzip data ({exc})") from None
    if started and not decompressor.eof:
        raise InputError(f"{name}: the gzip stream ends early (truncated file?)")


def is_stream_input(path: str | os.PathLike) -> bool:
    """Whether ``path`` must be read as a :class:`TextStream`: stdin, a pipe (``<(zcat …)``) or a
    gzip-compressed file."""
    if str(path) == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):  # read once: peeking would lose its first bytes
        return True
    if not stat.S_ISREG(mode):
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == GZIP_MAGIC
    except OSError:
        return False


def prefetched(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run ``items`` in a background thread, ``depth`` items ahead of the consumer.

    Parsing (polars, which releases the GIL) then overlaps with what the caller does with the
    previous item. An exception in the producer is raised in the consumer; leaving the loop
    early stops the producer.
    """
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put((item, None))
            queue.put((done, None))
        except BaseException as exc:  # handed to the consumer
            queue.put((done, exc))

    thread = threading.Thread(target=produce, name="ctrkit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                queue.get_nowait()
            except Empty:
                pass
            thread.join(timeout=0.01)


@dataclass
class BadRows:
    """Malformed rows seen so far: a count per reason and the first few examples."""

    keep_examples: int = 5
    count: int = 0
    examples: list[dict] = field(default_factory=list)

    def add(self, path: Path, line: int, field_name: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < self.keep_examples:
            self.examples.append({"file": str(path), "line": line, "field": field_name, "reason": reason})

    def describe(self) -> str:
        if not self.count:
            return "no malformed rows"
        shown = "; ".join(f"{Path(e['file']).name}:{e['line']} {e['field']}: {e['reason']}" for e in self.examples)
        return f"{self.count} malformed rows skipped (first: {shown})"


def format_bad_row(path: Path, line: int, field_name: str, reason: str) -> str:
    return f"{path}:{line}: field {field_name}: {reason}"
