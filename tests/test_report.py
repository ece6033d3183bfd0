"""``ctrkit report``: the page, its PNGs and its numbers; the calibration metrics it shows; what
training records for it (``test_predictions.npz``, parameters, peak memory)."""

from __future__ import annotations

import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_helpers import planted_columns, planted_schema  # noqa: E402

from ctrkit.cli import main  # noqa: E402
from ctrkit.data.store import StoreWriter  # noqa: E402
from ctrkit.metrics import auc, calibration_bins, expected_calibration_error, gauc, roc_curve  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# the metrics: ECE, calibration bins, ROC
# ---------------------------------------------------------------------------------------------
def test_ece_of_a_hand_computed_case():
    labels = [0, 1, 1, 0]
    probs = [0.1, 0.3, 0.8, 0.9]
    # two equal-width bins: [0, .5) holds .1, .3 (mean .2, observed .5); [.5, 1] holds .8, .9 (mean .85, observed .5)
    bins = calibration_bins(labels, probs, 2)
    assert bins["count"].tolist() == [2, 2]
    assert bins["mean_predicted"] == pytest.approx([0.2, 0.85])
    assert bins["observed"] == pytest.approx([0.5, 0.5])
    assert expected_calibration_error(labels, probs, 2) == pytest.approx(0.5 * 0.3 + 0.5 * 0.35)
    # one bin: |mean prediction .525 - click rate .5|
    assert expected_calibration_error(labels, probs, 1) == pytest.approx(0.025)


def test_calibration_bins_uniform_edges_empty_bins_and_quantiles():
    # 0.5 falls in the upper of two bins, 1.0 in the last; empty bins are dropped
    bins = calibration_bins([1, 0, 1], [0.5, 0.49, 1.0], 2)
    assert bins["count"].tolist() == [1, 2] and bins["observed"] == pytest.approx([0.0, 1.0])
    bins = calibration_bins([0, 0, 1], [0.05, 0.06, 0.07], 10)
    assert bins["count"].tolist() == [3]
    # equal-count bins: the sorted rows cut in runs of equal length, whatever their values
    probs = np.array([0.9, 0.01, 0.02, 0.8, 0.03, 0.04])
    labels = np.array([1, 0, 0, 1, 1, 0])
    bins = calibration_bins(labels, probs, 3, "quantile")
    assert bins["count"].tolist() == [2, 2, 2]
    assert bins["mean_predicted"] == pytest.approx([0.015, 0.035, 0.85])
    assert bins["observed"] == pytest.approx([0.0, 0.5, 1.0])
    ece = expected_calibration_error(labels, probs, 3, "quantile")
    assert ece == pytest.approx((0.015 + 0.465 + 0.15) / 3)
    # a calibrated model: every bin's observed rate equals its mean prediction
    assert expected_calibration_error([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 4) == 0.0
    with pytest.raises(ValueError, match="strategy"):
        calibration_bins(labels, probs, 3, "kmeans")
    assert np.isnan(expected_calibration_error([], [], 5))


def test_roc_curve_area_is_the_auc_also_with_ties():
    rng = np.random.default_rng(3)
    probs = rng.random(2000)
    labels = (rng.random(2000) < probs).astype(float)
    for scores in (probs, np.round(probs, 1)):  # the second has large runs of equal scores
        fpr, tpr = roc_curve(labels, scores)
        assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
        assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
        assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(auc(labels, scores), abs=1e-12)
    assert roc_curve([1, 1], [0.2, 0.3])[0].size == 0  # one class: no curve


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------
def build_group_store(path: Path):
    """Planted rows with a user (group) column, so that runs report gAUC."""
    with StoreWriter(path, planted_schema(), chunk_rows=500) as writer:
        for split, rows, seed in (("train", 2000, 1), ("valid", 600, 2), ("test", 800, 3)):
            columns = planted_columns(rows, seed)
            columns["group"] = (columns["sparse"][:, 3] % 6).astype(np.int64)  # six "users"
            writer.append(split, columns)
        return writer.commit({"options": {"source": "planted test data with groups"}})


def train(store: Path, save_dir: Path, model: str, **options) -> dict:
    from ctrkit.config import TrainConfig
    from ctrkit.training.frameworks import train_from_config

    config = TrainConfig(model=model, data=str(store), epochs=2, batch_size=256, threads=1, embed_size=4,
                         hidden_units=[16], model_save_dir=str(save_dir), **options)
    return train_from_config(config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs: ``lr`` (predictions saved), ``deepfm`` (predictions removed: the report evaluates
    its best checkpoint) and ``orphan`` (predictions removed and its store gone: noted)."""
    root = tmp_path_factory.mktemp("report")
    store = build_group_store(root / "store.lmdb").path
    orphan_store = build_group_store(root / "orphan.lmdb").path
    train(store, root / "lr", "lr")
    train(store, root / "deepfm", "deepfm", lr=0.003)
    train(orphan_store, root / "orphan", "lr", lr=0.01)
    (root / "deepfm" / "test_predictions.npz").unlink()
    (root / "orphan" / "test_predictions.npz").unlink()
    shutil.rmtree(orphan_store)
    return root


def test_training_records_predictions_parameters_and_memory(runs):
    import torch

    from ctrkit.training.reporting import read_test_predictions

    metrics = json.loads((runs / "lr" / "metrics.json").read_text())
    probs, labels, groups = read_test_predictions(runs / "lr" / "test_predictions.npz")
    assert probs.shape == labels.shape == groups.shape == (800,)
    assert auc(labels, probs) == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    assert gauc(labels, probs, groups) == pytest.approx(metrics["test"]["gauc"], abs=1e-6)
    weights = torch.load(runs / "lr" / "best.pt", weights_only=True)["model"]
    assert metrics["parameters"] == sum(w.numel() for w in weights.values()) > 0
    assert metrics["peak_rss_bytes"] > 10 * 2**20 and metrics["peak_device_memory_bytes"] is None


class PageParser(HTMLParser):
    """The page's images, tables (id → rows of cell texts) and text."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.text: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self._table = attrs.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def test_report_page_renders_with_every_run_and_its_numbers(runs, tmp_path, capsys):
    out = tmp_path / "report.html"
    code = main(["report", str(runs / "lr"), str(runs / "deepfm"), str(runs / "orphan"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "orphan" in captured.err and "no longer exists" in captured.err

    page = PageParser()
    page.feed(out.read_text())
    page.close()
    # every image is a real PNG beside the page
    assert len(page.images) == 3
    for src in page.images:
        assert not src.startswith(("/", "http")), src
        image = out.parent / src
        data = image.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, image
    assert (out.parent / "report_files" / "roc.png").is_file()

    board = page.tables["leaderboard"]
    heading, rows = board[0], board[1:]
    column = {name: i for i, name in enumerate(heading)}
    assert sorted(r[column["run"]] for r in rows) == ["deepfm", "lr", "orphan"]
    aucs = [float(r[column["test AUC"]]) for r in rows]
    assert aucs == sorted(aucs, reverse=True)  # best first
    for row in rows:
        metrics = json.loads((runs / row[column["run"]] / "metrics.json").read_text())
        assert row[column["model"]] == metrics["model"] and row[column["framework"]] == "torch"
        for name, key in (("test AUC", "auc"), ("gAUC", "gauc"), ("logloss", "logloss")):
            assert float(row[column[name]]) == pytest.approx(metrics["test"][key], abs=1e-6)
        assert int(row[column["parameters"]].replace(",", "")) == metrics["parameters"]
        assert float(row[column["rows/s"]].replace(",", "")) == pytest.approx(metrics["rows_per_s"], abs=0.5)
        assert row[column["peak memory"]].endswith("(host)")
    ece = {r[column["run"]]: r[column["ECE"]] for r in rows}
    assert ece["orphan"] == "–" and 0 <= float(ece["lr"]) < 1 and 0 <= float(ece["deepfm"]) < 1
    text = " ".join(page.text)
    assert "orphan" in text and "no longer exists" in text  # the note on the page

    details = {r[0]: r for r in page.tables["runs"][1:]}
    assert details["lr"][-1] == "test_predictions.npz" and details["deepfm"][-1].startswith("evaluated on")


def test_report_ece_equals_the_metric_of_the_saved_predictions(runs, tmp_path, capsys):
    from ctrkit.training.reporting import read_test_predictions

    out = tmp_path / "one.html"
    assert main(["report", str(runs / "lr"), "--out", str(out), "--bins", "5", "--no_evaluate"]) == 0
    capsys.readouterr()
    page = PageParser()
    page.feed(out.read_text())
    heading, row = page.tables["leaderboard"]
    probs, labels, _ = read_test_predictions(runs / "lr" / "test_predictions.npz")
    expected = expected_calibration_error(labels, probs, 5, "quantile")
    assert float(row[heading.index("ECE")]) == pytest.approx(expected, abs=1e-5)


def test_report_errors_are_one_line(runs, tmp_path, capsys):
    code = main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 2 and "no metrics.json" in err and len(err.strip().splitlines()) == 1
    metrics = runs / "lr" / "metrics.json"
    before = metrics.read_bytes()
    code = main(["report", str(runs / "lr"), "--out", str(metrics)])
    err = capsys.readouterr().err
    assert code == 2 and "is also an input" in err and metrics.read_bytes() == before
    code = main(["report", str(runs / "lr"), "--out", str(tmp_path / "r.html"), "--bins", "0"])
    assert code == 2 and "--bins" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
