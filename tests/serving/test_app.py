"""The application in-process (FastAPI's TestClient): scores equal Model.predict and ``ctrkit predict``;
every kind of bad request is a 4xx with a clear JSON message, and the service keeps answering."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from ctrkit.cli import main  # noqa: E402
from ctrkit.serving import ServeOptions, create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(served_run):
    options = ServeOptions(max_wait_ms=20, max_rows_per_request=100, max_body_bytes=200_000)
    with TestClient(create_app(served_run.model, options)) as client:
        yield client


def post_json(client, body, **headers):
    return client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json", **headers})


def test_scores_equal_model_predict_and_ctrkit_predict(client, served_run, tmp_path):
    rows = served_run.rows[:80]
    response = client.post("/predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["rows"], body["model"], body["framework"]) == (80, "deepfm", "torch")
    served = np.array(body["probabilities"])
    np.testing.assert_allclose(served, served_run.model.predict(rows), atol=1e-6, rtol=0)

    raw = tmp_path / "rows.tsv"
    raw.write_text("".join(served_run.raw.read_text().splitlines(keepends=True)[:80]))
    assert main(["predict", str(served_run.run_dir), str(raw), "--out", str(tmp_path / "scores.txt")]) == 0
    np.testing.assert_allclose(served, np.loadtxt(tmp_path / "scores.txt"), atol=1e-6, rtol=0)


def test_the_columnar_form_scores_the_same(client, served_run):
    rows = served_run.rows[:30]
    columns = {name: [row[name] for row in rows] for name in served_run.model.input_columns}
    by_rows = client.post("/predict", json={"rows": rows}).json()["probabilities"]
    response = client.post("/predict", json={"columns": columns})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["probabilities"], by_rows, atol=1e-12)


def test_numbers_as_strings_and_floats_read_as_the_file_reads_them(client, served_run):
    row = served_run.rows[0]
    plain = client.post("/predict", json={"rows": [row]}).json()["probabilities"]
    as_text = {k: (str(v) if v is not None else None) for k, v in row.items()}
    as_float = {k: (float(v) if isinstance(v, int) else v) for k, v in row.items()}
    for variant in (as_text, as_float):
        response = client.post("/predict", json={"rows": [variant]})
        assert response.status_code == 200, response.text
        assert response.json()["probabilities"] == pytest.approx(plain, abs=1e-12)


def test_health_and_metadata(client, served_run):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert (meta["model"], meta["framework"], meta["dataset"]) == ("deepfm", "torch", "criteo")
    assert meta["input_columns"] == served_run.model.input_columns
    assert {f["name"] for f in meta["schema"]} >= {"C1", "I13"} and meta["version"]
    assert meta["serving"]["max_rows_per_request"] == 100


def bad_requests(rows):
    """(name, request kwargs, status, words the message must hold)."""
    row = rows[0]
    without_i1 = {k: v for k, v in row.items() if k != "I1"}
    return [
        ("missing column", {"json": {"rows": [without_i1]}}, 422, ["rows[0]", "missing column 'I1'", "null"]),
        ("extra column", {"json": {"rows": [row, {**row, "user": "u1"}]}}, 422, ["rows[1]", "unknown column 'user'", "C26"]),
        ("object as a value", {"json": {"rows": [{**row, "I3": {"v": 1}}]}}, 422, ["rows[0].I3", "an object"]),
        ("list as a value", {"json": {"rows": [row, {**row, "C2": ["a"]}]}}, 422, ["rows[1].C2", "a list"]),
        ("boolean as a value", {"json": {"rows": [{**row, "I1": True}]}}, 422, ["rows[0].I1", "boolean"]),
        ("text in a numeric column", {"json": {"rows": [row, row, {**row, "I2": "many"}]}}, 422, ["rows[2].I2", "many"]),
        ("fraction in an integer column", {"json": {"rows": [{**row, "I2": 2.5}]}}, 422, ["rows[0].I2", "2.5"]),
        ("huge integer", {"json": {"rows": [{**row, "I4": 2 ** 80}]}}, 422, ["rows[0].I4", "out of range"]),
        ("empty rows", {"json": {"rows": []}}, 422, ["no rows"]),
        ("row not an object", {"json": {"rows": [row, 5]}}, 422, ["rows[1]", "object"]),
        ("rows not a list", {"json": {"rows": row}}, 422, ["'rows' must be a list"]),
        ("no rows key", {"json": {"data": [row]}}, 422, ["unknown key", "'data'", "'rows'"]),
        ("both forms", {"json": {"rows": [row], "columns": {}}}, 422, ["both 'rows' and 'columns'"]),
        ("body not an object", {"json": [row]}, 422, ["JSON object", "a list"]),
        ("columns of different lengths",
         {"json": {"columns": {**{k: [v, v] for k, v in row.items()}, "I1": [1]}}}, 422, ["differ in length"]),
        ("column not a list", {"json": {"columns": {**{k: [v] for k, v in row.items()}, "C1": "x"}}}, 422,
         ["columns.C1", "list"]),
        ("text in a numeric column (columns)", {"json": {"columns": {**{k: [v, v] for k, v in row.items()},
                                                                      "I5": [1, "x"]}}}, 422, ["columns.I5[1]"]),
        ("too many rows", {"json": {"rows": [row] * 101}}, 413, ["101 rows", "at most 100"]),
        ("body too large", {"content": b" " * 300_000, "headers": {"content-type": "application/json"}}, 413,
         ["bytes"]),
        ("invalid JSON", {"content": b'{"rows": [', "headers": {"content-type": "application/json"}}, 400,
         ["invalid JSON", "line 1"]),
        ("empty body", {"content": b"", "headers": {"content-type": "application/json"}}, 400, ["empty body"]),
        ("Infinity", {"content": b'{"rows": [{"I1": Infinity}]}', "headers": {"content-type": "application/json"}},
         422, ["Infinity"]),
        ("wrong content type", {"content": json.dumps({"rows": [row]}), "headers": {"content-type": "text/csv"}},
         415, ["Content-Type: application/json", "text/csv"]),
        ("form-encoded", {"data": {"rows": "x"}}, 415, ["application/json"]),
    ]


def test_every_bad_request_is_a_4xx_with_a_message_and_the_service_goes_on(client, served_run):
    good = client.post("/predict", json={"rows": served_run.rows[:3]}).json()["probabilities"]
    for name, kwargs, status, words in bad_requests(served_run.rows):
        response = client.post("/predict", **kwargs)
        assert response.status_code == status, (name, response.text)
        message = response.json()["error"]
        assert all(word in message for word in words), (name, message)
        again = client.post("/predict", json={"rows": served_run.rows[:3]})  # still answers good requests
        assert again.status_code == 200 and again.json()["probabilities"] == good, name


def test_unknown_paths_and_methods_are_4xx_json(client):
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json()
    response = client.get("/predict")
    assert response.status_code == 405 and "GET /predict" in response.json()["error"]


def test_concurrent_requests_are_scored_together_and_split_back(served_run):
    rows = served_run.rows
    options = ServeOptions(max_wait_ms=100)
    with TestClient(create_app(served_run.model, options)) as client:
        batcher = client.app.state.batcher
        slices = [rows[i * 5:i * 5 + 1 + i % 5] for i in range(16)]

        def score(part):
            response = client.post("/predict", json={"rows": part})
            assert response.status_code == 200, response.text
            return response.json()["probabilities"]

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(score, slices))
        for part, got in zip(slices, results):
            np.testing.assert_allclose(got, served_run.model.predict(part), atol=1e-6, rtol=0)
        assert batcher.stats.requests == 16
        assert batcher.stats.calls < 16 and batcher.stats.largest_merge > 1
        assert client.get("/health").json()["batcher"]["requests"] == 16


def test_not_ready_before_the_lifespan_starts(served_run):
    client = TestClient(create_app(served_run.model))  # no `with`: the batcher is not started
    assert client.get("/health").status_code == 503
    response = client.post("/predict", json={"rows": served_run.rows[:1]})
    assert response.status_code == 503 and "not ready" in response.json()["error"]


def test_an_exported_bundle_serves_the_scores_of_its_checkpoint(served_run, tmp_path):
    pytest.importorskip("onnxruntime")
    import ctrkit

    bundle = tmp_path / "bundle"
    assert main(["export", str(served_run.run_dir), "--format", "onnx", "--out", str(bundle)]) == 0
    model = ctrkit.load(bundle, threads=1)
    rows = served_run.rows[:40]
    with TestClient(create_app(model)) as client:
        response = client.post("/predict", json={"rows": rows})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["probabilities"], served_run.model.predict(rows), atol=1e-6, rtol=0)
        assert client.get("/metadata").json()["model"] == "deepfm"
        bad = client.post("/predict", json={"rows": [{**rows[0], "I1": "x"}]})
        assert bad.status_code == 422 and "rows[0].I1" in bad.json()["error"]
