"""TensorBoard scalars of both trainers (``reporting.EventScalarWriter``): read back with TensorBoard's
own event reader; a resumed run's writer drops the interrupted run's later steps; no framework import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ctrkit.training.reporting import EventScalarWriter

pytest.importorskip("tensorboard")


def scalars(log_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_scalars_read_back_by_tensorboard(tmp_path):
    writer = EventScalarWriter(tmp_path)
    for step in range(1, 6):
        writer.add_scalar("train/loss", 1.0 / step, step)
    writer.add_scalar("valid/auc", 0.75, 5)
    writer.close()
    assert scalars(tmp_path, "train/loss") == [(s, pytest.approx(1.0 / s)) for s in range(1, 6)]
    assert scalars(tmp_path, "valid/auc") == [(5, 0.75)]


def test_a_resumed_writer_purges_the_steps_it_writes_again(tmp_path):
    first = EventScalarWriter(tmp_path)
    for step in range(1, 11):  # the interrupted run got to step 10; its checkpoint was at step 5
        first.add_scalar("train/loss", float(step), step)
    first.close()
    resumed = EventScalarWriter(tmp_path, purge_step=6)
    for step in range(6, 9):
        resumed.add_scalar("train/loss", 100.0 + step, step)
    resumed.close()
    assert scalars(tmp_path, "train/loss") == [(s, float(s)) for s in range(1, 6)] + [(s, 100.0 + s) for s in (6, 7, 8)]


def test_writing_scalars_imports_neither_framework(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from ctrkit.training.reporting import open_scalar_writer
        writer = open_scalar_writer({str(tmp_path)!r}, None)
        writer.add_scalar("a", 1.0, 1)
        writer.close()
        print(sorted(m for m in ("tensorflow", "torch") if m in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
