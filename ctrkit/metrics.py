"""Ranking and calibration metrics for click prediction, in plain numpy (framework-neutral).

* :func:`auc` — area under the ROC curve from ranks (Mann–Whitney U), ties counted as one half,
  ``O(n log n)``.
* :func:`logloss` — mean binary cross-entropy of probabilities, clipped away from 0 and 1 so a
  single confident mistake gives a large but finite value.
* :func:`binary_metrics` / :func:`evaluation_metrics` — what training and ``ctrkit evaluate``
  report: AUC, logloss, rows, CTR, and gAUC when the rows carry a group id.
* :func:`gauc` — group AUC: the AUC of each user (group) that has both clicks and non-clicks,
  averaged with weights equal to the user's number of impressions (as in the DIN paper).
* :func:`roc_curve` — the ROC curve's points (false and true positive rates at every threshold).
* :func:`calibration_bins` / :func:`expected_calibration_error` — mean predicted probability
  against the observed click rate per bin of predictions, and their weighted mean gap (ECE,
  Naeini et al. 2015, "Obtaining well calibrated probabilities using Bayesian binning").

All functions accept any array-likes and compute in float64. A metric that is undefined (AUC of
a set with a single class, any metric of an empty set) is ``nan`` rather than an exception, so a
training loop can log it and carry on.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auc", "logloss", "gauc", "binary_metrics", "evaluation_metrics", "roc_curve",
           "calibration_bins", "expected_calibration_error"]

EPS = 1e-7


def _as_1d(name: str, values, dtype=np.float64) -> np.ndarray:
    array = np.asarray(values, dtype=dtype).reshape(-1)
    return array


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays of different lengths: {lengths}")


def _average_ranks(sorted_scores: np.ndarray) -> np.ndarray:
    """1-based ranks of already sorted scores, each run of equal scores given its mean rank."""
    n = len(sorted_scores)
    if n == 0:
        return np.zeros(0)
    # start of each run of equal values, and the run each element belongs to
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_run[1:])
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], n)  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    return np.repeat(mean_rank, ends - starts)


def _scored_labels(labels, scores) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(positive mask, float64 scores, positives, negatives)`` of binary labels (> 0.5 is positive)."""
    y = _as_1d("labels", labels) > 0.5
    s = _as_1d("scores", scores)
    _check_same_length(labels=y, scores=s)
    n_pos = int(np.count_nonzero(y))
    return y, s, n_pos, len(y) - n_pos


def auc(labels, scores) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (> 0.5 is positive); ties count one half.

    Uses the rank-sum identity ``AUC = (R+ - n+ (n+ + 1) / 2) / (n+ n-)`` where ``R+`` is the sum
    of the (tie-averaged) ranks of the positives. Returns ``nan`` when only one class is present.
    """
    y, s, n_pos, n_neg = _scored_labels(labels, scores)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = _average_ranks(s[order])
    rank_sum = float(ranks[y[order]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def logloss(labels, probs, eps: float = EPS) -> float:
    """Mean binary cross-entropy of probabilities clipped to ``[eps, 1 - eps]``; ``nan`` if empty."""
    y = _as_1d("labels", labels)
    p = np.clip(_as_1d("probs", probs), eps, 1.0 - eps)
    _check_same_length(labels=y, probs=p)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def gauc(labels, scores, groups) -> float:
    """Impression-weighted mean of per-group AUCs over the groups that have both classes.

    ``groups`` is any integer (or sortable) array of group ids, e.g. user ids. Computed for all
    groups at once with one lexicographic sort: ranks inside each group are positions within the
    group's run, ties averaged within ``(group, score)`` runs. Returns ``nan`` when no group has
    both classes.
    """
    y = _as_1d("labels", labels) > 0.5
    s = _as_1d("scores", scores)
    g = np.asarray(groups).reshape(-1)
    _check_same_length(labels=y, scores=s, groups=g)
    n = len(y)
    if n == 0:
        return float("nan")
    order = np.lexsort((s, g))  # by group, then score
    y, s, g = y[order], s[order], g[order]

    group_start = np.empty(n, dtype=bool)
    group_start[0] = True
    np.not_equal(g[1:], g[:-1], out=group_start[1:])
    group_id = np.cumsum(group_start) - 1  # 0 .. n_groups - 1 in sorted order
    starts = np.flatnonzero(group_start)

    tie_start = group_start.copy()
    tie_start[1:] |= s[1:] != s[:-1]
    tie_starts = np.flatnonzero(tie_start)
    tie_ends = np.append(tie_starts[1:], n)
    # rank within the group (1-based), averaged over each tie run
    first_rank = tie_starts - starts[group_id[tie_starts]] + 1
    last_rank = tie_ends - starts[group_id[tie_starts]]
    ranks = np.repeat((first_rank + last_rank) / 2.0, tie_ends - tie_starts)

    n_groups = len(starts)
    sizes = np.bincount(group_id, minlength=n_groups).astype(np.float64)
    n_pos = np.bincount(group_id, weights=y.astype(np.float64), minlength=n_groups)
    n_neg = sizes - n_pos
    rank_sum = np.bincount(group_id, weights=np.where(y, ranks, 0.0), minlength=n_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    group_auc = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2.0) / (n_pos[valid] * n_neg[valid])
    return float(np.sum(group_auc * sizes[valid]) / np.sum(sizes[valid]))


def binary_metrics(labels, probs) -> dict[str, float]:
    """The metrics reported after each epoch: ``auc``, ``logloss``, ``rows`` and observed ``ctr``."""
    y = _as_1d("labels", labels)
    return {
        "auc": auc(y, probs),
        "logloss": logloss(y, probs),
        "rows": int(len(y)),
        "ctr": float(y.mean()) if len(y) else float("nan"),
    }


def evaluation_metrics(labels, probs, groups=None) -> dict[str, float]:
    """:func:`binary_metrics`, plus ``gauc`` when ``groups`` (a group id per row, e.g. users) is given."""
    metrics = binary_metrics(labels, probs)
    if groups is not None:
        metrics["gauc"] = gauc(labels, probs, groups)
    return metrics


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)``: the ROC curve from ``(0, 0)`` to ``(1, 1)``, one point per distinct score.

    Scores are taken from the highest down; rows with equal scores enter together (a diagonal
    segment), so the trapezoidal area under the points equals :func:`auc`. Empty arrays when a
    class is missing.
    """
    y, s, n_pos, n_neg = _scored_labels(labels, scores)
    if n_pos == 0 or n_neg == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.append(s[1:] != s[:-1], True)  # the last row of each run of equal scores
    true_pos = np.cumsum(y)[last_of_run]
    false_pos = np.cumsum(~y)[last_of_run]
    return np.concatenate([[0.0], false_pos / n_neg]), np.concatenate([[0.0], true_pos / n_pos])


CALIBRATION_STRATEGIES = ("uniform", "quantile")


def calibration_bins(labels, probs, n_bins: int = 10, strategy: str = "uniform") -> dict[str, np.ndarray]:
    """Predictions grouped in bins: per non-empty bin its ``count``, ``mean_predicted`` probability
    and ``observed`` click rate (a perfectly calibrated model has ``observed == mean_predicted``).

    ``strategy``: ``uniform`` — ``n_bins`` equal-width bins over ``[0, 1]`` (bin ``k`` holds
    ``k/n <= p < (k+1)/n``, the last one also ``p = 1``); ``quantile`` — ``n_bins`` bins of equal
    row counts (the rows sorted by probability and cut in ``n_bins`` nearly equal runs; the
    informative choice for click rates, whose predictions crowd near 0). Empty bins are dropped.
    """
    if strategy not in CALIBRATION_STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(CALIBRATION_STRATEGIES)}, got {strategy!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = _as_1d("labels", labels)
    p = _as_1d("probs", probs)
    _check_same_length(labels=y, probs=p)
    if strategy == "uniform":
        bins = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)
    else:
        bins = np.empty(len(p), dtype=np.int64)
        bins[np.argsort(p, kind="mergesort")] = np.arange(len(p)) * n_bins // max(len(p), 1)
    count = np.bincount(bins, minlength=n_bins)
    kept = count > 0
    total_p = np.bincount(bins, weights=p, minlength=n_bins)
    total_y = np.bincount(bins, weights=y, minlength=n_bins)
    return {"count": count[kept], "mean_predicted": total_p[kept] / count[kept],
            "observed": total_y[kept] / count[kept]}


def expected_calibration_error(labels, probs, n_bins: int = 10, strategy: str = "uniform") -> float:
    """``ECE = sum_b (n_b / N) |observed_b - mean_predicted_b|`` over the bins of
    :func:`calibration_bins`; ``nan`` for no rows."""
    bins = calibration_bins(labels, probs, n_bins, strategy)
    total = bins["count"].sum()
    if total == 0:
        return float("nan")
    gap = np.abs(bins["observed"] - bins["mean_predicted"])
    return float(np.sum(bins["count"] * gap) / total)
