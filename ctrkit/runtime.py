"""Process-wide runtime settings and checks for training (framework-neutral).

:func:`keep_freed_memory` tells glibc's ``malloc`` to keep freed memory for reuse instead of
handing it back to the kernel. A training step allocates the same large buffers every time
(activations and gradients of a 4096-row batch are 1-10 MB each); by default glibc serves
blocks above its mmap threshold with fresh ``mmap`` pages and trims the heap top after ``free``,
so every step pays page faults and kernel zeroing on tens of MB. Timing the same training steps
with and without the setting on 2 cores, bf16 DeepFM and DCN steps were 20-28 % faster (fp32
steps, bound by matrix multiplies, were unchanged); see ``benchmarks/RESULTS.md``. The cost: the process keeps its
peak heap (RSS does not shrink after a large evaluation), which is what a training process wants
anyway. Set ``CTRKIT_MALLOC_TUNING=0`` to leave ``malloc`` alone.

:func:`busy_cores_advice` says when other processes keep cores busy: intra-op threads (torch's,
TensorFlow's) meet at a barrier after every parallel operation, and when one of them shares its
core with another busy process every operation waits for a scheduler slice.
``benchmarks/bench_contention.py``, 2 cores, one busy neighbour: DeepFM runs at 0.37x and AutoInt+
at 0.31x of their idle speed with 2 threads, at 0.56x and 0.57x with ``--threads 1``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import time

# mallopt(3) parameter numbers (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: blocks below this come from the heap (and are reused) instead of fresh mmap pages
MMAP_THRESHOLD_BYTES = 512 << 20
#: free memory at the heap top kept instead of returned to the kernel
TRIM_THRESHOLD_BYTES = 1 << 30
#: extra bytes requested each time the heap grows (fewer brk calls)
TOP_PAD_BYTES = 64 << 20

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Configure glibc malloc to reuse freed memory (see module docstring); idempotent.

    Returns True when the settings are in force (Linux with glibc, not disabled by
    ``CTRKIT_MALLOC_TUNING=0``), False otherwise (a no-op on other platforms).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("CTRKIT_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # older glibc caps the mmap threshold at 32 MiB (64-bit): fall back to the cap
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 or mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
    trim_ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    pad_ok = mallopt(_M_TOP_PAD, TOP_PAD_BYTES) == 1
    _applied = mmap_ok and trim_ok and pad_ok
    return _applied


def busy_cores_now(window: float = 0.25) -> float | None:
    """Cores kept busy by all processes over the next ``window`` seconds (``/proc/stat``; Linux).

    Called while this process sleeps, so it measures the others -- unlike the load average, which
    also remembers this process's own work of the last minute. None where ``/proc/stat`` is missing.
    """

    def sample() -> tuple[int, int]:
        with open("/proc/stat", "rb") as stat:
            values = [int(v) for v in stat.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(values), values[3] + values[4]

    try:
        total_0, idle_0 = sample()
        time.sleep(window)
        total_1, idle_1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total_1 - total_0
    if elapsed <= 0:
        return None
    return (1.0 - (idle_1 - idle_0) / elapsed) * (os.cpu_count() or 1)


def busy_cores_advice(threads: int) -> str | None:
    """A one-line note suggesting fewer intra-op ``threads`` when other processes keep cores busy.

    None when the idle cores (sampled by :func:`busy_cores_now`) suffice, with one thread, or where
    the load cannot be read.
    """
    if threads <= 1:
        return None
    busy = busy_cores_now()
    if busy is None:
        return None
    cores = os.cpu_count() or 1
    if busy < cores - threads + 0.75:  # as many idle cores as threads
        return None
    free = max(1, int(cores - busy + 0.25))
    return (f"note: other processes keep {busy:.1f} of {cores} cores busy and {threads} threads are in use; "
            f"when cores are shared the threads wait on each other -- --threads {free} may train faster")
