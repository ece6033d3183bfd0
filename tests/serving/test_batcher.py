"""The micro-batcher alone: merged calls, results split back per request, limits, failures, shutdown."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ctrkit.serving.batcher import MicroBatcher


class RecordingModel:
    """``score`` = the first sparse id of each row (so each request can check it got its own rows);
    records the size of every call and can be made slow or failing."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[int] = []
        self.delay = delay
        self.fail_next = False
        self.concurrent = 0
        self.max_concurrent = 0
        self._lock = threading.Lock()

    def __call__(self, batch):
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            time.sleep(self.delay)
            self.calls.append(len(batch["sparse"]))
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("model exploded")
            return batch["sparse"][:, 0].astype(np.float64) + batch["dense"][:, 0]
        finally:
            with self._lock:
                self.concurrent -= 1


def request(first_id: int, rows: int):
    sparse = np.arange(first_id, first_id + rows, dtype=np.int32)[:, None].repeat(3, axis=1)  # (B, 3)
    dense = np.full((rows, 2), 0.5, np.float32)  # (B, 2)
    return {"sparse": sparse, "dense": dense}, sparse[:, 0] + 0.5


def test_concurrent_requests_share_model_calls_and_get_their_own_rows():
    model = RecordingModel(delay=0.02)
    batcher = MicroBatcher(model, max_wait_s=0.05, max_batch_rows=10_000).start()
    try:
        jobs = [request(100 * i, rows=1 + i % 4) for i in range(24)]
        results: dict[int, np.ndarray] = {}

        def client(i):
            results[i] = batcher.submit(jobs[i][0]).result(timeout=10)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(results) == len(jobs)
        for i, (_, expected) in enumerate(jobs):
            np.testing.assert_array_equal(results[i], expected)
        assert len(model.calls) < len(jobs) / 2  # merged
        assert sum(model.calls) == sum(len(j[0]["sparse"]) for j in jobs)
        assert batcher.stats.requests == len(jobs) and batcher.stats.calls == len(model.calls)
        assert batcher.stats.largest_merge > 1
        assert model.max_concurrent == 1  # one worker: never called concurrently
    finally:
        batcher.close()


def test_a_call_never_gathers_more_than_max_batch_rows():
    model = RecordingModel(delay=0.01)
    batcher = MicroBatcher(model, max_wait_s=0.05, max_batch_rows=10).start()
    try:
        jobs = [request(10 * i, rows=4) for i in range(12)] + [request(1000, rows=25)]  # the last alone is larger
        futures = [batcher.submit(batch) for batch, _ in jobs]
        for future, (_, expected) in zip(futures, jobs):
            np.testing.assert_array_equal(future.result(timeout=10), expected)
        assert max(model.calls) == 25 and sorted(model.calls)[-2] <= 10
        assert 25 in model.calls and all(c % 4 == 0 for c in model.calls if c != 25)
    finally:
        batcher.close()


def test_zero_wait_scores_a_lone_request_at_once():
    model = RecordingModel()
    batcher = MicroBatcher(model, max_wait_s=0.0).start()
    try:
        batch, expected = request(7, rows=3)
        started = time.perf_counter()
        np.testing.assert_array_equal(batcher.submit(batch).result(timeout=5), expected)
        assert time.perf_counter() - started < 1.0
    finally:
        batcher.close()


def test_a_failing_call_fails_its_requests_only_and_the_worker_goes_on():
    model = RecordingModel()
    batcher = MicroBatcher(model, max_wait_s=0.0).start()
    try:
        model.fail_next = True
        with pytest.raises(RuntimeError, match="model exploded"):
            batcher.submit(request(1, 2)[0]).result(timeout=5)
        batch, expected = request(5, 2)
        np.testing.assert_array_equal(batcher.submit(batch).result(timeout=5), expected)
        assert batcher.running
    finally:
        batcher.close()


def test_close_scores_what_was_queued_then_refuses_new_requests():
    model = RecordingModel(delay=0.05)
    batcher = MicroBatcher(model, max_wait_s=0.0, max_batch_rows=2).start()
    jobs = [request(10 * i, rows=2) for i in range(5)]
    futures = [batcher.submit(batch) for batch, _ in jobs]
    batcher.close()
    for future, (_, expected) in zip(futures, jobs):
        np.testing.assert_array_equal(future.result(timeout=0), expected)
    with pytest.raises(RuntimeError, match="not running"):
        batcher.submit(jobs[0][0])


@pytest.mark.parametrize("options", [{"max_wait_s": -1}, {"max_batch_rows": 0}])
def test_options_are_checked(options):
    with pytest.raises(ValueError):
        MicroBatcher(RecordingModel(), **options)
