"""AUC, logloss and gAUC against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from ctrkit.metrics import auc, binary_metrics, gauc, logloss


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    labels = rng.random(n) < 0.3
    scores = np.round(rng.random(n) + 0.3 * labels, 1)  # few distinct values: many ties
    assert len(np.unique(scores)) < 20
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_continuous_scores_and_float_labels():
    rng = np.random.default_rng(7)
    labels = (rng.random(5000) < 0.1).astype(np.float32)
    scores = rng.normal(size=5000) + labels
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_known_values():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied: one half each
    assert auc([0, 1, 1], [0.2, 0.2, 0.9]) == 0.75


def test_auc_single_class_is_nan():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([], []))


def test_auc_length_mismatch():
    with pytest.raises(ValueError, match="different lengths"):
        auc([0, 1], [0.1, 0.2, 0.3])


def test_logloss_matches_sklearn_and_clips():
    rng = np.random.default_rng(3)
    labels = (rng.random(1000) < 0.4).astype(float)
    probs = rng.random(1000)
    assert logloss(labels, probs) == pytest.approx(log_loss(labels, probs), rel=1e-9)
    # a confident mistake is large but finite (clipped at 1e-7)
    value = logloss([1.0, 0.0], [0.0, 1.0])
    assert math.isfinite(value)
    assert value == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert math.isnan(logloss([], []))


def _gauc_reference(labels, scores, groups):
    total, weight = 0.0, 0
    for g in np.unique(groups):
        mask = groups == g
        y = labels[mask]
        if y.min() == y.max():
            continue
        total += roc_auc_score(y, scores[mask]) * mask.sum()
        weight += mask.sum()
    return total / weight


@pytest.mark.parametrize("seed", range(3))
def test_gauc_matches_per_group_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    groups = rng.integers(0, 60, n)
    labels = (rng.random(n) < 0.3).astype(int)
    scores = np.round(rng.random(n) + 0.2 * labels + 0.01 * groups, 2)  # ties, group-dependent
    assert gauc(labels, scores, groups) == pytest.approx(_gauc_reference(labels, scores, groups), abs=1e-12)


def test_gauc_skips_single_class_groups_and_weights_by_impressions():
    labels = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 0.9, 0.3, 0.1, 0.4])
    groups = np.array([7, 7, 7, 3, 3, 5, 5, 5, 9])  # group 9: positives only -> skipped
    # group 7: auc 1 (3 rows); group 3: auc 1 (2 rows); group 5: one positive (0.1) below both
    # negatives (0.9, 0.3): auc 0 (3 rows)
    assert gauc(labels, scores, groups) == pytest.approx((3 * 1 + 2 * 1 + 3 * 0) / 8)
    assert math.isnan(gauc([1, 1], [0.1, 0.2], [1, 2]))


def test_binary_metrics():
    out = binary_metrics([0, 1, 1, 0], [0.2, 0.7, 0.6, 0.1])
    assert out["auc"] == 1.0
    assert out["rows"] == 4
    assert out["ctr"] == 0.5
    assert out["logloss"] == pytest.approx(log_loss([0, 1, 1, 0], [0.2, 0.7, 0.6, 0.1]))
