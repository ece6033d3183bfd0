"""TensorBoard's HParams plugin: every run writes its hyper-parameters and final scores once, the same
way in both frameworks; read back here with TensorBoard's own event reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import build_store  # noqa: E402

from ctrkit.training.reporting import hparams_metrics, hparams_values  # noqa: E402

pytest.importorskip("tensorboard")


def read_hparams(log_dir: Path) -> tuple[dict, dict, int]:
    """(hyper-parameters of the session start, the ``hparams/*`` scalars, the session end's status)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG]).session_start_info
    end = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_END_INFO_TAG]).session_end_info
    values = {}
    for name, value in start.hparams.items():
        values[name] = getattr(value, value.WhichOneof("kind"))
    scalars = {tag: accumulator.Scalars(tag)[-1].value for tag in accumulator.Tags()["scalars"]
               if tag.startswith("hparams/")}
    return values, scalars, end.status


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("hparams") / "store.lmdb", train=1500, valid=400, test=400).path


@pytest.mark.parametrize("framework", ["torch", "tf"])
def test_a_run_writes_its_hparams_and_final_scores(store, tmp_path, framework):
    if framework == "tf":
        pytest.importorskip("tensorflow")
    from tensorboard.plugins.hparams import api_pb2

    from ctrkit.config import TrainConfig
    from ctrkit.training.frameworks import train_from_config

    save_dir = tmp_path / framework
    metrics = train_from_config(TrainConfig(model="deepfm", framework=framework, data=str(store), epochs=2,
                                            batch_size=256, lr=0.002, threads=1, embed_size=4, hidden_units=[16, 8],
                                            model_save_dir=str(save_dir)))
    assert len(list((save_dir / "tensorboard").glob("*.hparams"))) == 1  # written once
    values, scalars, status = read_hparams(save_dir / "tensorboard")
    assert values["model"] == "deepfm" and values["framework"] == framework
    assert values["lr"] == pytest.approx(0.002) and values["batch_size"] == 256 and values["epochs"] == 2
    assert values["embed_size"] == 4 and values["hidden_units"] == "16,8"
    assert values["optimizer"] == "Adam" and values["data"] == str(store)
    assert "model_save_dir" not in values and "threads" not in values
    assert status == api_pb2.STATUS_SUCCESS
    assert scalars.keys() == {"hparams/valid_auc", "hparams/valid_logloss", "hparams/test_auc", "hparams/test_logloss"}
    assert scalars["hparams/test_auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    assert scalars["hparams/test_logloss"] == pytest.approx(metrics["test"]["logloss"], abs=1e-6)
    assert scalars["hparams/valid_auc"] == pytest.approx(metrics["best_valid"]["auc"], abs=1e-6)
    assert json.loads((save_dir / "metrics.json").read_text())["parameters"] > 0


def test_hparams_values_and_metrics():
    config = {"model": "dcn", "framework": "tf", "lr": 0.001, "batch_size": 4096, "gpu_ids": [0, 1],
              "embed_size": None, "batch_norm": False, "model_args": {"x": 1}, "model_save_dir": "runs/dcn"}
    values = hparams_values(config, {"embed_size": 16, "hidden_units": [400, 400], "cross_layers": 3})
    assert values == {"model": "dcn", "framework": "tf", "lr": 0.001, "batch_size": 4096.0, "gpu_ids": "0,1",
                      "batch_norm": False, "embed_size": 16.0, "hidden_units": "400,400", "cross_layers": 3.0}
    assert hparams_metrics({"auc": 0.8, "logloss": 0.4}, {"auc": 0.79, "logloss": 0.41, "gauc": 0.7, "rows": 9}) == {
        "hparams/valid_auc": 0.8, "hparams/valid_logloss": 0.4, "hparams/test_auc": 0.79,
        "hparams/test_logloss": 0.41, "hparams/test_gauc": 0.7}
    assert hparams_metrics(None, None) == {}


def test_write_hparams_keeps_one_session_per_run(tmp_path):
    from ctrkit.training.reporting import write_hparams

    write_hparams(tmp_path, {"model": "lr", "lr": 0.1, "batch_norm": True}, {"hparams/test_auc": 0.5}, 1)
    (tmp_path / "events.out.tfevents.0000000001.host.1.hparams").write_bytes(
        next(tmp_path.glob("*.hparams")).read_bytes())  # as if an earlier process had written it
    write_hparams(tmp_path, {"model": "lr", "lr": 0.2, "batch_norm": True}, {"hparams/test_auc": 0.75}, 2)
    assert len(list(tmp_path.glob("*.hparams"))) == 1
    values, scalars, _ = read_hparams(tmp_path)
    assert values == {"model": "lr", "lr": 0.2, "batch_norm": True} and scalars == {"hparams/test_auc": 0.75}
