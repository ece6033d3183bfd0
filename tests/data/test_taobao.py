"""Taobao: ``ctrkit synth taobao``, ``ctrkit preprocess taobao`` (the join, the time split, no leakage)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ctrkit.cli import main
from ctrkit.data.store import Store
from ctrkit.data.synthetic_taobao import TABLES, TaobaoSizes, write_synthetic_taobao
from ctrkit.data.taobao import DAY, TaobaoTables, histories, preprocess_taobao, time_split
from ctrkit.errors import InputError

TABLE_FLAGS = {"raw_sample.csv": "raw-sample", "ad_feature.csv": "ad-feature", "user_profile.csv": "user-profile",
               "behavior_log.csv": "behavior-log"}
SMALL = TaobaoSizes(impressions=3000, users=150, ads=200, categories=40, behaviours_per_user=80)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("taobao")
    write_synthetic_taobao(root, seed=3, sizes=SMALL)
    return root


def tables(root) -> TaobaoTables:
    return TaobaoTables(*(root / name for name in TABLES))


def test_synth_writes_the_four_tables_deterministically(synth, tmp_path):
    headers = {name: (synth / name).read_text().splitlines()[0] for name in TABLES}
    assert headers["raw_sample.csv"] == "user,time_stamp,adgroup_id,pid,nonclk,clk"
    assert headers["behavior_log.csv"] == "user,time_stamp,btag,cate,brand"
    assert headers["ad_feature.csv"] == "adgroup_id,cate_id,campaign_id,customer,brand,price"
    assert headers["user_profile.csv"].startswith("userid,cms_segid,")
    probs = np.load(synth / "raw_sample.probs.npy")
    sample = pl.read_csv(synth / "raw_sample.csv")
    assert len(probs) == sample.height == 3000 and (sample["clk"] + sample["nonclk"] == 1).all()
    assert 0.02 < sample["clk"].mean() < 0.1
    assert main(["synth", "taobao", str(tmp_path), "--rows", "3000", "--users", "150", "--ads", "200",
                 "--categories", "40", "--behaviours-per-user", "80", "--seed", "3"]) == 0
    assert all((tmp_path / n).read_bytes() == (synth / n).read_bytes() for n in TABLES)


def test_every_behaviour_belongs_to_a_user_with_impressions_or_a_profile(tmp_path):
    """Few impressions among many users (the CLI's default 2,000): users without impressions and
    without a profile get no behaviours, so ``preprocess taobao`` accepts the tables as written."""
    sizes = TaobaoSizes(impressions=400, users=2_000, ads=200, categories=40, behaviours_per_user=20)
    write_synthetic_taobao(tmp_path / "raw", seed=1, sizes=sizes)
    sample = pl.read_csv(tmp_path / "raw" / "raw_sample.csv")
    profiles = pl.read_csv(tmp_path / "raw" / "user_profile.csv", infer_schema=False)
    log = pl.read_csv(tmp_path / "raw" / "behavior_log.csv", infer_schema=False)
    known = set(sample["user"].to_list()) | {int(u) for u in profiles["userid"]}
    behaving = {int(u) for u in log["user"]}
    assert behaving <= known and len(behaving) > len(set(sample["user"].to_list()))
    assert main(["preprocess", "taobao", "--out", str(tmp_path / "s.lmdb"),
                 *(arg for name in TABLES for arg in (f"--{TABLE_FLAGS[name]}", str(tmp_path / "raw" / name)))]) == 0
    assert Store(tmp_path / "s.lmdb").split("train").rows > 0


def test_planted_signal_is_in_the_sequences(synth):
    """Clicks are likelier when the ad's category is among the user's last 50 behaviours."""
    sample = pl.read_csv(synth / "raw_sample.csv")
    ads = pl.read_csv(synth / "ad_feature.csv", infer_schema=False)
    log = pl.read_csv(synth / "behavior_log.csv", schema_overrides={"brand": pl.Int64})
    cate = sample.join(ads.select(pl.col("adgroup_id").cast(pl.Int64), pl.col("cate_id").cast(pl.Int64)),
                       on="adgroup_id", how="left")["cate_id"].to_numpy()
    seq, _, _ = histories(log, sample["user"].to_numpy(), sample["time_stamp"].to_numpy(), 50)
    hit = (seq["hist_cate"] == cate[:, None]).any(axis=1)
    clicks = sample["clk"].to_numpy()
    assert clicks[hit].mean() > 2 * clicks[~hit].mean()


def reference_history(log: pl.DataFrame, user: int, time: int, max_len: int) -> list[int]:
    """The brute-force answer: categories of the user's behaviours strictly before ``time``."""
    mine = [(t, c) for u, t, c in zip(log["user"], log["time_stamp"], log["cate"]) if u == user and t < time]
    mine.sort(key=lambda item: item[0])
    return [c for _, c in mine][-max_len:]


def test_no_behaviour_at_or_after_the_impression_enters_its_sequence(synth, tmp_path):
    """The leakage test: every stored sequence equals the brute-force one built from strictly earlier behaviours."""
    result = preprocess_taobao(tables(synth), tmp_path / "s.lmdb", max_seq_len=20, buckets=1, progress=False)
    store = result.store
    sample = pl.read_csv(synth / "raw_sample.csv")
    log = pl.read_csv(synth / "behavior_log.csv", schema_overrides={"brand": pl.Int64})
    split = time_split(int(sample["time_stamp"].min()))
    test_rows = sample.filter(pl.col("time_stamp") >= split.test_from)  # one bucket: file order within a split
    stored = store.read_split("test")
    assert len(stored["label"]) == test_rows.height
    np.testing.assert_array_equal(stored["label"], test_rows["clk"].to_numpy())
    np.testing.assert_array_equal(stored["group"], test_rows["user"].to_numpy())
    vocab = store.vocabulary("cate_id")
    ids = stored["seq:hist_cate"]
    leaked_at_t = 0
    for i, (user, time) in enumerate(zip(test_rows["user"], test_rows["time_stamp"])):
        expected = reference_history(log, user, time, 20)
        row = ids[i]
        got = [int(vocab[x - 1]) for x in row[row > 0]]
        assert got == expected, (i, user, time)
        assert (row[: 20 - len(expected)] == 0).all()  # left-padded
        at_t = log.filter((pl.col("user") == user) & (pl.col("time_stamp") == time)).height
        leaked_at_t += at_t > 0
    assert leaked_at_t > 0  # the planted clicks' page views at the impression second exist, and were left out


def test_hand_made_tables(tmp_path):
    """Behaviours before, at and after the impression; a user without profile; a NULL brand."""
    t = 1494100000
    (tmp_path / "raw_sample.csv").write_text(f"user,time_stamp,adgroup_id,pid,nonclk,clk\n1,{t},10,p1,0,1\n2,{t + DAY * 7},11,p2,1,0\n1,{t + 100},11,p1,1,0\n")
    (tmp_path / "ad_feature.csv").write_text("adgroup_id,cate_id,campaign_id,customer,brand,price\n10,5,1,1,NULL,9.9\n11,6,1,2,77,100\n")
    (tmp_path / "user_profile.csv").write_text("userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,occupation,new_user_class_level \n1,0,1,2,3,,3,0,\n")
    (tmp_path / "behavior_log.csv").write_text(
        f"user,time_stamp,btag,cate,brand\n1,{t - 10},pv,5,70\n1,{t},pv,6,71\n1,{t + 5},cart,7,72\n2,{t - 1},buy,6,77\n1,{t - 20},fav,8,73\n")
    result = preprocess_taobao(tables(tmp_path), tmp_path / "s.lmdb", max_seq_len=4, buckets=2, progress=False)
    store = result.store
    rows = {}
    for split in ("train", "valid", "test"):
        if store.split(split).rows:
            data = store.read_split(split)
            for i, group in enumerate(data["group"]):
                rows.setdefault(int(group), []).append({k: v[i] for k, v in data.items()})
    vocab = store.vocabulary("cate_id")
    decode = lambda ids: [int(vocab[x - 1]) for x in ids if x > 0]  # noqa: E731
    first, later = sorted(rows[1], key=lambda r: r["label"], reverse=True)  # the click is the earlier impression
    assert decode(first["seq:hist_cate"]) == [8, 5]  # not 6 (at t) nor 7 (after)
    assert decode(later["seq:hist_cate"]) == [8, 5, 6, 7]
    assert decode(rows[2][0]["seq:hist_cate"]) == [6]
    assert store.split("test").rows == 1  # user 2's impression, day 8
    brand_vocab = list(store.vocabulary("brand"))
    assert first["sparse"][[f.name for f in store.schema.sparse].index("brand")] == brand_vocab.index(np.iinfo(np.int64).min) + 1


@pytest.mark.parametrize("table, line, content, message", [
    ("raw_sample.csv", 3, "user,time_stamp,adgroup_id,pid,nonclk,clk\n1,1494100000,10,p,0,1\n1,1494100001,99,p,0,1\n",
     "adgroup_id: 99 is not in"),
    ("raw_sample.csv", 2, "user,time_stamp,adgroup_id,pid,nonclk,clk\n1,yesterday,10,p,0,1\n", "time_stamp: not a Unix time"),
    ("behavior_log.csv", 3, "user,time_stamp,btag,cate,brand\n1,1494000000,pv,5,70\n1,12,pv,5,70\n", "time_stamp: not a Unix time"),
    ("behavior_log.csv", 2, "user,time_stamp,btag,cate,brand\n42,1494000000,pv,5,70\n", "user: 42 is in neither"),
])
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, capsys, table, line, content, message):
    files = {
        "raw_sample.csv": "user,time_stamp,adgroup_id,pid,nonclk,clk\n1,1494100000,10,p,0,1\n",
        "ad_feature.csv": "adgroup_id,cate_id,campaign_id,customer,brand,price\n10,5,1,1,3,9.9\n",
        "user_profile.csv": "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,occupation,new_user_class_level\n1,0,1,2,3,,3,0,\n",
        "behavior_log.csv": "user,time_stamp,btag,cate,brand\n1,1494000000,pv,5,70\n",
    }
    files[table] = content
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = tmp_path / "s.lmdb"
    args = ["preprocess", "taobao", "--raw-sample", str(tmp_path / "raw_sample.csv"), "--ad-feature", str(tmp_path / "ad_feature.csv"),
            "--user-profile", str(tmp_path / "user_profile.csv"), "--behavior-log", str(tmp_path / "behavior_log.csv"), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / table}:{line}: " in err[0] and message in err[0], err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".s.lmdb")]


@pytest.mark.slow
def test_joined_rows_encode_like_the_store_and_predict_from_the_checkpoint(synth, tmp_path):
    from ctrkit.config import TrainConfig
    from ctrkit.data.encoder import copy_encoder_to_run_dir
    from ctrkit.data.pipeline import iter_raw_batches
    from ctrkit.pytorch.trainer import train_from_config

    joined = tmp_path / "joined.parquet"
    result = preprocess_taobao(tables(synth), tmp_path / "s.lmdb", max_seq_len=10, buckets=1, joined_out=joined, progress=False)
    store = result.store
    rows = pl.read_parquet(joined)
    assert rows.height == 3000 and rows.columns[-3:] == ["hist_btag", "hist_cate", "hist_brand"]
    split = store.meta["encoder"]["spec"]["split"]
    batches = list(iter_raw_batches(joined, store, batch_rows=10_000))
    encoded = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    in_test = rows["time_stamp"].to_numpy() >= split["test_from"]
    stored = store.read_split("test")
    for key in ("label", "sparse", "dense", "seq:hist_btag", "seq:hist_cate", "seq:hist_brand"):
        np.testing.assert_array_equal(encoded[key][in_test], stored[key], err_msg=key)

    save_dir = tmp_path / "run"
    train_from_config(TrainConfig(model="lr", data=str(store.path), epochs=1, batch_size=512, threads=1, model_save_dir=str(save_dir)))
    copy_encoder_to_run_dir(store.path, save_dir)
    scores = tmp_path / "scores.csv"
    assert main(["predict", str(save_dir), str(joined), "--out", str(scores)]) == 0
    probs = np.loadtxt(scores)
    assert probs.shape == (3000,) and ((probs > 0) & (probs < 1)).all()
