"""``ctrkit export``: the bundle it writes, and its one-line errors that leave nothing behind."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ctrkit.cli import main

pytestmark = pytest.mark.slow  # the session's runs (training every model) come first


@pytest.fixture(scope="module")
def deepfm(runs):
    return runs["deepfm"]


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_the_cli_writes_a_verified_bundle_and_overwrite_replaces_it(deepfm, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["export", str(deepfm.run), "--format", "ONNX", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: deepfm as onnx (model.onnx, opset 17)" in printed
    assert sorted(p.name for p in out.iterdir()) == ["encoder.npz", "manifest.json", "model.onnx"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verified_max_abs_diff"] <= 1e-5
    assert manifest["input_columns"][:2] == ["I1", "I2"] and manifest["label"] == "label"
    assert [t["name"] for t in manifest["inputs"]] == ["sparse"] and manifest["inputs"][0]["dtype"] == "int32"

    assert main(["export", str(deepfm.run), "--format", "torchscript", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["encoder.npz", "manifest.json", "model.pt"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("args, message", [
    (["--format", "pdf"], "--format must be one of onnx, torchscript, savedmodel, got 'pdf'"),
    (["--format", "onnx"], "already exists; give --overwrite to replace it"),
])
def test_bad_format_and_existing_out_are_refused_before_anything_is_written(deepfm, tmp_path, capsys, args, message):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", str(deepfm.run), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and leftovers(tmp_path) == []


def test_overwrite_never_replaces_a_directory_that_is_not_a_bundle(deepfm, tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export", str(deepfm.run), "--format", "onnx", "--out", str(out), "--overwrite"]) == 2
    assert "is not a ctrkit bundle; refusing to replace it" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep"


def test_a_missing_checkpoint_or_encoder_is_one_line(deepfm, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--format", "onnx", "--out", str(tmp_path / "b")]) == 2
    assert "nothing: no such checkpoint or run directory" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(deepfm.run / "best.pt", bare / "best.pt")
    assert main(["export", str(bare), "--format", "onnx", "--out", str(tmp_path / "b")]) == 2
    assert "no encoder.npz in its run directory; give --encoder STORE" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    # with --encoder it exports, and scores as the run does
    assert main(["export", str(bare), "--format", "onnx", "--out", str(tmp_path / "b"),
                 "--encoder", str(deepfm.run / "encoder.npz")]) == 0
    import ctrkit

    np.testing.assert_allclose(ctrkit.load(tmp_path / "b").predict(deepfm.raw), deepfm.expected, rtol=0, atol=1e-5)


def test_a_broken_checkpoint_is_one_line_and_leaves_nothing(deepfm, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "best.pt").write_bytes((deepfm.run / "best.pt").read_bytes()[:1000])
    shutil.copy(deepfm.run / "encoder.npz", broken / "encoder.npz")
    assert main(["export", str(broken), "--format", "torchscript", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a readable ctrkit checkpoint" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []


def test_load_refuses_options_a_bundle_cannot_honour(deepfm, tmp_path):
    import ctrkit
    from ctrkit.errors import ConfigError

    out = tmp_path / "b"
    assert main(["export", str(deepfm.run), "--format", "onnx", "--out", str(out)]) == 0
    with pytest.raises(ConfigError, match="is an export bundle.*precision"):
        ctrkit.load(out, precision="bf16")
