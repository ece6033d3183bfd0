"""Helpers shared by the benchmark scripts: machine info, timing, peak RSS, tables, JSON.

Not part of the ``ctrkit`` package; imported by ``bench_loader.py`` and ``bench_preprocess.py``
from this directory (each script puts its own directory on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_WORKDIR = BENCH_DIR / "out"


# ---------------------------------------------------------------------------------------------
# Machine and environment
# ---------------------------------------------------------------------------------------------
def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a missing optional package is just "absent"
        return None
    return getattr(mod, "__version__", "unknown")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (CPU, cores this process may use, versions, load)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "polars": _version("polars"),
        "lmdb": _version("lmdb"),
        "ctrkit": _version("ctrkit"),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if info["torch"] is not None:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    if info["polars"] is not None:
        import polars

        info["polars_threads"] = polars.thread_pool_size()
    return info


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call, wall clock."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def rotated(items: Sequence[Any], shift: int) -> list[Any]:
    """``items`` rotated by ``shift``: interleaved repeats start with a different contender."""
    items = list(items)
    if not items:
        return items
    shift %= len(items)
    return items[shift:] + items[:shift]


# ---------------------------------------------------------------------------------------------
# Peak memory of a child process
# ---------------------------------------------------------------------------------------------
def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> dict[str, Any]:
    """Run ``cmd`` to completion; return its exit code, wall seconds, CPU seconds and output.

    ``ru_maxrss_mb`` is that one child's ``ru_maxrss`` (``os.wait4``), but beware: Linux carries
    ``ru_maxrss`` across ``execve``, and the child starts as a (v)fork of *this* process, so the
    value is never below this process's own peak RSS at launch time (the same holds for
    ``RUSAGE_CHILDREN`` and ``/usr/bin/time -v``, whose own fork inherits it too). A child that
    must report its own peak should print :func:`own_peak_rss_mb` (``VmHWM``, reset at exec).
    Output goes through temporary files, so a chatty child cannot block on a full pipe.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen quiet
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return {
        "returncode": proc.returncode,
        "wall_s": wall,
        # Linux reports ru_maxrss in KiB (macOS in bytes)
        "ru_maxrss_mb": usage.ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10),
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "stdout": stdout,
        "stderr": stderr,
    }


def _proc_status_mb(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MB, or None off Linux."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def own_peak_rss_mb() -> float:
    """Peak resident memory of this process since it was exec'ed, in MB (2**20 bytes).

    ``VmHWM`` from ``/proc/self/status`` belongs to the address space created by ``execve``, so
    unlike ``ru_maxrss`` it does not include the peak of the process that launched this one.
    """
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / (1 << 20 if sys.platform == "darwin" else 1 << 10)


def own_rss_mb() -> float:
    """Current resident memory of this process in MB (nan where ``/proc`` is missing)."""
    rss = _proc_status_mb("VmRSS")
    return float("nan") if rss is None else rss


class RssSampler:
    """Samples this process's anonymous and file-backed resident memory in a background thread.

    ``VmHWM`` counts every resident page, including pages of memory-mapped input files (page
    cache the kernel can drop at any time); ``RssAnon`` is the memory the process really
    allocated. The peaks are sampled every ``interval`` seconds, so a spike shorter than that can
    be missed (``VmHWM`` cannot be).

    Example::

        with RssSampler() as sampler:
            work()
        sampler.peaks()   # {"peak_anon_mb": ..., "peak_file_mb": ..., "peak_shmem_mb": ...}
    """

    FIELDS = {"RssAnon:": "peak_anon_mb", "RssFile:": "peak_file_mb", "RssShmem:": "peak_shmem_mb"}

    def __init__(self, interval: float = 0.01):
        import threading

        self.interval = interval
        self._peaks = {name: 0.0 for name in self.FIELDS.values()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        try:
            with open("/proc/self/status") as handle:
                for line in handle:
                    key = self.FIELDS.get(line.split(None, 1)[0])
                    if key is not None:
                        self._peaks[key] = max(self._peaks[key], int(line.split()[1]) / 1024)
        except OSError:  # not Linux
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "RssSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def peaks(self) -> dict[str, float]:
        return dict(self._peaks)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def disk_usage_bytes(path: str | Path) -> int:
    """Bytes allocated on disk under ``path`` (like ``du``; LMDB files may be sparse)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def make_scratch(workdir: str | Path, prefix: str) -> Path:
    """A fresh temporary directory inside ``workdir`` (created if needed)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))


def remove_tree(path: str | Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def run_header(benchmark: str, machine: dict[str, Any], load_end: list[float] | None) -> dict[str, Any]:
    """The first keys of a benchmark's JSON: its name, when and how it ran, on what machine."""
    return {
        "benchmark": benchmark,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.executable, *sys.argv],
        "machine": {**machine, "loadavg_at_end": load_end},
    }


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def format_count(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table; ``align`` is one character per column, ``l`` or ``r`` (default: first
    column left, the others right)."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def describe_machine(info: dict[str, Any]) -> str:
    load = info.get("loadavg_at_start")
    load_text = " / ".join(f"{x:.2f}" for x in load) if load else "n/a"
    return (
        f"machine: {info['cpu_model']}, {info['usable_cpus']} usable of {info['cpu_count']} CPUs, "
        f"load avg {load_text}\n"
        f"python {info['python']}, numpy {info['numpy']}, torch {info['torch']}, polars {info['polars']}, "
        f"lmdb {info['lmdb']}, ctrkit {info['ctrkit']}"
    )
