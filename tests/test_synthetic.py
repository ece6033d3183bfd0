"""Tests of the synthetic Criteo generator (ctrkit.data.synthetic) and `ctrkit synth`."""

from __future__ import annotations

import argparse
import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest

from ctrkit.data import synthetic
from ctrkit.data.synthetic import (
    CHUNK_ROWS,
    CRITEO_PAIRS,
    SynthSummary,
    rank_auc,
    write_synthetic_criteo,
)
from ctrkit.errors import ConfigError, InputError, OutputError

INT_RE = re.compile(rb"^(-?[0-9]+)?$")
HEX_RE = re.compile(rb"^([0-9a-f]{8})?$")
N_ROWS = 20_000
N_TRAIN = 16_000


def read_rows(path) -> list[list[bytes]]:
    with open(path, "rb") as fh:
        data = fh.read()
    assert data.endswith(b"\n")
    return [line.split(b"\t") for line in data[:-1].split(b"\n")]


@pytest.fixture(scope="module")
def criteo20k(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "train.tsv"
    summary = write_synthetic_criteo(path, N_ROWS, seed=0)
    rows = read_rows(path)
    probs = np.load(str(path) + ".probs.npy")
    return summary, path, rows, probs


def bars_tokens(rows: list[list[bytes]]) -> np.ndarray:
    """BARS-style raw tokens (integer -> bucket, missing -> 'NA'), as a (n, 39) object array."""
    out = np.empty((len(rows), 39), dtype=object)
    for i, r in enumerate(rows):
        for j in range(13):
            s = r[1 + j]
            if not s:
                out[i, j] = "NA"
            else:
                v = int(s)
                out[i, j] = str(int(np.floor(np.log(v) ** 2)) if v > 2 else v)
        for j in range(26):
            out[i, 13 + j] = r[14 + j].decode() or "NA"
    return out


def lr_auc(tokens: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    enc = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=10)
    x_train = enc.fit_transform(tokens[:N_TRAIN])
    x_test = enc.transform(tokens[N_TRAIN:])
    model = LogisticRegression(C=0.05, max_iter=3000).fit(x_train, labels[:N_TRAIN])
    return rank_auc(labels[N_TRAIN:], model.predict_proba(x_test)[:, 1])


# --- format -----------------------------------------------------------------------------------


def test_exact_criteo_format(criteo20k):
    summary, path, rows, _ = criteo20k
    assert isinstance(summary, SynthSummary)
    assert summary.path == str(path) and summary.rows == N_ROWS == len(rows)
    for r in rows:
        assert len(r) == 40
        assert r[0] in (b"0", b"1")
        for s in r[1:14]:
            assert INT_RE.match(s), s
        for s in r[14:]:
            assert HEX_RE.match(s), s


def test_missing_values_negative_counts_and_heavy_tails(criteo20k):
    _, _, rows, _ = criteo20k
    cols = list(zip(*rows))
    missing = [sum(1 for s in c if not s) / len(c) for c in cols]
    assert missing[0] == 0.0  # label
    assert 0.35 < missing[1] < 0.55  # I1 ~ 45 %
    assert missing[2] == 0.0  # I2 never missing
    assert 0.7 < missing[13 + 22] < 0.9  # C22 ~ 82 %
    assert sum(m > 0 for m in missing[1:14]) >= 8
    assert sum(m > 0 for m in missing[14:]) >= 8
    i2 = np.array([int(s) for s in cols[2]])
    assert 0.05 < np.mean(i2 == -1) < 0.15
    i5 = np.array([int(s) for s in cols[5] if s])
    assert i5.max() > 100 * np.median(i5)  # heavy tail
    for j in range(1, 14):  # every integer field has values, mostly small
        values = [int(s) for s in cols[j] if s]
        assert values and min(values) >= -2


def test_vocabularies_are_skewed_with_a_long_tail(criteo20k):
    _, _, rows, _ = criteo20k
    cols = list(zip(*rows))
    seen_by_field = []
    for j in range(26):
        values = [s for s in cols[14 + j] if s]
        uniq, counts = np.unique(np.array(values), return_counts=True)
        seen_by_field.append(set(uniq.tolist()))
        assert len(uniq) >= 2
        assert counts.max() >= 0.005 * len(values)  # a popular head (C7: ~1 %)
    sizes = [len(s) for s in seen_by_field]
    assert min(sizes) <= 4 and max(sizes) >= 5_000  # a handful .. thousands in 20k rows
    c3 = np.unique(np.array([s for s in cols[14 + 2] if s]), return_counts=True)[1]
    assert (c3 < 10).sum() > 1_000 and (c3 >= 10).sum() > 20  # tail below min-count and a head
    # Different fields never share a value string.
    union = set().union(*seen_by_field)
    assert len(union) == sum(sizes)


def test_ctr_and_probabilities_aligned(criteo20k):
    summary, path, rows, probs = criteo20k
    labels = np.array([int(r[0]) for r in rows])
    assert summary.probs_path == str(path) + ".probs.npy"
    assert probs.dtype == np.float32 and probs.shape == (N_ROWS,)
    assert np.all((probs > 0) & (probs < 1))
    assert 0.2 < labels.mean() < 0.3
    assert summary.ctr == pytest.approx(labels.mean())
    assert abs(probs.mean() - labels.mean()) < 0.015
    assert summary.oracle_auc == pytest.approx(rank_auc(labels, probs))
    # Aligned: rows with high probability click more often.
    order = np.argsort(probs)
    assert labels[order[-2000:]].mean() > 3 * labels[order[:2000]].mean()


def test_oracle_auc_high(criteo20k):
    summary, _, _, _ = criteo20k
    assert summary.oracle_auc > 0.75


def test_lr_below_oracle_and_planted_crosses_beat_lr(criteo20k):
    _, _, rows, probs = criteo20k
    labels = np.array([int(r[0]) for r in rows])
    tokens = bars_tokens(rows)
    names = [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    crosses = np.empty((len(rows), len(CRITEO_PAIRS)), dtype=object)
    for k, (f, g, *_rest) in enumerate(CRITEO_PAIRS):
        a, b = tokens[:, names.index(f)], tokens[:, names.index(g)]
        crosses[:, k] = [x + "|" + y for x, y in zip(a, b)]
    oracle = rank_auc(labels[N_TRAIN:], probs[N_TRAIN:])
    lr = lr_auc(tokens, labels)
    lr_cross = lr_auc(np.concatenate([tokens, crosses], axis=1), labels)
    assert oracle > 0.75
    assert lr < oracle - 0.05, (lr, oracle)
    assert lr_cross > lr + 0.015, (lr_cross, lr)


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "c.tsv"
    write_synthetic_criteo(a, 3_000, seed=5)
    write_synthetic_criteo(b, 3_000, seed=5)
    write_synthetic_criteo(c, 3_000, seed=6)
    assert a.read_bytes() == b.read_bytes()
    probs_a, probs_b = (tmp_path / "a.tsv.probs.npy"), (tmp_path / "b.tsv.probs.npy")
    assert probs_a.read_bytes() == probs_b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    values_a = {s for r in read_rows(a) for s in r[14:] if s}
    values_c = {s for r in read_rows(c) for s in r[14:] if s}
    assert len(values_a & values_c) < 0.01 * len(values_a)  # strings are keyed by the seed


def test_prefix_property_and_block_size_independence(tmp_path):
    rows = CHUNK_ROWS + 4_000  # crosses a chunk boundary
    big, small, blocky = tmp_path / "big.tsv", tmp_path / "small.tsv", tmp_path / "blocky.tsv"
    write_synthetic_criteo(big, rows, seed=3)
    write_synthetic_criteo(blocky, rows, seed=3, block_rows=1)
    write_synthetic_criteo(small, 1_000, seed=3)
    assert big.read_bytes() == blocky.read_bytes()
    big_lines = big.read_bytes().split(b"\n")
    assert small.read_bytes() == b"\n".join(big_lines[:1_000]) + b"\n"
    p_big = np.load(str(big) + ".probs.npy")
    p_small = np.load(str(small) + ".probs.npy")
    assert p_big.shape == (rows,)
    np.testing.assert_array_equal(p_small, p_big[:1_000])


def test_unlabeled_is_labeled_minus_label_column(tmp_path):
    lab, unl = tmp_path / "lab.tsv", tmp_path / "unl.tsv"
    s_lab = write_synthetic_criteo(lab, 2_000, seed=1)
    s_unl = write_synthetic_criteo(unl, 2_000, seed=1, unlabeled=True)
    rows_lab, rows_unl = read_rows(lab), read_rows(unl)
    assert all(len(r) == 39 for r in rows_unl)
    assert [r[1:] for r in rows_lab] == rows_unl
    assert s_unl.unlabeled and not s_lab.unlabeled
    assert s_unl.oracle_auc == s_lab.oracle_auc
    assert (tmp_path / "unl.tsv.probs.npy").exists()


# --- atomicity and errors ---------------------------------------------------------------------


def test_atomic_write_leaves_no_temp_files(tmp_path):
    out = tmp_path / "x.tsv"
    write_synthetic_criteo(out, 500, seed=0)
    assert sorted(os.listdir(tmp_path)) == ["x.tsv", "x.tsv.probs.npy"]


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(synthetic, "_criteo_frame", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_synthetic_criteo(tmp_path / "x.tsv", 500, seed=0)
    assert os.listdir(tmp_path) == []


def test_rows_failing_after_their_probabilities_leave_neither(tmp_path, monkeypatch):
    """The probabilities land first; if the rows then fail to land, no half pair remains."""
    out, real_replace = tmp_path / "x.tsv", os.replace

    def replace(src, dst):
        if Path(dst) == out:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match="input/output error"):
        write_synthetic_criteo(out, 100, seed=0)
    assert os.listdir(tmp_path) == []


def test_probabilities_where_asked(tmp_path):
    summary = write_synthetic_criteo(tmp_path / "x.tsv", 100, seed=0, probs_out=tmp_path / "p.npy")
    assert sorted(os.listdir(tmp_path)) == ["p.npy", "x.tsv"] and summary.probs_path == str(tmp_path / "p.npy")
    assert np.load(tmp_path / "p.npy").shape == (100,)


def test_overwrites_existing_output(tmp_path):
    out = tmp_path / "x.tsv"
    out.write_text("old\n")
    write_synthetic_criteo(out, 10, seed=0)
    assert len(read_rows(out)) == 10


@pytest.mark.parametrize("rows", [0, -5, True, 2.5, "10"])
def test_bad_rows_is_config_error(tmp_path, rows):
    with pytest.raises(ConfigError, match="rows"):
        write_synthetic_criteo(tmp_path / "x.tsv", rows)
    assert os.listdir(tmp_path) == []


def test_bad_seed_and_block_rows_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="seed"):
        write_synthetic_criteo(tmp_path / "x.tsv", 10, seed=-1)
    with pytest.raises(ConfigError, match="block_rows"):
        write_synthetic_criteo(tmp_path / "x.tsv", 10, block_rows=0)


def test_output_is_directory_or_parent_missing_is_input_error(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        write_synthetic_criteo(tmp_path, 10)
    with pytest.raises(InputError, match="does not exist"):
        write_synthetic_criteo(tmp_path / "no" / "such" / "x.tsv", 10)
    (tmp_path / "x.tsv.probs.npy").mkdir()
    with pytest.raises(InputError, match="probabilities"):
        write_synthetic_criteo(tmp_path / "x.tsv", 10)


# --- helpers ----------------------------------------------------------------------------------


def test_rank_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # many ties
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg).sum() + 0.5 * (pos[:, None] == neg).sum()
    expected = wins / (pos.size * neg.size)
    assert rank_auc(labels, scores) == pytest.approx(expected)
    assert rank_auc(np.ones(5), np.arange(5)) != rank_auc(np.ones(5), np.arange(5))  # NaN


def test_zipf_sampler_matches_its_distribution():
    u = np.random.default_rng(1).random(200_000)
    ranks = synthetic._zipf_ranks(u, 50, 1.6, 2.0)
    expected = synthetic._zipf_probs(50, 1.6, 2.0)
    observed = np.bincount(ranks, minlength=50) / u.size
    assert ranks.min() >= 0 and ranks.max() <= 49
    np.testing.assert_allclose(observed[:10], expected[:10], rtol=0.05)


def test_value_hashes_are_distinct_across_fields_and_ranks():
    ranks = np.concatenate([np.arange(20_000), 2**27 - 1 - np.arange(1_000)])
    keys = (123, 456)
    h = np.concatenate([synthetic._value_hashes(j, ranks, keys) for j in range(26)])
    assert np.unique(h).size == h.size


def test_bars_bucket_lookup_matches_formula():
    v = np.array([-2, -1, 0, 1, 2, 3, 4, 20, 4095, 4096, 10**6, 10**8])
    expected = [x if x <= 2 else int(np.floor(np.log(x) ** 2)) for x in v.tolist()]
    assert synthetic._bars_bucket(v).tolist() == expected


# --- CLI --------------------------------------------------------------------------------------


def make_parser() -> argparse.ArgumentParser:
    from ctrkit.commands import synth

    parser = argparse.ArgumentParser(prog="ctrkit")
    synth.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli.tsv"
    args = make_parser().parse_args(["synth", "criteo", str(out), "--rows", "700", "--seed", "2"])
    assert args.rows == 700 and args.seed == 2 and not args.unlabeled
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "700" in text and "oracle AUC" in text and "CTR" in text and str(out) in text
    assert len(read_rows(out)) == 700
    args = make_parser().parse_args(["synth", "criteo", str(tmp_path / "u.tsv"), "--unlabeled"])
    assert args.rows == 100_000 and args.seed == 0 and args.unlabeled


def test_cli_rejects_unknown_format(capsys):
    with pytest.raises(SystemExit):
        make_parser().parse_args(["synth", "avazu", "x.tsv"])


def test_cli_bad_rows_raises_config_error(tmp_path):
    args = make_parser().parse_args(["synth", "criteo", str(tmp_path / "x.tsv"), "--rows", "0"])
    with pytest.raises(ConfigError):
        args.func(args)
