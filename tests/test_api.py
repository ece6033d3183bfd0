"""The Python API as the README shows it: ctrkit.preprocess → ctrkit.train → ctrkit.load → predict(df)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import ctrkit
from conftest import shared_file
from ctrkit.cli import main
from ctrkit.errors import ConfigError, InputError

pd = pytest.importorskip("pandas")

CRITEO_COLUMNS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]


@pytest.fixture(scope="module")
def kaggle_run(tmp_path_factory):
    """A DeepFM trained through the API on the 10k real Kaggle rows (valid/test drawn from them)."""
    raw = shared_file("criteo/kaggle_train_head10k.tsv")
    root = tmp_path_factory.mktemp("api")
    store = ctrkit.preprocess("criteo", raw, out=root / "criteo.lmdb", min_count=2)
    run = ctrkit.train("deepfm", store, epochs=1, batch_size=512, embed_size=8, hidden_units=[32, 32],
                       threads=1, model_save_dir=str(root / "deepfm"))
    return raw, store, run


def read_kaggle(raw, rows: int):
    return pd.read_csv(raw, sep="\t", header=None, names=CRITEO_COLUMNS, nrows=rows)


def predict_cli(tmp_path, run_dir, raw_rows: str) -> np.ndarray:
    raw = tmp_path / "rows.tsv"
    raw.write_text(raw_rows)
    out = tmp_path / "scores.txt"
    assert main(["predict", str(run_dir), str(raw), "--out", str(out)]) == 0
    return np.loadtxt(out, ndmin=1)


def test_the_readme_workflow(kaggle_run, tmp_path):
    raw, store, run = kaggle_run
    assert store.splits and set(store.splits) >= {"train", "valid", "test"}
    assert run.metrics == json.loads((run.directory / "metrics.json").read_text())
    assert 0.5 < run.metrics["test"]["auc"] < 1.0
    model = ctrkit.load(run.directory)
    assert (model.name, model.framework) == ("deepfm", "torch")
    assert model.input_columns == CRITEO_COLUMNS[1:]

    frame = read_kaggle(raw, 300)
    assert frame["I1"].dtype == np.float64 and frame["I1"].isna().any()  # pandas' ints with NaN are floats
    scores = model.predict(frame)
    lines = "".join(open(raw).readlines()[:300])
    expected = predict_cli(tmp_path, run.directory, lines)
    assert scores.shape == (300,)
    np.testing.assert_allclose(scores, expected, atol=1e-7)  # the CLI writes 8 significant digits

    # the same rows as polars, as a dict of columns and as row dicts
    np.testing.assert_allclose(model.predict(pl.from_pandas(frame)), scores, rtol=0, atol=1e-12)
    columns = {c: frame[c].tolist() for c in model.input_columns}
    np.testing.assert_allclose(model.predict(columns), scores, rtol=0, atol=1e-12)
    records = frame.head(7).to_dict("records")
    np.testing.assert_allclose(model.predict(records), scores[:7], rtol=0, atol=1e-6)  # float32, another batch shape


def test_the_test_split_scored_from_raw_rows_matches_evaluate(kaggle_run):
    _, store, run = kaggle_run
    model = run.load()
    metrics = model.evaluate(store, "test")
    assert metrics["auc"] == pytest.approx(run.metrics["test"]["auc"], abs=1e-9)


def test_floats_none_and_nan_read_as_the_file_reads_them(kaggle_run, tmp_path):
    raw, _, run = kaggle_run
    model = run.load()
    frame = read_kaggle(raw, 20)
    as_text = frame.astype(object).where(frame.notna(), None)  # None for missing
    np.testing.assert_allclose(model.predict(as_text), model.predict(frame), rtol=0, atol=1e-12)
    whole = frame.copy()
    whole["I5"] = whole["I5"].astype(float)  # 1.0 is the integer 1
    np.testing.assert_allclose(model.predict(whole), model.predict(frame), rtol=0, atol=1e-12)
    # a hex categorical column given as NaN everywhere is "missing", as an empty field is in the file
    blank = frame.copy()
    blank["C3"] = np.nan
    text = "\t".join(["0"] + [""] * 39) + "\n"
    row = {c: (None if c != "label" else 0) for c in CRITEO_COLUMNS}
    np.testing.assert_allclose(model.predict([row]), predict_cli(tmp_path, run.directory, text), atol=1e-7)
    assert np.isfinite(model.predict(blank)).all()


def test_bad_rows_are_named_or_scored_nan(kaggle_run):
    raw, _, run = kaggle_run
    model = run.load()
    frame = read_kaggle(raw, 5).astype(object)
    frame.loc[3, "I2"] = "twelve"
    with pytest.raises(InputError, match=r"row 4: column I2: not an integer: 'twelve'"):
        model.predict(frame)
    scores = model.predict(frame, strict=False)
    assert np.isnan(scores[3]) and np.isfinite(np.delete(scores, 3)).all()
    with pytest.raises(InputError, match=r"missing column 'C26'"):
        model.predict(frame.drop(columns=["C26"]))
    with pytest.raises(InputError, match="columns of different lengths"):
        model.predict({"I1": [1, 2], "I2": [3]})
    with pytest.raises(InputError, match="expected a pandas or polars DataFrame"):
        model.predict(42)
    assert model.predict(frame.head(0)).shape == (0,)


def test_predict_batch_takes_numpy_ids(kaggle_run):
    raw, store, run = kaggle_run
    model = run.load()
    encoded = model.encode(read_kaggle(raw, 50))
    assert isinstance(encoded.batch["sparse"], np.ndarray)
    np.testing.assert_allclose(model.predict_batch(encoded.batch), model.predict(read_kaggle(raw, 50)), rtol=0, atol=1e-12)
    metadata = model.metadata()
    assert metadata["model"] == "deepfm" and metadata["input_columns"] == CRITEO_COLUMNS[1:]
    json.dumps(metadata)  # JSON-ready


def test_options_are_validated_as_on_the_command_line(kaggle_run, tmp_path):
    _, store, _ = kaggle_run
    with pytest.raises(ConfigError, match="unknown option"):
        ctrkit.train("deepfm", store, epohcs=1, model_save_dir=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="--dropout"):
        ctrkit.train("deepfm", store, dropout=1.5, model_save_dir=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="model_save_dir"):
        ctrkit.train("deepfm", store)
    with pytest.raises(ConfigError, match="unknown option"):
        ctrkit.preprocess("criteo", "x.tsv", out=tmp_path / "s", no_such_option=3)
    with pytest.raises(InputError, match="no such checkpoint"):
        ctrkit.load(tmp_path / "nothing")
    assert not (tmp_path / "x").exists()


def test_load_refuses_an_encoder_of_another_store(kaggle_run, tmp_path):
    _, _, run = kaggle_run
    other = ctrkit.preprocess("avazu", shared_file("avazu/deepctr_avazu_sample.csv"), out=tmp_path / "avazu.lmdb")
    with pytest.raises(InputError, match="does not describe the model's inputs"):
        ctrkit.load(run.directory, encoder=other)


def test_tf_run_through_the_api(tmp_path):
    pytest.importorskip("tensorflow")
    raw = shared_file("criteo/kaggle_train_head10k.tsv")
    store = ctrkit.preprocess("criteo", raw, out=tmp_path / "s.lmdb", min_count=2)
    run = ctrkit.train("lr", store, framework="tf", epochs=1, batch_size=1024, model_save_dir=str(tmp_path / "lr-tf"))
    model = ctrkit.load(run.directory)
    assert model.framework == "tf"
    frame = read_kaggle(raw, 100)
    lines = "".join(open(raw).readlines()[:100])
    np.testing.assert_allclose(model.predict(frame), predict_cli(tmp_path, run.directory, lines), atol=1e-7)


def test_rows_of_a_store_split_by_time_score_without_its_time_column(tmp_path, capsys):
    """Taobao's spec splits by impression time; rows handed to predict need no time_stamp."""
    tables, store = tmp_path / "tables", tmp_path / "tb.lmdb"
    assert main(["synth", "taobao", str(tables), "--rows", "3000", "--users", "150", "--ads", "200",
                 "--categories", "40", "--behaviours-per-user", "80", "--seed", "5"]) == 0
    joined = tmp_path / "joined.parquet"
    assert main(["preprocess", "taobao", "--raw-sample", str(tables / "raw_sample.csv"),
                 "--ad-feature", str(tables / "ad_feature.csv"), "--user-profile", str(tables / "user_profile.csv"),
                 "--behavior-log", str(tables / "behavior_log.csv"), "--out", str(store),
                 "--joined-out", str(joined)]) == 0
    run = ctrkit.train("lr", store, epochs=1, batch_size=256, threads=1, model_save_dir=str(tmp_path / "lr"))
    model = run.load()
    rows = pl.read_parquet(joined).head(200)
    assert "time_stamp" not in model.input_columns
    out = tmp_path / "scores.txt"
    capsys.readouterr()
    assert main(["predict", str(run.directory), str(joined), "--out", str(out)]) == 0
    expected = np.loadtxt(out)[:200]
    np.testing.assert_allclose(model.predict(rows.drop("time_stamp", "clk")), expected, atol=1e-6)
