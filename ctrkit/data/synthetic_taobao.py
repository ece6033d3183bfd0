"""Synthetic Taobao ad display/click data: the four raw tables, with a planted sequence signal.

``ctrkit synth taobao OUT_DIR`` writes, in the layout of Tianchi dataset 56 (headers included):

* ``raw_sample.csv``: ``user,time_stamp,adgroup_id,pid,nonclk,clk`` (impressions over 8 days);
* ``ad_feature.csv``: ``adgroup_id,cate_id,campaign_id,customer,brand,price`` (``brand`` may be
  ``NULL``, as in the real table);
* ``user_profile.csv``: ``userid,cms_segid,cms_group_id,final_gender_code,age_level,
  pvalue_level,shopping_level,occupation,new_user_class_level`` (some users have no profile, some
  ``pvalue_level``/``new_user_class_level`` are empty, as in the real table);
* ``behavior_log.csv``: ``user,time_stamp,btag,cate,brand`` (``pv``/``cart``/``fav``/``buy`` over
  the 22 days ending with the last impression day, in time order);
* ``raw_sample.probs.npy``: the true click probability of each raw_sample row (float32).

Planted click model (a function of ``seed`` only). Each user has two interest phases (a set of
three categories each, switching at a random time); behaviours are drawn from the current phase's
categories (80 %) or at random, each with a brand of its category. 40 % of impressions show an ad
of the user's current interests, the others a random ad. With ``H`` the user's last
:data:`HISTORY` behaviours strictly before the impression::

    logit = bias + 0.4 u_user + 0.4 a_ad + 1.6 [cate(ad) in cates(H)] + 0.9 [brand(ad) in brands(H)]

with ``u, a ~ N(0, 1)`` and ``bias`` set for a CTR of about 5 %: a model without the sequences
sees only the user and ad effects; one with them (DIN, DIEN) can reach the oracle. A click also
writes a ``pv`` behaviour of the clicked ad at the impression's own second, so that a join taking
behaviours *at* the impression time leaks the label into its sequence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctrkit.errors import ConfigError, InputError

HISTORY = 50
DAY = 86_400
#: 2017-04-22 00:00 in UTC+8, the first day of the real behaviour log.
LOG_START = 1_492_790_400
LOG_DAYS = 22
SAMPLE_DAYS = 8
BTAGS = np.array(["pv", "cart", "fav", "buy"])
BTAG_PROBS = np.array([0.9, 0.03, 0.03, 0.04])
PIDS = np.array(["430548_1007", "430539_1007"])
TABLES = ("raw_sample.csv", "ad_feature.csv", "user_profile.csv", "behavior_log.csv")


@dataclass(frozen=True)
class TaobaoSizes:
    impressions: int = 100_000
    users: int = 2_000
    ads: int = 3_000
    categories: int = 300
    behaviours_per_user: int = 120  # mean, Poisson


@dataclass(frozen=True)
class TaobaoSummary:
    directory: str
    impressions: int
    behaviours: int
    ctr: float
    oracle_auc: float
    seed: int


def _zipf(rng: np.random.Generator, n: int, size: int, exponent: float = 1.1) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.choice(n, size=size, p=weights / weights.sum())


class _World:
    """Users, ads and interests: everything but the events."""

    def __init__(self, rng: np.random.Generator, sizes: TaobaoSizes):
        self.sizes = sizes
        c = sizes.categories
        self.brands_per_cate = 1 + rng.poisson(4, c)
        self.brand_base = np.concatenate([[0], np.cumsum(self.brands_per_cate)[:-1]]) + 1  # brand ids 1..
        self.ad_cate = _zipf(rng, c, sizes.ads, 0.8)
        self.ad_brand = self.brand_of(rng, self.ad_cate)
        self.ad_effect = rng.normal(size=sizes.ads)
        self.ads_of_cate = [np.flatnonzero(self.ad_cate == k) for k in range(c)]
        u = sizes.users
        self.user_effect = rng.normal(size=u)
        self.interests = _zipf(rng, c, u * 6, 0.8).reshape(u, 2, 3)  # two phases of three categories
        self.switch = LOG_START + rng.integers(0, LOG_DAYS * DAY, u)

    def brand_of(self, rng: np.random.Generator, cates: np.ndarray) -> np.ndarray:
        return self.brand_base[cates] + (rng.random(len(cates)) * self.brands_per_cate[cates]).astype(np.int64)

    def current_interest(self, rng: np.random.Generator, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        phase = (times >= self.switch[users]).astype(np.int64)
        return self.interests[users, phase, rng.integers(0, 3, len(users))]


def _behaviours(rng: np.random.Generator, world: _World) -> dict[str, np.ndarray]:
    sizes = world.sizes
    counts = rng.poisson(sizes.behaviours_per_user, sizes.users)
    users = np.repeat(np.arange(sizes.users), counts)
    times = LOG_START + rng.integers(0, LOG_DAYS * DAY, len(users))
    cates = np.where(rng.random(len(users)) < 0.8, world.current_interest(rng, users, times),
                     rng.integers(0, sizes.categories, len(users)))
    return {"user": users, "time": times, "cate": cates, "brand": world.brand_of(rng, cates),
            "btag": rng.choice(len(BTAGS), len(users), p=BTAG_PROBS)}


def _impressions(rng: np.random.Generator, world: _World) -> dict[str, np.ndarray]:
    sizes = world.sizes
    n = sizes.impressions
    users = _zipf(rng, sizes.users, n, 0.6)
    start = LOG_START + (LOG_DAYS - SAMPLE_DAYS) * DAY
    times = start + rng.integers(0, SAMPLE_DAYS * DAY, n)
    ads = rng.integers(0, sizes.ads, n)
    targeted = rng.random(n) < 0.4
    wanted = world.current_interest(rng, users, times)
    for i in np.flatnonzero(targeted):  # an ad of the user's current interest, where one exists
        pool = world.ads_of_cate[wanted[i]]
        if len(pool):
            ads[i] = pool[rng.integers(len(pool))]
    return {"user": users, "time": times, "ad": ads, "pid": rng.integers(0, len(PIDS), n)}


def history_match(behaviours: dict[str, np.ndarray], users: np.ndarray, times: np.ndarray,
                  cates: np.ndarray, brands: np.ndarray, history: int = HISTORY) -> tuple[np.ndarray, np.ndarray]:
    """Whether each impression's category / brand is among the user's last ``history`` behaviours before it."""
    order = np.lexsort((behaviours["time"], behaviours["user"]))
    b_user, b_time = behaviours["user"][order], behaviours["time"][order]
    b_cate, b_brand = behaviours["cate"][order], behaviours["brand"][order]
    key = b_user.astype(np.int64) * (1 << 32) + b_time
    end = np.searchsorted(key, users.astype(np.int64) * (1 << 32) + times, side="left")  # strictly before
    first = np.searchsorted(b_user, users, side="left")
    cate_hit = np.zeros(len(users), bool)
    brand_hit = np.zeros(len(users), bool)
    for k in range(1, history + 1):
        j = end - k
        valid = j >= first
        j = np.where(valid, j, 0)
        cate_hit |= valid & (b_cate[j] == cates)
        brand_hit |= valid & (b_brand[j] == brands)
    return cate_hit, brand_hit


def _solve_bias(logits: np.ndarray, target: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (1 / (1 + np.exp(-(logits + mid)))).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def user_id(user: np.ndarray) -> np.ndarray:
    """The raw tables' id of generated user ``user`` (arbitrary integers, as in the real tables)."""
    return 1000 + user


def ad_id(ad: np.ndarray) -> np.ndarray:
    """The raw tables' ``adgroup_id`` of generated ad ``ad``."""
    return 100_000 + ad


def write_synthetic_taobao(out_dir: str | os.PathLike, seed: int = 0, sizes: TaobaoSizes = TaobaoSizes(),
                           ctr: float = 0.05) -> TaobaoSummary:
    """Write the four tables and ``raw_sample.probs.npy`` into ``out_dir`` (created; files replaced atomically)."""
    import polars as pl

    from ctrkit.data.synthetic import rank_auc
    from ctrkit.fileio import atomic_output

    for name, value in (("impressions", sizes.impressions), ("users", sizes.users), ("ads", sizes.ads),
                        ("categories", sizes.categories)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x54414F42])
    world = _World(rng, sizes)
    behaviours = _behaviours(rng, world)
    shown = _impressions(rng, world)
    cates, brands = world.ad_cate[shown["ad"]], world.ad_brand[shown["ad"]]
    cate_hit, brand_hit = history_match(behaviours, shown["user"], shown["time"], cates, brands)
    logits = 0.4 * world.user_effect[shown["user"]] + 0.4 * world.ad_effect[shown["ad"]] + 1.6 * cate_hit + 0.9 * brand_hit
    probs = 1 / (1 + np.exp(-(logits + _solve_bias(logits, ctr))))
    clicks = rng.random(len(probs)) < probs

    # a click is also a pv of the clicked ad at the impression's second: a leaky join would see it
    clicked = np.flatnonzero(clicks)
    log = {k: np.concatenate([v, {"user": shown["user"], "time": shown["time"], "cate": cates, "brand": brands,
                                  "btag": np.zeros(len(probs), np.int64)}[k][clicked]]) for k, v in behaviours.items()}
    order = np.argsort(log["time"], kind="stable")
    ads = _ad_table(rng, world)
    profiled, profiles = _profile_table(rng, sizes.users)
    # as in the real log, a behaviour's user has impressions or a profile (preprocess refuses others)
    known = np.zeros(sizes.users, bool)
    known[shown["user"]] = known[profiled] = True
    order = order[known[log["user"][order]]]

    tables = {
        "raw_sample.csv": pl.DataFrame({
            "user": user_id(shown["user"]), "time_stamp": shown["time"], "adgroup_id": ad_id(shown["ad"]),
            "pid": PIDS[shown["pid"]], "nonclk": (~clicks).astype(np.int64), "clk": clicks.astype(np.int64)}),
        "ad_feature.csv": ads,
        "user_profile.csv": profiles,
        "behavior_log.csv": pl.DataFrame({
            "user": user_id(log["user"][order]), "time_stamp": log["time"][order], "btag": BTAGS[log["btag"][order]],
            "cate": log["cate"][order] + 1, "brand": log["brand"][order]}),
    }
    for name, frame in tables.items():
        with atomic_output(out / name, "wb") as handle:
            frame.write_csv(handle)
    with atomic_output(out / "raw_sample.probs.npy", "wb") as handle:
        np.save(handle, probs.astype(np.float32))
    return TaobaoSummary(str(out), len(probs), len(order), float(clicks.mean()), rank_auc(clicks, probs.astype(np.float32)), seed)


def _ad_table(rng: np.random.Generator, world: _World) -> "pl.DataFrame":
    import polars as pl

    n = world.sizes.ads
    brand = world.ad_brand.astype(str).astype(object)
    brand[rng.random(n) < 0.05] = "NULL"
    return pl.DataFrame({
        "adgroup_id": ad_id(np.arange(n)), "cate_id": world.ad_cate + 1, "campaign_id": 5000 + rng.integers(0, n // 2 + 1, n),
        "customer": 9000 + rng.integers(0, n // 4 + 1, n), "brand": pl.Series(brand.tolist(), dtype=pl.String),
        "price": np.round(np.exp(rng.normal(4, 1.2, n)), 2)})


def _profile_table(rng: np.random.Generator, users: int) -> tuple[np.ndarray, "pl.DataFrame"]:
    """The users that have a profile, and their profile table."""
    import polars as pl

    kept = np.flatnonzero(rng.random(users) >= 0.05)  # 5 % of users have no profile
    n = len(kept)

    def maybe_empty(values: np.ndarray, rate: float) -> pl.Series:
        shown = values.astype(str).astype(object)
        shown[rng.random(n) < rate] = None
        return pl.Series(shown.tolist(), dtype=pl.String)

    return kept, pl.DataFrame({
        "userid": user_id(kept), "cms_segid": rng.integers(0, 97, n), "cms_group_id": rng.integers(0, 13, n),
        "final_gender_code": rng.integers(1, 3, n), "age_level": rng.integers(0, 7, n),
        "pvalue_level": maybe_empty(rng.integers(1, 4, n), 0.5), "shopping_level": rng.integers(1, 4, n),
        "occupation": rng.integers(0, 2, n), "new_user_class_level": maybe_empty(rng.integers(1, 5, n), 0.3)})
