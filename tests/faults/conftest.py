"""Fixtures of the fault-injection suite: a small file system that fills up."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest


@pytest.fixture
def full_disk(tmp_path: Path):
    """A factory of directories on a tiny tmpfs: ``full_disk(kib)`` holds at most ``kib`` KiB.

    Needs root (CI and the developers' machines run as root); skips elsewhere, since the disk-full
    behaviour cannot be produced without a real file system that fills.
    """
    mounts: list[Path] = []

    def make(kib: int = 256) -> Path:
        mount = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
        mount.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mount)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {result.stderr.strip()}")
        mounts.append(mount)
        return mount

    yield make
    for mount in mounts:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path, leave_bytes: int = 0) -> None:
    """Fill ``directory``'s file system until at most ``leave_bytes`` are free."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize - leave_bytes
    if free > 0:
        with open(directory / ".ballast", "wb") as handle:
            try:
                handle.write(b"\0" * free)
            except OSError:
                pass
