"""``ctrkit evaluate`` of several checkpoints in one call, and without ``--data`` (the recorded store)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import build_store  # noqa: E402
from _train_helpers import run_in_process as cli


def train(store: Path, save_dir: Path, model: str) -> dict:
    from ctrkit.config import TrainConfig
    from ctrkit.training.frameworks import train_from_config

    return train_from_config(TrainConfig(model=model, data=str(store), epochs=1, batch_size=256, threads=1,
                                         embed_size=4, hidden_units=[8], model_save_dir=str(save_dir)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``lr`` and ``deepfm`` on a store with dense fields, ``fm`` on one without (another schema),
    ``moved`` on a store that is then deleted."""
    root = tmp_path_factory.mktemp("evaluate_many")
    dense = build_store(root / "dense.lmdb", train=1500, valid=400, test=500).path
    sparse = build_store(root / "sparse.lmdb", train=1500, valid=400, test=300, dense=False).path
    gone = build_store(root / "gone.lmdb", train=1500, valid=400, test=500).path
    metrics = {"lr": train(dense, root / "lr", "lr"), "deepfm": train(dense, root / "deepfm", "deepfm"),
               "fm": train(sparse, root / "fm", "fm"), "moved": train(gone, root / "moved", "lr")}
    shutil.rmtree(gone)
    return root, metrics


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The printed table as {checkpoint: {column: cell}}."""
    lines = text.strip().splitlines()
    heading = lines[0].split()
    return {row["checkpoint"]: row for row in (dict(zip(heading, line.split())) for line in lines[1:])}


def test_several_checkpoints_each_on_its_recorded_store(runs, capsys, tmp_path):
    root, metrics = runs
    checkpoints = [root / "lr", root / "deepfm" / "best.pt", root / "fm"]
    code, out, err = cli(capsys, "evaluate", *checkpoints, "--out", tmp_path / "all.json")
    assert code == 0, err
    table = table_rows(out)
    assert list(table) == [str(c) for c in checkpoints]
    assert [row["model"] for row in table.values()] == ["lr", "deepfm", "fm"]
    assert {row["framework"] for row in table.values()} == {"torch"}
    assert table[str(root / "fm")]["rows"] == "300" and table[str(root / "lr")]["rows"] == "500"

    results = json.loads((tmp_path / "all.json").read_text())
    assert isinstance(results, list) and len(results) == 3
    for result, name in zip(results, ["lr", "deepfm", "fm"]):
        assert result["model"] == name and result["split"] == "test"
        assert result["auc"] == pytest.approx(metrics[name]["test"]["auc"], abs=1e-9)
        assert result["logloss"] == pytest.approx(metrics[name]["test"]["logloss"], abs=1e-9)
        assert float(table_rows(out)[result["checkpoint"]]["auc"]) == pytest.approx(result["auc"], abs=1e-6)
    assert results[2]["data"] == str(root / "sparse.lmdb") and results[0]["data"] == str(root / "dense.lmdb")


def test_one_checkpoint_keeps_the_dict_output(runs, capsys, tmp_path):
    root, metrics = runs
    code, out, err = cli(capsys, "evaluate", root / "lr", "--data", root / "dense.lmdb", "--split", "valid",
                         "--out", tmp_path / "one.json")
    assert code == 0, err
    result = json.loads((tmp_path / "one.json").read_text())
    assert isinstance(result, dict)
    assert {"split", "auc", "logloss", "rows", "ctr", "checkpoint"} <= set(result)
    assert result["split"] == "valid" and result["rows"] == 400
    assert result["auc"] == pytest.approx(metrics["lr"]["history"][-1]["valid_auc"], abs=1e-9)
    assert "valid" in out and "auc" in out.splitlines()[0]


def test_data_applies_to_every_checkpoint(runs, capsys):
    root, metrics = runs
    code, out, err = cli(capsys, "evaluate", root / "lr", root / "moved", "--data", root / "dense.lmdb")
    assert code == 0, err
    table = table_rows(out)
    assert table[str(root / "moved")]["rows"] == "500"  # evaluated on --data, although its own store is gone
    # a checkpoint of another schema is refused on --data, in one line
    code, _, err = cli(capsys, "evaluate", root / "lr", root / "fm", "--data", root / "dense.lmdb")
    assert code == 2 and "different schema" in err and len(err.strip().splitlines()) == 1


def test_a_recorded_store_that_is_gone_is_one_line(runs, capsys, tmp_path):
    root, _ = runs
    code, out, err = cli(capsys, "evaluate", root / "lr", root / "moved", "--out", tmp_path / "x.json")
    assert code == 2 and not out
    assert err.strip() == (f"ctrkit evaluate: error: {root / 'moved'} was trained on {root / 'gone.lmdb'}, "
                           "which no longer exists; give --data")
    assert not (tmp_path / "x.json").exists()


def test_out_may_not_be_a_file_of_a_recorded_store(runs, capsys):
    root, _ = runs
    before = (root / "dense.lmdb" / "data.mdb").read_bytes()
    code, out, err = cli(capsys, "evaluate", root / "lr", "--out", root / "dense.lmdb" / "data.mdb")
    assert code == 2 and "is also an input" in err and "auc" not in out
    assert (root / "dense.lmdb" / "data.mdb").read_bytes() == before
