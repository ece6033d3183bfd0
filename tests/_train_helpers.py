"""Tiny stores with planted, learnable structure for the trainer, DDP and CLI tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from ctrkit.data.store import Store, StoreWriter
from ctrkit.schema import Field, Schema

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

VOCAB = (20, 30, 12, 25, 8)
N_DENSE = 2


def planted_schema(dense: bool = True) -> Schema:
    fields = [Field(f"C{i + 1}", "sparse", vocab_size=v) for i, v in enumerate(VOCAB)]
    if dense:
        fields += [Field(f"I{i + 1}", "dense") for i in range(N_DENSE)]
    return Schema(tuple(fields))


def planted_columns(rows: int, seed: int, dense: bool = True) -> dict[str, np.ndarray]:
    """Rows whose click probability is a fixed function of the ids (and of the first dense value).

    Each id has a weight drawn once (seed 0, shared by all splits), plus a pairwise term between
    fields 0 and 1 so that interaction models have something to find. Id 0 (OOV) appears too.
    """
    weights = np.random.default_rng(0)
    field_w = [weights.normal(0.0, 1.2, v) for v in VOCAB]
    pair_w = weights.normal(0.0, 1.0, (VOCAB[0], VOCAB[1]))
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, v, rows) for v in VOCAB], axis=1).astype(np.int32)
    logit = sum(field_w[f][ids[:, f]] for f in range(len(VOCAB))) + pair_w[ids[:, 0], ids[:, 1]] - 1.0
    columns = {"sparse": ids}
    if dense:
        x = rng.normal(0.0, 1.0, (rows, N_DENSE)).astype(np.float32)
        logit = logit + 1.5 * x[:, 0]
        columns["dense"] = x
    p = 1.0 / (1.0 + np.exp(-logit))
    columns["label"] = (rng.random(rows) < p).astype(np.float32)
    return columns


def build_store(path: Path, train: int = 3000, valid: int = 1000, test: int = 1000,
                chunk_rows: int = 500, dense: bool = True) -> Store:
    """A complete store with train/valid/test splits of planted rows."""
    with StoreWriter(path, planted_schema(dense), chunk_rows=chunk_rows) as writer:
        for split, rows, seed in (("train", train, 1), ("valid", valid, 2), ("test", test, 3)):
            if rows:
                writer.append(split, planted_columns(rows, seed, dense))
        return writer.commit({"options": {"source": "planted test data"}})


def run_cli(*args: str, timeout: float = 300, launcher: list[str] | None = None,
            module: str = "ctrkit.cli") -> subprocess.CompletedProcess:
    """``python -m ctrkit.cli ARGS``, or ``python LAUNCHER ctrkit.cli ARGS``, output captured."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [PYTHON, *(launcher or ["-m"]), module, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))


def free_loopback_ports(n: int) -> list[int]:
    """``n`` TCP ports on 127.0.0.1 that were free a moment ago (for the workers of a local cluster)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_in_process(capsys, *argv) -> tuple[int, str, str]:
    """``ctrkit ARGV`` in this process (arguments may be paths): (exit code, stdout, stderr)."""
    from ctrkit.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err
