"""The real ``ctrkit serve`` process on loopback: up, concurrent requests, bad ones, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from ctrkit.serving.client import wait_healthy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT_S = 90  # imports torch and loads the model on a busy 2-core machine
STOP_TIMEOUT_S = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "ctrkit.cli", "serve", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_on_loopback_answers_concurrent_requests_and_stops_cleanly(served_run):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = serve(str(served_run.run_dir), "--port", str(port), "--threads", "1", "--max-wait-ms", "20",
                    "--max-rows-per-request", "50")
    try:
        try:
            wait_healthy(url, process, timeout=START_TIMEOUT_S)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}: {process.communicate(timeout=10)[1] if process.poll() is not None else ''}")
        parts = [served_run.rows[i * 10:i * 10 + 10] for i in range(8)]
        with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda part: client.post("/predict", json={"rows": part}), parts))
            for part, response in zip(parts, responses):
                assert response.status_code == 200, response.text
                np.testing.assert_allclose(response.json()["probabilities"], served_run.model.predict(part),
                                           atol=1e-6, rtol=0)
            too_many = client.post("/predict", json={"rows": served_run.rows[:51]})
            assert too_many.status_code == 413 and "at most 50" in too_many.json()["error"]
            bad = client.post("/predict", content=b"{", headers={"content-type": "application/json"})
            assert bad.status_code == 400
            assert client.get("/metadata").json()["model"] == "deepfm"
            health = client.get("/health").json()
            assert health["batcher"]["requests"] == 8 and health["batcher"]["calls"] <= 8
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=STOP_TIMEOUT_S)
        assert process.returncode == 0, err
        assert f"on http://127.0.0.1:{port}" in err and "stopped after 8 requests" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_port_in_use_is_one_line_before_any_loading(served_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = serve(str(served_run.run_dir), "--port", str(port))
        _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
