"""Small client-side helpers for tests, load tests and examples of ``ctrkit serve``."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

CRITEO_INTEGER_COLUMNS = [f"I{i}" for i in range(1, 14)]
CRITEO_CATEGORICAL_COLUMNS = [f"C{i}" for i in range(1, 27)]


def criteo_json_rows(tsv: str | Path) -> list[dict]:
    """Unlabeled Criteo TSV lines (39 fields) → row objects as a client sends them: integers for
    ``I1..I13``, strings for ``C1..C26``, ``None`` for an empty field."""
    rows = []
    for line in Path(tsv).read_text().splitlines():
        fields = line.split("\t")
        row = {c: (int(v) if v else None) for c, v in zip(CRITEO_INTEGER_COLUMNS, fields[:13])}
        row.update({c: (v or None) for c, v in zip(CRITEO_CATEGORICAL_COLUMNS, fields[13:])})
        rows.append(row)
    return rows


def wait_healthy(url: str, process: subprocess.Popen | None = None, timeout: float = 90) -> None:
    """Poll ``url``/health until it answers 200; ``RuntimeError`` when ``process`` exits first or
    ``timeout`` seconds pass."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"ctrkit serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"ctrkit serve at {url} not healthy after {timeout} s")
