"""The neutral epoch policy: PlateauSchedule against torch's ReduceLROnPlateau, improvement, early stop."""

from __future__ import annotations

import math

import pytest

from ctrkit.errors import ConfigError
from ctrkit.training.policy import (
    EpochPolicy,
    PlateauSchedule,
    base_rate_loss,
    high_loss_warning,
    is_improvement,
)
from ctrkit.training.progress import Progress

NAN, INF = math.nan, math.inf
SEQUENCES = {
    "rising": [0.60, 0.61, 0.62, 0.63],
    "plateau": [0.70, 0.70, 0.70, 0.70, 0.70, 0.70],
    "noisy": [0.70, 0.69, 0.71, 0.71, 0.68, 0.72, 0.72, 0.50, 0.49, 0.73],
    "nan": [0.70, NAN, 0.69, NAN, NAN, 0.75, NAN, 0.74],
    "nan_first": [NAN, NAN, 0.60, 0.59, NAN],
    "inf": [0.70, INF, 0.80, -INF, NAN, INF],
}


def torch_lrs(scores, *, lr, factor, patience, mode, groups=1):
    """The learning rate after each step of torch's scheduler, with ctrkit's settings."""
    torch = pytest.importorskip("torch")
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    optimizer = torch.optim.SGD([{"params": [p]} for p in params], lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=factor,
                                                           patience=patience, threshold=0.0)
    out = []
    for score in scores:
        scheduler.step(score)
        lrs = {g["lr"] for g in optimizer.param_groups}
        assert len(lrs) == 1
        out.append(lrs.pop())
    return out, scheduler


@pytest.mark.parametrize("name", SEQUENCES)
@pytest.mark.parametrize("patience, factor", [(0, 0.1), (1, 0.5), (2, 0.3)])
@pytest.mark.parametrize("mode", ["max", "min"])
def test_plateau_schedule_equals_torch_reduce_lr_on_plateau(name, patience, factor, mode):
    scores = SEQUENCES[name]
    expected, _ = torch_lrs(scores, lr=1e-2, factor=factor, patience=patience, mode=mode, groups=3)
    schedule = PlateauSchedule(1e-2, factor=factor, patience=patience, mode=mode)
    got = [schedule.step(score) for score in scores]
    assert got == expected  # bit for bit: the same float operations
    if name == "plateau":
        assert got[-1] < 1e-2  # the sequence does reduce: the test can tell a no-op apart


def test_plateau_schedule_skips_reductions_below_eps_like_torch():
    scores = [0.5] * 5
    expected, _ = torch_lrs(scores, lr=1e-30, factor=0.1, patience=0, mode="max")
    schedule = PlateauSchedule(1e-30, factor=0.1, patience=0)
    assert [schedule.step(s) for s in scores] == expected == [1e-30] * 5


def test_plateau_schedule_state_round_trip_continues_identically():
    scores = SEQUENCES["noisy"]
    whole = PlateauSchedule(1.0, factor=0.5, patience=1)
    expected = [whole.step(s) for s in scores]
    first = PlateauSchedule(1.0, factor=0.5, patience=1)
    head = [first.step(s) for s in scores[:4]]
    second = PlateauSchedule(1.0, factor=0.5, patience=1)
    second.load_state_dict(first.state_dict())
    assert head + [second.step(s) for s in scores[4:]] == expected


def test_plateau_schedule_reads_a_torch_scheduler_state_of_older_checkpoints():
    scores = SEQUENCES["noisy"]
    expected, _ = torch_lrs(scores, lr=1.0, factor=0.5, patience=1, mode="max")
    _, scheduler = torch_lrs(scores[:5], lr=1.0, factor=0.5, patience=1, mode="max")
    schedule = PlateauSchedule(1.0, factor=0.5, patience=1)
    schedule.load_state_dict(scheduler.state_dict())
    assert schedule.lr == expected[4]
    assert [schedule.step(s) for s in scores[5:]] == expected[5:]


def test_plateau_schedule_refuses_a_foreign_state():
    schedule = PlateauSchedule(1.0)
    with pytest.raises(ValueError, match="not a plateau schedule state"):
        schedule.load_state_dict({"lr": 3})
    _, scheduler = torch_lrs([0.5], lr=1.0, factor=0.5, patience=1, mode="min")
    with pytest.raises(ValueError, match="mode 'min'"):
        schedule.load_state_dict(scheduler.state_dict())


# ---------------------------------------------------------------------------------------------
# improvement, best tracking and early stopping
# ---------------------------------------------------------------------------------------------
def test_improvement_needs_every_score_finite():
    assert is_improvement({"auc": 0.51, "logloss": 0.7}, 0.5)
    assert not is_improvement({"auc": 0.50, "logloss": 0.7}, 0.5)  # equal is no improvement
    assert not is_improvement({"auc": 0.9, "logloss": NAN}, 0.5)
    assert not is_improvement({"auc": INF, "logloss": 0.1}, 0.5)
    assert not is_improvement({"auc": NAN, "logloss": 0.1}, -INF)
    assert is_improvement({"auc": 0.6, "logloss": 0.5}, -INF)


def test_monitored_metric_is_a_parameter():
    assert is_improvement({"auc": 0.4, "logloss": 0.30}, 0.31, monitor="logloss")  # lower is better
    assert not is_improvement({"auc": 0.9, "logloss": 0.32}, 0.31, monitor="logloss")
    assert is_improvement({"auc": 0.5, "logloss": 0.7, "gauc": 0.66}, 0.65, monitor="gauc")
    assert not is_improvement({"auc": 0.5, "logloss": 0.7, "gauc": NAN}, 0.65, monitor="gauc")
    assert not is_improvement({"auc": 0.9, "logloss": 0.1}, 0.65, monitor="gauc")  # no groups: never
    with pytest.raises(ConfigError, match="--monitor must be one of auc, gauc, logloss"):
        EpochPolicy(monitor="accuracy")


@pytest.mark.parametrize("patience, stops_after", [(0, 2), (1, 2), (2, 3), (3, 4)])
def test_epoch_policy_tracks_the_best_and_stops_early(patience, stops_after):
    policy = EpochPolicy(patience=patience)
    progress = Progress(best_score=policy.initial_best())
    scores = [0.7, 0.69, 0.68, 0.67, 0.66]
    improved = []
    for epoch, auc in enumerate(scores, start=1):
        improved.append(policy.end_epoch(progress, {"auc": auc, "logloss": 0.5}, epoch))
        if progress.stopped:
            break
    assert improved[0] and not any(improved[1:])
    assert (progress.best_epoch, progress.best_score) == (1, 0.7)
    assert progress.stopped == "early_stopping" and len(improved) == stops_after


def test_epoch_policy_for_logloss_starts_from_plus_infinity():
    policy = EpochPolicy(monitor="logloss", patience=5)
    progress = Progress(best_score=policy.initial_best())
    assert progress.best_score == INF
    assert policy.end_epoch(progress, {"auc": 0.6, "logloss": 0.5}, 1)
    assert policy.end_epoch(progress, {"auc": 0.5, "logloss": 0.4}, 2)
    assert not policy.end_epoch(progress, {"auc": 0.9, "logloss": 0.45}, 3)
    assert (progress.best_epoch, progress.best_score, progress.bad_epochs) == (2, 0.4, 1)
    assert policy.schedule(1.0).mode == "min"


# ---------------------------------------------------------------------------------------------
# the high-loss warning
# ---------------------------------------------------------------------------------------------
def test_high_loss_warning_only_far_above_a_constant_prediction():
    assert high_loss_warning(1, 0.9, 0.25, 1e-3) is None
    line = high_loss_warning(2, 50.0, 0.25, 10.0)
    assert line.startswith("warning: epoch 2 train_loss 50") and "--lr 10" in line
    assert f"{base_rate_loss(0.25):.3f}" in line and "training CTR 0.25" in line
    assert "50 % for every row" in high_loss_warning(1, 50.0, 0.0, 1.0)
    assert base_rate_loss(0.5) == pytest.approx(math.log(2.0))
