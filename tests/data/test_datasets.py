"""Built-in specs and ``ctrkit preprocess DATASET`` on the real rows of ../shared/data."""

from __future__ import annotations

import csv

import numpy as np
import polars as pl
import pytest

from conftest import shared_file
from ctrkit.cli import main
from ctrkit.data import pipeline
from ctrkit.data.spec import load_spec, with_overrides
from ctrkit.data.store import Store
from ctrkit.errors import ConfigError, InputError

ALL_TRAIN = ("--split", "1:0:0")


def build(tmp_path, dataset, *files, extra=()):
    out = tmp_path / f"{dataset}.lmdb"
    assert main(["preprocess", dataset, *map(str, files), "--out", str(out), *extra]) == 0
    return Store(out)


def data_rows(path, header: bool) -> list[list[str]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[1:] if header else rows


def decoded(store: Store, field: str, ids: np.ndarray) -> np.ndarray:
    """Token of each id (OOV/padding 0 → None as -1 marker)."""
    vocab = store.vocabulary(field)
    return np.where(ids > 0, vocab[np.maximum(ids, 1) - 1], -1)


@pytest.mark.parametrize("relative, header", [
    ("avazu/wide_resdnn/avazu_train.csv", True),
    ("avazu/wide_resdnn/avazu_dev.csv", False),
    ("avazu/deepctr_avazu_sample.csv", True),
])
def test_avazu(tmp_path, relative, header):
    raw = shared_file(relative)
    store = build(tmp_path, "avazu", raw, extra=ALL_TRAIN)
    rows = data_rows(raw, header)
    train = store.read_split("train")
    assert len(train["label"]) == len(rows)
    np.testing.assert_array_equal(train["label"], [float(r[1]) for r in rows])
    names = [f.name for f in store.schema.sparse]
    assert names[:3] == ["hour_of_day", "weekday", "weekend"]
    hours = decoded(store, "hour_of_day", train["sparse"][:, 0])
    np.testing.assert_array_equal(hours, [int(r[2]) % 100 for r in rows])  # YYMMDDHH: HH
    assert store.meta["source_format"] == "avazu"


def test_avazu_header_and_headerless_files_give_the_same_tokens(tmp_path):
    with_header = shared_file("avazu/wide_resdnn/avazu_train.csv")
    rows = with_header.read_text().splitlines()
    headerless = tmp_path / "noheader.csv"
    headerless.write_text("\n".join(rows[1:]) + "\n")
    a = build(tmp_path / "a", "avazu", with_header, extra=ALL_TRAIN) if (tmp_path / "a").mkdir() is None else None
    b = build(tmp_path / "b", "avazu", headerless, extra=ALL_TRAIN) if (tmp_path / "b").mkdir() is None else None
    np.testing.assert_array_equal(a.read_split("train")["sparse"], b.read_split("train")["sparse"])


def test_criteo_header_csv_variants_match_the_tsv(tmp_path):
    csv_file = shared_file("criteo/deepctr_criteo_sample.csv")
    rows = data_rows(csv_file, header=True)
    # the same rows as raw TSV: integers without ".0", empty stays empty
    tsv = tmp_path / "same.tsv"
    tsv.write_text("".join("\t".join(v[:-2] if v.endswith(".0") else v for v in r) + "\n" for r in rows))
    args = ("--min-count", "1", *ALL_TRAIN)
    (tmp_path / "c").mkdir(), (tmp_path / "t").mkdir()
    from_csv = build(tmp_path / "c", "criteo", csv_file, extra=args).read_split("train")
    from_tsv = build(tmp_path / "t", "criteo", tsv, extra=args).read_split("train")
    assert len(from_csv["label"]) == 200
    for key in ("label", "sparse"):
        np.testing.assert_array_equal(from_csv[key], from_tsv[key])
    other = build(tmp_path, "criteo", shared_file("criteo/torchrechub_criteo_sample.csv"), extra=args)
    assert other.split("train").rows == 115


def test_table_csv_and_parquet_with_a_user_spec(tmp_path):
    raw = shared_file("avazu/deepctr_avazu_sample.csv")
    spec = tmp_path / "my.yaml"
    spec.write_text(
        "name: my_avazu\nlabel: click\n"
        "features:\n  - {name: site_id}\n  - {name: app_id}\n  - {name: C14, tokens: int}\n"
        "  - {name: C1, type: numeric, transform: bucketize, boundaries: [1003, 1006]}\n"
        "  - {name: banner_pos, type: numeric, transform: log1p}\n"
        "split: {by: random, ratios: [1, 0, 0]}\n"
    )
    parquet = tmp_path / "avazu.parquet"
    pl.read_csv(raw, infer_schema=False).write_parquet(parquet)
    (tmp_path / "c").mkdir(), (tmp_path / "p").mkdir()
    from_csv = build(tmp_path / "c", "table", raw, extra=("--spec", str(spec)))
    from_parquet = build(tmp_path / "p", "table", parquet, extra=("--spec", str(spec)))
    a, b = from_csv.read_split("train"), from_parquet.read_split("train")
    for key in ("label", "sparse", "dense"):
        np.testing.assert_array_equal(a[key], b[key])
    rows = data_rows(raw, header=True)
    assert a["dense"].shape == (100, 1)
    np.testing.assert_allclose(a["dense"][:, 0], np.log1p([float(r[4]) for r in rows]), rtol=1e-6)
    c14 = decoded(from_csv, "C14", a["sparse"][:, 2])
    np.testing.assert_array_equal(c14, [int(r[16]) for r in rows])
    assert from_csv.meta["source_format"] == "my_avazu"


def test_table_spec_errors_are_one_line(tmp_path, capsys):
    raw = shared_file("avazu/deepctr_avazu_sample.csv")
    spec = tmp_path / "bad.yaml"
    spec.write_text("label: click\nfeatures:\n  - {name: site_id, tokens: hexx}\n")
    assert main(["preprocess", "table", str(raw), "--spec", str(spec), "--out", str(tmp_path / "x.lmdb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yaml: features[0] (site_id).tokens: must be one of string, hex, int, got 'hexx'" in err[0]
    spec.write_text("label: click\nfeatures:\n  - {name: sight_id}\n")
    assert main(["preprocess", "table", str(raw), "--spec", str(spec), "--out", str(tmp_path / "x.lmdb")]) == 2
    assert "the header has no column 'sight_id'" in capsys.readouterr().err
    assert not (tmp_path / "x.lmdb").exists()


@pytest.mark.parametrize("relative, header", [
    ("taobao/deepctr_alimama_sample.csv", True),
    ("taobao/paddlerec_dmr_alimama_sampled_train.csv", False),
])
def test_taobao_joined(tmp_path, relative, header):
    raw = shared_file(relative)
    store = build(tmp_path, "taobao-joined", raw, extra=ALL_TRAIN)
    rows = np.asarray(data_rows(raw, header), dtype=np.float64)
    assert rows.shape[1] == 267
    train = store.read_split("train")
    np.testing.assert_array_equal(train["label"], rows[:, 266])
    schema = store.schema
    assert [f.name for f in schema.sequence] == ["hist_btag", "hist_cate", "hist_brand"]
    for name, lo, shares in (("hist_btag", 0, "btag"), ("hist_cate", 50, "cate_id"), ("hist_brand", 100, "brand")):
        ids = train[f"seq:{name}"]
        assert ids.dtype == np.int32 and ids.shape == (len(rows), 50)
        assert schema[name].shares == shares
        raw_items = rows[:, lo:lo + 50].astype(np.int64)
        # the DMR rows are left-padded with 0 (most recent last): exactly our layout
        np.testing.assert_array_equal(decoded(store, shares, ids), np.where(raw_items == 0, -1, raw_items))
    uid = [f.name for f in schema.sparse].index("uid")
    np.testing.assert_array_equal(decoded(store, "uid", train["sparse"][:, uid]), rows[:, 250].astype(np.int64))
    np.testing.assert_allclose(train["dense"][:, 0], rows[:, 264], rtol=1e-6)


def test_movielens_joined_rows(tmp_path):
    raw = shared_file("movielens/deepctr_movielens_sample.csv")
    store = build(tmp_path, "movielens", raw, extra=ALL_TRAIN)
    rows = data_rows(raw, header=True)
    train = store.read_split("train")
    np.testing.assert_array_equal(train["label"], [float(float(r[2]) >= 4) for r in rows])
    genres = train["seq:genres"]
    assert store.schema["genres"].shares == "genre"
    lengths = (genres > 0).sum(axis=1)
    np.testing.assert_array_equal(lengths, [len(r[5].split("|")) for r in rows])
    assert (genres[:, -1] > 0).all() and (genres[:, 0] == 0).all()  # left-padded
    # same genre, same id, wherever it appears
    vocab = store.vocabulary("genre")
    assert len(vocab) == len({g for r in rows for g in r[5].split("|")})


def test_movielens_from_grouplens_tables(tmp_path):
    ratings = shared_file("movielens/ml-latest-small/ratings.csv")
    movies = shared_file("movielens/ml-latest-small/movies.csv")
    head = tmp_path / "ratings.csv"
    head.write_text("".join(ratings.read_text().splitlines(keepends=True)[:2001]))
    store = build(tmp_path, "movielens", extra=("--ratings", str(head), "--movies", str(movies), *ALL_TRAIN))
    assert store.split("train").rows == 2000
    rated = pl.read_csv(head)
    np.testing.assert_array_equal(store.read_split("train")["label"], (rated["rating"] >= 4).cast(pl.Float32).to_numpy())
    # ML-1M users + movies with ratings in the .dat layout
    users, films = shared_file("movielens/ml-1m_users.dat"), shared_file("movielens/ml-1m_movies.dat")
    dat = tmp_path / "ratings.dat"
    dat.write_text("1::1193::5::978300760\n2::661::3::978302109\n6040::1::4::956703977\n")
    (tmp_path / "m").mkdir()
    one_m = build(tmp_path / "m", "movielens", extra=("--ratings", str(dat), "--movies", str(films), "--users", str(users), *ALL_TRAIN))
    assert one_m.split("train").rows == 3 and len(one_m.vocabulary("gender")) == 2


def test_movielens_unknown_movie_is_named(tmp_path, capsys):
    movies = shared_file("movielens/ml-1m_movies.dat")
    dat = tmp_path / "ratings.dat"
    dat.write_text("1::1193::5::978300760\n2::99999::3::978302109\n")
    assert main(["preprocess", "movielens", "--ratings", str(dat), "--movies", str(movies), "--out", str(tmp_path / "m.lmdb")]) == 2
    assert f"{dat}:2: movie_id '99999' is not in" in capsys.readouterr().err


def test_sequence_longer_than_max_len_is_truncated_and_counted(tmp_path):
    raw = tmp_path / "rows.csv"
    raw.write_text("click,item,hist\n1,a,x|y|z|a\n0,b,\n1,a,b\n")
    spec = with_overrides(load_spec(_write_spec(tmp_path)), ratios=(1, 0, 0))
    result = pipeline.preprocess(spec, [raw], tmp_path / "s.lmdb", progress=False)
    assert result.truncated == {"hist": 1}
    hist = result.store.read_split("train")["seq:hist"]
    vocab = list(result.store.vocabulary("item"))
    from ctrkit.data.tokens import string_tokens
    tokens = dict(zip("abxyz", string_tokens(pl.Series(list("abxyz")), 64).to_list()))
    assert hist[0].tolist() == [vocab.index(tokens[c]) + 1 for c in "yza"]  # the most recent 3, last
    assert hist[1].tolist() == [0, 0, 0]
    assert result.store.meta["sources"][0]["truncated_sequences"] == {"hist": 1}


def _write_spec(tmp_path):
    spec = tmp_path / "seq.yaml"
    spec.write_text("label: click\nfeatures:\n  - {name: item}\n  - {name: hist, type: sequence, max_len: 3, shares: item}\n")
    return spec


def test_bad_sequence_item_names_line_and_column(tmp_path):
    raw = tmp_path / "rows.csv"
    raw.write_text("click,item,hist\n1,1,2|3\n0,2,4|x\n")
    spec = tmp_path / "seq.yaml"
    spec.write_text("label: click\nfeatures:\n  - {name: item, tokens: int}\n  - {name: hist, type: sequence, max_len: 3, shares: item}\n")
    with pytest.raises(InputError, match=r"rows.csv:3: .*hist.*an item is not an integer"):
        pipeline.preprocess(load_spec(spec), [raw], tmp_path / "s.lmdb", pipeline.PipelineOptions(strict=True), progress=False)
    assert not (tmp_path / "s.lmdb").exists()


def test_spill_narrows_small_sequence_tokens_and_restores_them_exactly():
    from ctrkit.data.pipeline import _narrowed, _widened
    from ctrkit.data.tokens import MISSING, PADDING

    small = np.array([[PADDING, PADDING, 5, MISSING], [7, -3, 2**31 - 1, 0]], dtype=np.int64)
    narrow = _narrowed(small)
    assert narrow is not None and narrow.dtype == np.int32
    np.testing.assert_array_equal(_widened(narrow), small)
    for big in (2**31, -(2**31) + 1, -(2**40)):  # a token outside int32 (or on a sentinel) keeps int64
        assert _narrowed(np.array([[PADDING, big]], dtype=np.int64)) is None


def test_table_spec_with_given_split_files_and_a_caret_sequence(tmp_path):
    """FuxiCTR's tiny Taobao CSVs: train/valid/test files, click_sequence of adgroup ids joined with '^'."""
    train = shared_file("taobao/fuxictr_tiny_csv/train_sample.csv")
    valid, test = train.with_name("valid_sample.csv"), train.with_name("test_sample.csv")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "name: fuxictr_tiny\nlabel: clk\n"
        "features:\n"
        "  - {name: userid, tokens: int}\n  - {name: adgroup_id, tokens: int}\n  - {name: pid}\n"
        "  - {name: cate_id, tokens: int}\n  - {name: pvalue_level, tokens: int}\n"
        "  - {name: price, type: numeric, transform: log1p}\n"
        "  - {name: click_sequence, type: sequence, delimiter: '^', max_len: 5, shares: adgroup_id}\n"
        "split: {by: files}\ngroup: userid\n"
    )
    store = build(tmp_path, "table", train, extra=("--spec", str(spec), "--valid", str(valid), "--test", str(test)))
    assert [store.split(s).rows for s in ("train", "valid", "test")] == [100, 100, 100]
    rows = pl.read_csv(train, infer_schema=False)
    data = store.read_split("train")
    np.testing.assert_array_equal(data["group"], rows["userid"].cast(pl.Int64).to_numpy())
    ids = data["seq:click_sequence"]
    for i, text in enumerate(rows["click_sequence"].fill_null("")):
        items = [int(x) for x in text.split("^") if x][-5:]
        got = decoded(store, "adgroup_id", ids[i])
        assert [int(x) for x in got[got >= 0]] == [x for x in items if x in set(store.vocabulary("adgroup_id"))]
    assert np.isnan(store.read_split("test")["label"]).sum() == 0
