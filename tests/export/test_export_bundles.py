"""Every registry model exports to ONNX, TorchScript and SavedModel and scores as its checkpoint does.

The artifacts are loaded in a fresh process with their runtime only (``score_bundles.py``: one
process per format for all models) and score the rows the checkpoint scored (``ctrkit.load(run)``
``.predict`` of raw Criteo rows, ``.predict_batch`` of encoded Taobao rows) within 1e-5, at two
batch sizes. ``ctrkit.load(bundle)`` scores raw rows as ``ctrkit.load(checkpoint)`` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import CROSS, FORMATS, ROWS

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent / "score_bundles.py"
TOLERANCE = 1e-5


def _score_in_fresh_process(fmt: str, cases, tmp_path: Path) -> dict:
    """Run ``score_bundles.py`` over every bundle of ``fmt``; ``{(model, source framework): npz}``."""
    from ctrkit.export import read_manifest
    from ctrkit.export.inputs import InputTensor, graph_arrays

    jobs, outputs = [], {}
    for case in cases.values():
        for (framework, bundle_format), bundle in case.bundles.items():
            if bundle_format != fmt:
                continue
            inputs = [InputTensor.from_dict(t) for t in read_manifest(bundle)["inputs"]]
            arrays = tmp_path / f"{bundle.name}-inputs.npz"
            np.savez(arrays, **{t.name: a for t, a in zip(inputs, graph_arrays(case.batch, inputs))})
            out = tmp_path / f"{bundle.name}-scores.npz"
            jobs.append({"bundle": str(bundle), "inputs": str(arrays), "out": str(out)})
            outputs[(case.name, framework)] = out
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    result = subprocess.run([sys.executable, str(SCRIPT), fmt, str(jobs_file)], capture_output=True, text=True,
                            timeout=600, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "jobs.json.done").read_text())["ctrkit_modules"] == []
    return {key: dict(np.load(path)) for key, path in outputs.items()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_model_scores_as_its_checkpoint_in_a_fresh_process(bundles, fmt, tmp_path):
    from ctrkit.export import read_manifest
    from ctrkit.registry import MODELS

    scored = _score_in_fresh_process(fmt, bundles, tmp_path)
    native = "tf" if fmt == "savedmodel" else "torch"
    cross = {(name, framework) for name, framework, f in CROSS if f == fmt}
    assert set(scored) == {(name, native) for name in MODELS} | cross  # all 15 models, and the cross paths
    for (name, framework), result in scored.items():
        case = bundles[name]
        manifest = read_manifest(case.bundles[(framework, fmt)])
        assert (manifest["model"], manifest["source_framework"], manifest["export_format"]) == (name, framework, fmt)
        assert all(t["shape"][0] is None for t in manifest["inputs"]) and manifest["output"]["shape"] == [None]
        assert result["full"].shape == (ROWS,) and result["full"].dtype == np.float32
        np.testing.assert_allclose(result["full"], case.expected, rtol=0, atol=TOLERANCE, err_msg=f"{name} {framework}")
        np.testing.assert_allclose(result["chunked"], result["full"], rtol=0, atol=1e-6, err_msg=f"{name} batch size")
        if fmt == "onnx":
            assert int(result["opset"]) == manifest["opset"] == 17


def test_a_bundle_loads_with_ctrkit_load_and_scores_raw_rows_as_the_checkpoint(bundles):
    import ctrkit
    from ctrkit.export.loaded import BundleModel

    case = bundles["deepfm"]
    checkpoint = ctrkit.load(case.run)
    frame = case.raw.to_pandas()
    for (framework, fmt), bundle in case.bundles.items():
        model = ctrkit.load(bundle, batch_size=16)  # several batches
        assert isinstance(model, BundleModel) and (model.name, model.framework) == ("deepfm", fmt)
        assert model.input_columns == checkpoint.input_columns
        meta = model.metadata()
        assert meta["source_framework"] == framework and meta["input_columns"] == checkpoint.input_columns
        np.testing.assert_allclose(model.predict(frame), checkpoint.predict(frame), rtol=0, atol=TOLERANCE)
        batch = checkpoint.encode(frame).batch
        np.testing.assert_allclose(model.predict_batch(batch), checkpoint.predict_batch(batch), rtol=0, atol=TOLERANCE)


def test_bad_rows_are_named_or_nan_as_with_the_checkpoint(bundles):
    import ctrkit
    from ctrkit.errors import InputError

    case = bundles["dcn"]
    frame = case.raw.to_pandas().head(6)
    frame.loc[3, "I2"] = "twelve"
    bundle = ctrkit.load(case.bundles[("torch", "onnx")])
    with pytest.raises(InputError, match="row 4: column I2"):
        bundle.predict(frame)
    scores = bundle.predict(frame, strict=False)
    expected = ctrkit.load(case.run).predict(frame, strict=False)
    assert np.isnan(scores[3]) and np.isnan(expected[3])
    np.testing.assert_allclose(np.delete(scores, 3), np.delete(expected, 3), rtol=0, atol=TOLERANCE)


def test_the_sequence_models_score_encoded_rows_through_load(bundles):
    import ctrkit

    for name in ("din", "dien"):
        case = bundles[name]
        for bundle in case.bundles.values():
            scores = ctrkit.load(bundle).predict_batch(case.batch)
            np.testing.assert_allclose(scores, case.expected, rtol=0, atol=TOLERANCE, err_msg=f"{name} {bundle.name}")


@pytest.mark.parametrize("name", ["deepfm", "din"])
def test_a_bundle_evaluates_a_store_split_as_its_checkpoint(bundles, name):
    import ctrkit

    case = bundles[name]
    expected = ctrkit.load(case.run).evaluate(case.store, "test")
    got = ctrkit.load(case.bundles[("torch", "onnx")] if name == "deepfm" else case.bundles[("tf", "savedmodel")],
                      batch_size=64).evaluate(case.store, "test")
    assert set(got) >= {"auc", "logloss"} and ("gauc" in got) == ("gauc" in expected)
    for key in ("auc", "logloss", "gauc"):
        if key in expected:
            assert got[key] == pytest.approx(expected[key], abs=1e-5), key
