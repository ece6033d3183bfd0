"""Micro-batching: the encoded rows of concurrent requests scored together, in one model call.

A request handler :meth:`MicroBatcher.submit`\\ s its encoded batch and awaits the returned
future. One worker thread (the only caller of the model, which is therefore never called
concurrently) takes the first waiting batch, then keeps collecting until ``max_wait_s`` has passed
since it took that first one or ``max_batch_rows`` rows are gathered; it concatenates the batches
(``np.concatenate`` per key), calls ``score`` once and hands each request its own slice of the
scores, in submission order.

A batch that would push the gathered rows past ``max_batch_rows`` waits for the next call (a
single batch larger than the limit is scored alone). ``max_wait_s = 0`` takes only what is
already queued: no added latency, merging only under load.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Batch = dict[str, np.ndarray]  # "sparse" (B, F) ids, "dense" (B, D), "seq:<name>" (B, L)


@dataclass
class BatcherStats:
    """What the worker has done: model ``calls``, ``requests`` and ``rows`` scored, and the
    largest number of requests merged into one call."""

    calls: int = 0
    requests: int = 0
    rows: int = 0
    largest_merge: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "requests": self.requests, "rows": self.rows, "largest_merge": self.largest_merge}


@dataclass
class _Job:
    batch: Batch
    rows: int
    future: Future = field(default_factory=Future)


_STOP = None  # put on the queue by close()


class MicroBatcher:
    """Merge concurrently submitted batches into single ``score`` calls on one worker thread.

    ``score``: an encoded batch → one probability per row (``Model.predict_batch``).
    """

    def __init__(self, score: Callable[[Batch], np.ndarray], *, max_wait_s: float = 0.002,
                 max_batch_rows: int = 8192):
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        self.score = score
        self.max_wait_s = max_wait_s
        self.max_batch_rows = max_batch_rows
        self.stats = BatcherStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: _Job | None = None  # taken from the queue but left for the next call
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "MicroBatcher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ctrkit-serve-batcher", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def close(self, timeout: float = 10.0) -> None:
        """Score what is queued, then stop the worker (waits at most ``timeout`` seconds)."""
        if self._thread is None:
            return
        self._stopping = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    # -- requests --------------------------------------------------------------------------------
    def submit(self, batch: Batch) -> Future:
        """Queue ``batch``; the future's result is its probabilities (float64, one per row)."""
        if not self.running:
            raise RuntimeError("the micro-batcher is not running")
        job = _Job(batch, len(batch["sparse"]))
        self._queue.put(job)
        return job.future

    # -- worker ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self._held if self._held is not None else self._queue.get()
            self._held = None
            if first is _STOP:
                self._drain()
                return
            jobs, stop = self._gather(first)
            self._run(jobs)
            if stop:
                self._drain()
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` and the jobs that arrive within the wait window, up to ``max_batch_rows``."""
        jobs, rows = [first], first.rows
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_batch_rows:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            if rows + job.rows > self.max_batch_rows:
                self._held = job
                break
            jobs.append(job)
            rows += job.rows
        return jobs, False

    def _drain(self) -> None:
        """After the stop mark: score what was submitted before it (one call per job)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                self._run([job])

    def _run(self, jobs: list[_Job]) -> None:
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            merged = live[0].batch if len(live) == 1 else {
                key: np.concatenate([job.batch[key] for job in live]) for key in live[0].batch}
            scores = np.asarray(self.score(merged), dtype=np.float64)
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for job in live:
                job.future.set_exception(exc)
            return
        self.stats.calls += 1
        self.stats.requests += len(live)
        self.stats.rows += len(scores)
        self.stats.largest_merge = max(self.stats.largest_merge, len(live))
        start = 0
        for job in live:
            job.future.set_result(scores[start:start + job.rows])
            start += job.rows
