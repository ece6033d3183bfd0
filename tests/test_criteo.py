"""Criteo preprocessing on the real sample rows, checked against an independent Python reference."""

from __future__ import annotations

import gzip
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ctrkit.data.batches import BatchReader
from ctrkit.data.criteo import CAT_FIELDS, INT_FIELDS, CriteoOptions, iter_raw_batches, parse_split, preprocess_criteo
from ctrkit.data.store import Store
from ctrkit.errors import ConfigError, InputError

MISSING = object()


def reference_tokens(line: str, labeled: bool = True) -> tuple[int | None, list]:
    """Label and BARS tokens of one raw line, computed with plain Python."""
    fields = line.rstrip("\n").split("\t")
    label = int(fields[0]) if labeled else None
    values = fields[1:] if labeled else fields
    tokens = []
    for raw in values[:13]:
        if raw == "":
            tokens.append(MISSING)
        else:
            v = int(raw)
            tokens.append(math.floor(math.log(v) ** 2) if v > 2 else v)
    tokens += [MISSING if raw == "" else int(raw, 16) for raw in values[13:]]
    return label, tokens


def reference_encoding(lines: list[str], min_count: int):
    """Expected ids of every line when all lines are train rows."""
    parsed = [reference_tokens(line) for line in lines]
    labels = np.array([p[0] for p in parsed], np.float32)
    ids = np.zeros((len(lines), 39), np.int32)
    for j in range(39):
        counts = Counter(p[1][j] for p in parsed)
        kept = [t for t, c in counts.items() if c >= min_count]
        key = lambda t: (-counts[t], -(2**63) if t is MISSING else t)  # noqa: E731
        vocab = {t: i + 1 for i, t in enumerate(sorted(kept, key=key))}
        ids[:, j] = [vocab.get(p[1][j], 0) for p in parsed]
    return labels, ids


def build(raw, tmp_path: Path, name="s.lmdb", **kwargs) -> Store:
    options = CriteoOptions(**{"chunk_rows": 4096, **kwargs.pop("options", {})})
    return preprocess_criteo(raw if isinstance(raw, list) else [raw], tmp_path / name, options, progress=False, **kwargs).store


# -- the real rows --------------------------------------------------------------------------
def test_all_kaggle_rows_round_trip_exactly(kaggle_train, tmp_path):
    """raw → store → batches gives exactly the reference ids when every row is a train row."""
    store = build(kaggle_train, tmp_path, options={"split": (1.0, 0.0, 0.0)})
    assert store.splits["train"].rows == 10_000 and store.splits["valid"].rows == 0
    assert store.splits["train"].chunk_rows == (4096, 4096, 1808)
    labels, ids = reference_encoding(kaggle_train.read_text().splitlines(), min_count=10)
    batches = list(BatchReader(store, "train", 3000).iter_epoch(0))
    np.testing.assert_array_equal(np.concatenate([b["sparse"] for b in batches]), ids)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels)
    assert store.schema.vocab_sizes == [int(ids[:, j].max()) + 1 for j in range(39)]
    assert [f.name for f in store.schema.sparse] == list(INT_FIELDS + CAT_FIELDS)
    assert store.splits["train"].positives == 2182  # 7,818 zeros and 2,182 ones per SOURCE.md


def test_default_split_is_8_1_1_with_train_only_vocabulary(kaggle_train, tmp_path):
    store = build(kaggle_train, tmp_path)
    sizes = {name: info.rows for name, info in store.splits.items()}
    assert sum(sizes.values()) == 10_000
    assert 7700 < sizes["train"] < 8300 and 850 < sizes["valid"] < 1150 and 850 < sizes["test"] < 1150
    # the vocabulary comes from train rows only: recount it from the decoded train split
    lines = kaggle_train.read_text().splitlines()
    tokens = {}
    for line in lines:
        _, toks = reference_tokens(line)
        tokens.setdefault(tuple(toks), None)
    train = store.read_split("train")["sparse"]
    for j, name in enumerate(INT_FIELDS + CAT_FIELDS):
        vocab = store.vocabulary(name)
        assert len(vocab) == store.schema[name].vocab_size - 1
        counts = np.bincount(train[:, j], minlength=len(vocab) + 1)
        assert (counts[1:] >= 10).all(), f"{name}: a kept token is rarer than min-count in train"
        assert (np.diff(counts[1:]) <= 0).all(), f"{name}: ids are not in decreasing train frequency"
    # same seed → same split; another seed → another split
    again = build(kaggle_train, tmp_path, name="again.lmdb")
    np.testing.assert_array_equal(again.read_split("test")["sparse"], store.read_split("test")["sparse"])
    other = build(kaggle_train, tmp_path, name="other.lmdb", options={"seed": 7})
    assert other.splits["test"].rows != store.splits["test"].rows or not np.array_equal(
        other.read_split("test")["label"], store.read_split("test")["label"]
    )


def test_split_follows_one_draw_per_line(kaggle_train, tmp_path):
    """Valid and test rows are exactly the lines whose uniform draw falls in their interval."""
    store = build(kaggle_train, tmp_path, options={"min_count": 1})
    draws = np.random.default_rng(2018).random(10_000)
    expected_test = np.flatnonzero(draws >= 0.9)
    lines = kaggle_train.read_text().splitlines()
    hashes = store.vocabulary("C6")
    test_c6 = store.read_split("test")["sparse"][:, store.schema.sparse_index("C6")]
    ref = [reference_tokens(lines[i])[1][18] for i in expected_test]
    ref = [np.iinfo(np.int64).min if r is MISSING else r for r in ref]
    decoded = [hashes[i - 1] if i > 0 else None for i in test_c6]
    assert len(decoded) == len(ref)
    assert all(d is None or d == r for d, r in zip(decoded, ref))
    assert sum(d is not None for d in decoded) > 0.95 * len(decoded)


def test_terabyte_day_rows_parse(criteo_1tb_day0, tmp_path):
    store = build(criteo_1tb_day0, tmp_path, options={"split": (1.0, 0.0, 0.0), "min_count": 1})
    assert store.splits["train"].rows == 1000
    assert store.splits["train"].positives == 21
    assert store.meta["bad_rows"]["count"] == 0


def test_unlabeled_test_file_and_prediction_encoding(kaggle_train, kaggle_test_unlabeled, tmp_path):
    store = build(kaggle_train, tmp_path, test=kaggle_test_unlabeled)
    assert not store.splits["test"].labeled and store.splits["test"].rows == 10_000
    sizes = store.splits["train"].rows + store.splits["valid"].rows
    assert sizes == 10_000 and store.splits["valid"].rows > 1000  # 8:1 over the raw rows
    test_batch = next(iter(BatchReader(store, "test", 10).iter_epoch(0)))
    assert "label" not in test_batch
    # iter_raw_batches encodes the same file the same way (unseen values → OOV 0)
    encoded = np.concatenate([b["sparse"] for b in iter_raw_batches(kaggle_test_unlabeled, store, batch_rows=999)])
    np.testing.assert_array_equal(encoded, store.read_split("test")["sparse"])
    assert (encoded == 0).any() and (encoded > 0).any()


def test_dense_numeric_mode(kaggle_train, tmp_path):
    store = build(kaggle_train, tmp_path, options={"numeric": "dense", "split": (1.0, 0.0, 0.0)})
    assert [f.name for f in store.schema.dense] == list(INT_FIELDS)
    assert len(store.schema.sparse) == 26
    data = store.read_split("train")
    first = kaggle_train.read_text().splitlines()[0].split("\t")
    expected = [math.log1p(max(int(v), 0)) if v else 0.0 for v in first[1:14]]
    np.testing.assert_allclose(data["dense"][0], expected, rtol=1e-6)
    assert data["dense"].dtype == np.float32 and data["sparse"].shape == (10_000, 26)


# -- bucketing and OOV on hand-made rows -------------------------------------------------------
def raw_line(label="0", ints=None, cats=None) -> str:
    ints = ints if ints is not None else ["1"] * 13
    cats = cats if cats is not None else ["0a1b2c3d"] * 26
    return "\t".join([label, *ints, *cats])


def test_bucketing_and_missing_tokens(tmp_path):
    values = ["", "-1", "0", "1", "2", "3", "7", "8", "100", "1000000", "2", "2", "2"]
    lines = [raw_line(ints=values) for _ in range(3)]
    path = tmp_path / "raw.tsv"
    path.write_text("\n".join(lines) + "\n")
    store = build(path, tmp_path, options={"min_count": 1, "split": (1.0, 0.0, 0.0)})
    expected = [None, -1, 0, 1, 2, 1, 3, 4, 21, 190, 2, 2, 2]  # floor(ln(v)^2) for v > 2
    for name, token in zip(INT_FIELDS, expected):
        vocab = store.vocabulary(name)
        assert len(vocab) == 1
        if token is None:
            assert vocab[0] == np.iinfo(np.int64).min, "missing must be a token of its own"
        else:
            assert vocab[0] == token, name


def test_min_count_sends_rare_tokens_to_oov(tmp_path):
    lines = [raw_line(cats=["aaaaaaaa"] + ["0"] * 25)] * 3 + [raw_line(cats=["bbbbbbbb"] + ["0"] * 25)] * 2 + [raw_line(cats=[""] + ["0"] * 25)] * 3
    path = tmp_path / "raw.tsv"
    path.write_text("\n".join(lines) + "\n")
    store = build(path, tmp_path, options={"min_count": 3, "split": (1.0, 0.0, 0.0)})
    c1 = store.read_split("train")["sparse"][:, store.schema.sparse_index("C1")]
    np.testing.assert_array_equal(c1, [1, 1, 1, 0, 0, 0, 0, 0] if store.vocabulary("C1")[0] == 0xAAAAAAAA else [2, 2, 2, 0, 0, 1, 1, 1])
    assert set(store.vocabulary("C1").tolist()) == {0xAAAAAAAA, np.iinfo(np.int64).min}
    assert store.schema["C1"].vocab_size == 3


# -- bad input ---------------------------------------------------------------------------------
BAD_ROWS = {
    3: (raw_line()[: raw_line().rfind("\t")], "*", "expected 40"),
    5: (raw_line(ints=["1", "2", "x7"] + ["1"] * 10), "I3", "not an integer"),
    7: (raw_line(label="2"), "label", "label is not 0 or 1"),
    8: (raw_line(cats=["zzzz"] + ["0"] * 25), "C1", "not a hexadecimal hash"),
    9: (raw_line(ints=["1.5"] + ["1"] * 12), "I1", "not an integer"),
}


def write_with_bad_rows(tmp_path: Path, total=40) -> Path:
    lines = [BAD_ROWS[i][0] if i in BAD_ROWS else raw_line(label=str(i % 2)) for i in range(1, total + 1)]
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_rows_are_counted_skipped_and_named(tmp_path):
    path = write_with_bad_rows(tmp_path)
    result = preprocess_criteo([path], tmp_path / "s.lmdb", CriteoOptions(split=(1.0, 0.0, 0.0), min_count=1), progress=False)
    assert result.bad_rows.count == len(BAD_ROWS)
    assert result.store.splits["train"].rows == 40 - len(BAD_ROWS)
    examples = result.store.meta["bad_rows"]["examples"]
    assert [(e["line"], e["field"]) for e in examples] == [(line, BAD_ROWS[line][1]) for line in sorted(BAD_ROWS)][:5]
    for e in examples:
        assert BAD_ROWS[e["line"]][2] in e["reason"]
    assert "5 malformed rows skipped" in result.bad_rows.describe() and "bad.tsv:3" in result.bad_rows.describe()
    assert result.sources[0].skipped == len(BAD_ROWS)


@pytest.mark.parametrize("line_number", sorted(BAD_ROWS))
def test_strict_stops_at_first_bad_row_with_file_line_field(tmp_path, line_number):
    lines = [raw_line()] * 12
    lines[line_number - 1] = BAD_ROWS[line_number][0]
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "s.lmdb"
    with pytest.raises(InputError) as error:
        preprocess_criteo([path], out, CriteoOptions(strict=True), progress=False)
    message = str(error.value)
    assert f"{path}:{line_number}: field {BAD_ROWS[line_number][1]}" in message
    assert BAD_ROWS[line_number][2] in message
    # the lock file of the build target stays by design (ctrkit.fileio.target_lock); nothing else may
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.lmdb.lock", "bad.tsv"], "nothing half-written may remain"


def test_bad_rows_in_a_large_block_are_found(kaggle_train, tmp_path):
    lines = kaggle_train.read_text().splitlines()
    lines[4321] = lines[4321].replace("\t", "\tx", 1)  # label column stays, I1 becomes 'x…'
    lines[9998] = "0\t1"
    path = tmp_path / "k.tsv"
    path.write_text("\n".join(lines) + "\n")
    result = preprocess_criteo([path], tmp_path / "s.lmdb", CriteoOptions(split=(1.0, 0.0, 0.0)), progress=False)
    assert [(e["line"], e["field"]) for e in result.bad_rows.examples] == [(4322, "I1"), (9999, "*")]
    assert result.store.splits["train"].rows == 9998


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b""), "file is empty"),
    (lambda p: p.write_bytes(gzip.compress(b"0\t1\n")), "gzip-compressed"),
    (lambda p: p.write_text("a,b,c\n1,2,3\n"), "expected 40 comma-separated fields"),
])
def test_unusable_files_are_refused_before_any_work(tmp_path, make, message):
    path = tmp_path / "raw.tsv"
    make(path)
    with pytest.raises(InputError, match=message):
        preprocess_criteo([path], tmp_path / "s.lmdb", progress=False)
    assert not (tmp_path / "s.lmdb").exists()


def test_unlabeled_file_cannot_be_training_data(kaggle_test_unlabeled, tmp_path):
    with pytest.raises(InputError, match="no label column"):
        preprocess_criteo([kaggle_test_unlabeled], tmp_path / "s.lmdb", progress=False)


def test_existing_output_is_not_overwritten_without_flag(kaggle_train, tmp_path):
    build(kaggle_train, tmp_path)
    with pytest.raises(InputError, match="already exists"):
        build(kaggle_train, tmp_path)
    store = build(kaggle_train, tmp_path, overwrite=True, options={"min_count": 2})
    assert store.meta["options"]["min_count"] == 2


def test_options_are_validated():
    assert parse_split("8:1:1") == (8.0, 1.0, 1.0)
    for text in ["8:1", "a:b:c", "8:1:1:1"]:
        with pytest.raises(ConfigError, match="--split"):
            parse_split(text)
    with pytest.raises(ConfigError, match="--min-count"):
        CriteoOptions(min_count=0)
    with pytest.raises(ConfigError, match="--numeric"):
        CriteoOptions(numeric="float")
    with pytest.raises(ConfigError, match="train > 0"):
        CriteoOptions(split=(0.0, 1.0, 1.0))


def test_last_line_without_newline_and_small_blocks(kaggle_train, tmp_path):
    text = kaggle_train.read_text().rstrip("\n")
    path = tmp_path / "k.tsv"
    path.write_text(text)  # no trailing newline
    store = preprocess_criteo([path], tmp_path / "s.lmdb", CriteoOptions(split=(1.0, 0.0, 0.0), block_bytes=10_000), progress=False).store
    whole = build(kaggle_train, tmp_path, name="w.lmdb", options={"split": (1.0, 0.0, 0.0)})
    np.testing.assert_array_equal(store.read_split("train")["sparse"], whole.read_split("train")["sparse"])


def test_encoder_lookup_table_and_hash_map_agree():
    from ctrkit.data.criteo import MISSING as MISSING_TOKEN, Encoder

    rng = np.random.default_rng(0)
    small = np.array([MISSING_TOKEN, 5, -3, 40, 0], dtype=np.int64)  # spans 44 → lookup table
    large = np.array([7, 1 << 31, MISSING_TOKEN, 12345], dtype=np.int64)  # spans 2^31 → hash map
    encoder = Encoder([small, large])
    assert encoder._tables[0] is not None and encoder._tables[1] is None
    tokens_small = np.concatenate([small, rng.integers(-100, 100, 500), [MISSING_TOKEN, np.iinfo(np.int64).max]])
    tokens_large = np.concatenate([large, rng.integers(0, 1 << 32, 503)])
    ids = encoder.encode([tokens_small, tokens_large])
    for column, vocab, tokens in ((0, small, tokens_small), (1, large, tokens_large)):
        expected = [int(np.flatnonzero(vocab == t)[0]) + 1 if t in vocab else 0 for t in tokens]
        np.testing.assert_array_equal(ids[:, column], expected)
