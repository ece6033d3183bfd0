"""Writing files without losing or damaging any: one home for every writer in ctrkit.

* :func:`atomic_output` — the one way to write an output file. A regular path is written under a
  temporary sibling ``.<name>.tmp-<pid>``, flushed, fsynced and renamed over the target, so a
  reader sees the old complete file or the new complete file. A path that is not a regular file
  (``-`` = stdout, a character device such as ``/dev/null``, a FIFO) is written in place,
  streaming: renaming over it would replace the device. An output that is one of the inputs is
  refused before anything is opened.
* :func:`target_lock` — an exclusive ``fcntl`` lock on ``.<name>.lock`` beside a build target (a
  store, a run directory), so that two processes never build the same target at once.
* :func:`clean_debris` — removes what killed processes left beside a target (``.<name>.tmp-<pid>``,
  ``.<name>.spill-<pid>-…``) once ``<pid>`` is dead, and puts back an ``.<name>.old-<pid>`` that a
  crash left between the two renames of an overwrite.
* :func:`os_error_message` — a one-line message for an ``OSError`` (disk full, read-only, …).

Temporary names follow one pattern, ``.<target name>.<tag>-<pid>[-<anything>]``, with the tags in
:data:`DEBRIS_TAGS`; the pid is what lets a later run tell a dead writer's debris from a live one's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import shutil
import stat
import sys
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from ctrkit.errors import CtrkitError, OutputError

DEBRIS_TAGS = ("tmp", "spill", "old")
STDOUT = "-"

_DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EIO: "input/output error", errno.EROFS: "read-only file system"}


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------
def temporary_sibling(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """``.<name>.<tag>-<pid>`` in the directory of ``path``."""
    if tag not in DEBRIS_TAGS:
        raise ValueError(f"unknown temporary tag {tag!r}")
    path = Path(path)
    return path.parent / f".{path.name}.{tag}-{os.getpid()}"


def _debris_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.({'|'.join(DEBRIS_TAGS)})-(\d+)(?:-.*)?$")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Debris of dead processes
# ---------------------------------------------------------------------------------------------
def clean_debris(path: str | os.PathLike) -> list[str]:
    """Tidy up beside ``path`` after killed writers; returns one line per action taken.

    * ``.<name>.old-<pid>`` of a dead process while nothing is at ``path``: the crash came between
      the two renames of an overwrite, so the old target is renamed back into place;
    * any other ``.<name>.{tmp,spill,old}-<pid>…`` of a dead process: removed.

    Debris of live processes (another build still running) and of this process is left alone.
    """
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        return []
    pattern = _debris_pattern(path.name)
    found = []
    for entry in directory.iterdir():
        match = pattern.match(entry.name)
        if match and int(match.group(2)) != os.getpid() and not pid_alive(int(match.group(2))):
            found.append((match.group(1), entry))
    actions = []
    for tag, entry in sorted(found, key=lambda item: item[0] != "old"):  # restores first
        if tag == "old" and not os.path.lexists(path):
            os.rename(entry, path)
            actions.append(f"restored {path} from {entry.name}, left by a run killed while replacing it")
            continue
        size = _size_of(entry)
        _remove(entry)
        actions.append(f"removed {entry} ({size / 1e6:.1f} MB), left by a killed run")
    return actions


def clean_directory_debris(directory: str | os.PathLike) -> list[str]:
    """:func:`clean_debris` for every target in ``directory`` that has debris beside it."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    any_debris = re.compile(rf"^\.(.+)\.({'|'.join(DEBRIS_TAGS)})-\d+(?:-.*)?$")
    targets = {m.group(1) for m in map(any_debris.match, (e.name for e in directory.iterdir())) if m}
    return [line for name in sorted(targets) for line in clean_debris(directory / name)]


def _size_of(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.lstat().st_size


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Locks
# ---------------------------------------------------------------------------------------------
_HELD: dict[str, list] = {}  # lock path -> [file object, depth]: re-entrant within a process


@contextlib.contextmanager
def target_lock(path: str | os.PathLike, what: str = "writing") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` as a build target, or fail at once naming the holder.

    The lock is ``flock`` on ``.<name>.lock`` beside ``path`` (released by the kernel when the
    process dies, so a killed run never leaves a stale lock). Re-entrant within one process. The
    lock file itself stays: removing it would let a waiting process lock an unlinked file.
    """
    path = Path(path)
    lock_path = path.parent / f".{path.name}.lock"
    key = str(lock_path.resolve()) if lock_path.parent.exists() else str(lock_path)
    held = _HELD.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    try:
        handle = open(lock_path, "a+")
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: cannot create files in {lock_path.parent} ({os_error_message(exc, with_file=False)})"
        ) from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputError(
                f"{path} is being written by {holder} right now; wait for it to finish or choose another path"
            ) from None
        with contextlib.suppress(OSError):  # the holder's name is a courtesy; a full disk must not stop the lock
            handle.seek(0)
            handle.truncate()
            handle.write(f"ctrkit pid {os.getpid()} ({what})")
            handle.flush()
        _HELD[key] = [handle, 1]
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        handle.close()  # closing releases the flock


# ---------------------------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------------------------
def is_stream(path: str | os.PathLike) -> bool:
    """``-`` or an existing path that is not a regular file (device, FIFO, socket)."""
    if str(path) == STDOUT:
        return True
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_output_path(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), flag: str = "--out") -> None:
    """Refuse, before any work, an output that cannot be written or that is one of the inputs."""
    if str(path) == STDOUT:
        return
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise OutputError(f"{flag} {path}: directory {parent} {what}")
    if not is_stream(path) and not os.access(parent, os.W_OK):
        raise OutputError(f"{flag} {path}: directory {parent} is not writable")
    for item in inputs:
        if item is None or str(item) == STDOUT:
            continue
        if _same_file(path, Path(item)):
            raise OutputError(f"{flag} {path} is also an input ({item}); writing it would destroy the input")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    inputs: Iterable[str | os.PathLike] = (),
    flag: str = "--out",
    kept: str | None = None,
) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it appears complete or not at all.

    Args:
        path: the target; ``-`` writes to stdout, a device or FIFO is written in place.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        inputs: paths the output must not be (checked before anything is opened).
        flag: the option that named ``path``, for messages.
        kept: what survives a failed write, for the message (default: the previous ``path``).

    A failure of the file system (disk full, I/O error, read-only) becomes an :class:`OutputError`
    with one line that says what was kept; the temporary file is removed.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    check_output_path(path, inputs=inputs, flag=flag)
    if str(path) == STDOUT:
        stream = sys.stdout if mode == "w" else sys.stdout.buffer
        yield stream
        stream.flush()
        return
    path = Path(path)
    if is_stream(path):
        with _reporting_os_errors(path, "nothing else was touched"):
            with open(path, mode) as handle:
                yield handle
        return
    tmp = temporary_sibling(path)
    kept = kept or (f"the previous {path} is unchanged" if path.exists() else f"nothing was written at {path}")
    try:
        with _reporting_os_errors(path, kept):
            with open(tmp, mode) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _reporting_os_errors(path: Path, kept: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise OutputError(f"cannot write {path}: {os_error_message(exc)}; {kept}") from None


def write_text_atomic(path: str | os.PathLike, text: str, **kwargs: Any) -> None:
    with atomic_output(path, "w", **kwargs) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any, **kwargs: Any) -> None:
    """``data`` as indented JSON (non-finite floats as ``null``), atomically."""
    write_text_atomic(path, json.dumps(json_safe(data), indent=2) + "\n", **kwargs)


def json_safe(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------
def os_error_message(exc: BaseException, *, with_file: bool = True) -> str:
    """One line for a file-system failure: ``no space left on device`` rather than a traceback."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:  # Rust-backed libraries (polars) put the code in the text: "... (os error 28)"
        found = re.search(r"\(os error (\d+)\)", str(exc))
        code = int(found.group(1)) if found else None
    if code in _DISK_ERRNOS:
        reason = _DISK_ERRNOS[code]
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror.lower()
    else:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    filename = getattr(exc, "filename", None) if with_file else None
    return f"{reason} ({filename})" if filename else reason


def is_disk_full(exc: BaseException, near: str | os.PathLike | None = None) -> bool:
    """Whether an error from any layer (OS, LMDB, torch's zip writer) means the disk filled up.

    LMDB reports a failed write of its memory map as a bare ``Input/output error``; with ``near``
    (a path on the file system written to), such an error counts as disk full when that file
    system has less than 1 MiB free.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    if any(s in text for s in ("no space left", "disk quota", "errno 28", "os error 28")):
        return True
    return near is not None and "input/output error" in text and _free_bytes(near) < (1 << 20)


def _free_bytes(path: str | os.PathLike) -> int:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stat_ = os.statvfs(path)
    except OSError:
        return 1 << 62
    return stat_.f_bavail * stat_.f_frsize


__all__ = [
    "CtrkitError", "OutputError", "DEBRIS_TAGS", "STDOUT", "atomic_output", "check_output_path",
    "clean_debris", "clean_directory_debris", "is_disk_full", "is_stream", "json_safe", "os_error_message",
    "pid_alive", "target_lock", "temporary_sibling", "write_json_atomic", "write_text_atomic",
]
