"""The run directory carries the dataset's encoder (``encoder.npz``), written by the neutral loop for
both frameworks, so that ``ctrkit predict`` scores raw rows from the checkpoint alone."""

from __future__ import annotations

import pytest

from ctrkit.cli import main
from ctrkit.data.encoder import ENCODER_FILE
from ctrkit.training.rundir import RUN_FILES


@pytest.fixture(scope="module")
def raw_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder")
    rows, store = root / "rows.tsv", root / "s.lmdb"
    assert main(["synth", "criteo", str(rows), "--rows", "3000", "--seed", "3"]) == 0
    assert main(["preprocess", "criteo", str(rows), "--out", str(store)]) == 0
    few = root / "few.tsv"
    few.write_text("".join(rows.read_text().splitlines(keepends=True)[:200]))
    return store, few


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_predict_needs_only_the_run_directory(raw_store, tmp_path, framework, capsys):
    store, few = raw_store
    run = tmp_path / "run"
    assert main(["train", "--framework", framework, "--model", "lr", "--data", str(store), "--epochs", "1",
                 "--batch_size", "256", "--model_save_dir", str(run)]) == 0
    assert (run / ENCODER_FILE).is_file()
    alone, with_store = tmp_path / "alone.tsv", tmp_path / "with_store.tsv"
    assert main(["predict", str(run), str(few), "--out", str(alone)]) == 0
    assert main(["predict", str(run), str(few), "--data", str(store), "--out", str(with_store)]) == 0
    scores = alone.read_text().split()
    assert len(scores) == 200 and len(set(scores)) > 10
    assert scores == with_store.read_text().split()


def test_a_directory_holding_only_an_encoder_is_a_run_to_be_overwritten(raw_store, tmp_path, capsys):
    store, _ = raw_store
    assert ENCODER_FILE in RUN_FILES
    run = tmp_path / "run"
    run.mkdir()
    (run / ENCODER_FILE).write_bytes(b"left by an earlier run")
    args = ["train", "--model", "lr", "--data", str(store), "--epochs", "1", "--model_save_dir", str(run)]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert (run / ENCODER_FILE).read_bytes() != b"left by an earlier run"
