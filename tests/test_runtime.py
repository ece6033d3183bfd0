"""ctrkit.runtime: glibc malloc keeps freed memory for reuse; busy cores are noticed."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctrkit import runtime

# Allocates, writes and frees a 64 MiB buffer 10 times; prints the minor page faults per buffer.
# glibc's default serves a block this size (above its 32 MiB dynamic mmap limit) with fresh mmap
# pages every time, as it does smaller step buffers whenever it trims the heap; tuned, the heap
# keeps the block and the pages are reused.
PROBE = """
import json, resource, sys
import numpy as np
from ctrkit.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tune" else False
np.ones(1 << 10).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    buffer = np.ones(1 << 23)  # 64 MiB, every page written
    del buffer
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"applied": applied, "faults_per_buffer": faults}))
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)


def _probe(mode: str, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "CTRKIT_MALLOC_TUNING"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**base, **env})
    return json.loads(out.stdout)


@glibc_only
def test_freed_memory_is_reused_without_page_faults():
    default = _probe("default")
    tuned = _probe("tune")
    assert tuned["applied"] is True
    # default: every buffer faults in fresh pages; tuned: only the first one does (1/10 per buffer)
    assert tuned["faults_per_buffer"] * 5 <= default["faults_per_buffer"]


@glibc_only
def test_environment_switch_disables_the_tuning():
    assert _probe("tune", CTRKIT_MALLOC_TUNING="0")["applied"] is False


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat")
def test_busy_cores_sees_a_spinning_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = runtime.busy_cores_now(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and 0.7 <= busy <= (os.cpu_count() or 1) + 0.1, busy


def test_no_advice_for_one_thread(monkeypatch):
    def never(window: float = 0.25):
        raise AssertionError("one thread: no need to sample the load")

    monkeypatch.setattr(runtime, "busy_cores_now", never)
    assert runtime.busy_cores_advice(1) is None
