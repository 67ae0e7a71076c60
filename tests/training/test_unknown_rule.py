from __future__ import annotations

import numpy as np
import pytest

from leafid.errors import InvalidRequestError
from leafid_train.config import TrainConfig
from leafid_train.unknown_rule import (
    UnknownRule,
    operating_points,
    pick_coverage_threshold,
    pick_threshold,
    risk_coverage_curve,
)


def test_threshold_keeps_95_percent_of_correct_answers() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 19, 20, 21, 200, 1001):
        scores = rng.random(n)
        t = pick_threshold(scores, 0.95)
        assert (scores >= t).mean() >= 0.95
        # it is the highest such threshold: the next score up keeps too few
        above = scores[scores > t]
        if len(above):
            assert (scores >= above.min()).mean() < 0.95


def _scores() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """100 leaf scores 0.01..1.00 (the lower the likelier wrong) and two OOD roots."""
    scores = np.arange(1, 101) / 100
    correct = np.ones(100, dtype=bool)
    correct[[0, 2, 4, 6, 8, 10, 15, 20, 30, 45]] = False  # 10 wrong, mostly low scores
    ood = {"nonleaf": np.linspace(0.0, 0.6, 50), "plants": np.linspace(0.0, 0.9, 30)}
    return scores, correct, ood


def _meets(point: dict, rule: UnknownRule) -> bool:
    rejected = point["rejected"]
    return point["answered_right"] >= rule.answered_right and all(
        rejected[root] >= target for root, target in rule.reject.items()
    )


def test_coverage_threshold_answers_the_most_within_every_target() -> None:
    scores, correct, ood = _scores()
    rule = UnknownRule("coverage", answered_right=0.98, reject={"nonleaf": 0.95, "plants": 0.7})
    point, fallback = pick_coverage_threshold(scores, correct, ood, rule)
    assert fallback is None
    assert point["answered_right"] >= 0.98
    assert point["rejected"]["nonleaf"] >= 0.95 and point["rejected"]["plants"] >= 0.7
    answered = scores >= point["threshold"]
    assert (
        point["coverage"] == answered.mean() and point["answered_right"] == correct[answered].mean()
    )
    # no threshold that meets every target answers more (brute force over all of them)
    every = operating_points(np.unique(scores), scores, correct, ood)
    feasible = [p for p in every if _meets(p, rule)]
    assert point["coverage"] == max(p["coverage"] for p in feasible)
    # each target binds somewhere: dropping any one of them answers more
    for looser in (
        UnknownRule("coverage", answered_right=0.9, reject=rule.reject),
        UnknownRule("coverage", answered_right=0.98, reject={"nonleaf": 0.95}),
    ):
        assert (
            pick_coverage_threshold(scores, correct, ood, looser)[0]["coverage"]
            >= point["coverage"]
        )


def test_coverage_threshold_without_targets_on_ood_answers_what_is_right_enough() -> None:
    scores, correct, ood = _scores()
    point, fallback = pick_coverage_threshold(
        scores, correct, ood, UnknownRule("coverage", answered_right=0.95)
    )
    assert fallback is None and point["answered_right"] >= 0.95
    lower = scores[scores < point["threshold"]].max()
    assert correct[scores >= lower].mean() < 0.95  # one step lower breaks the target


def test_infeasible_rejection_gives_way_to_answered_right_then_costs_coverage() -> None:
    scores, correct, ood = _scores()
    ood["always"] = np.full(10, 2.0)  # scores above every leaf photo: never rejected
    rule = UnknownRule("coverage", answered_right=0.98, reject={"plants": 0.95, "always": 0.5})
    point, fallback = pick_coverage_threshold(scores, correct, ood, rule)
    assert fallback is not None and "always answered unknown >= 0.5" in fallback
    assert "plants" not in fallback and "answered right" not in fallback
    assert point["answered_right"] >= 0.98 and point["rejected"]["plants"] >= 0.95
    # the most coverage among the thresholds that meet everything that can be met
    every = operating_points(np.unique(scores), scores, correct, ood)
    met = [p for p in every if p["answered_right"] >= 0.98 and p["rejected"]["plants"] >= 0.95]
    assert point["coverage"] == max(p["coverage"] for p in met)


def test_rejection_comes_before_coverage() -> None:
    scores, correct, ood = _scores()
    ood["high"] = np.array([0.5, 0.97, 0.99])  # 2 of 3 rejected only above 0.99
    rule = UnknownRule("coverage", answered_right=0.98, reject={"high": 0.9})
    point, fallback = pick_coverage_threshold(scores, correct, ood, rule)
    assert fallback is None and point["threshold"] == 1.0 and point["coverage"] == 0.01


def test_unreachable_answered_right_picks_the_most_right() -> None:
    scores = np.array([0.2, 0.5, 0.8, 0.9])
    correct = np.array([True, True, False, False])  # the surest answers are wrong
    ood = {"nonleaf": np.array([0.1, 0.95])}
    rule = UnknownRule("coverage", answered_right=0.98, reject={"nonleaf": 0.95})
    point, fallback = pick_coverage_threshold(scores, correct, ood, rule)
    assert fallback is not None and "answered right >= 0.98" in fallback
    assert point["threshold"] == 0.2 and point["answered_right"] == 0.5  # most right of all


def test_rejection_target_needs_that_roots_photos() -> None:
    scores, correct, ood = _scores()
    with pytest.raises(InvalidRequestError, match="missing"):
        pick_coverage_threshold(
            scores, correct, ood, UnknownRule("coverage", reject={"missing": 0.9})
        )


def test_risk_coverage_curve_is_monotone_and_holds_the_chosen_point() -> None:
    scores, correct, ood = _scores()
    rule = UnknownRule("coverage", answered_right=0.98, reject={"nonleaf": 0.95})
    chosen, _ = pick_coverage_threshold(scores, correct, ood, rule)
    curve = risk_coverage_curve(scores, correct, ood, chosen["threshold"])
    thresholds = [p["threshold"] for p in curve]
    coverage = [p["coverage"] for p in curve]
    assert thresholds == sorted(set(thresholds)) and len(curve) >= 20
    assert coverage == sorted(coverage, reverse=True) and coverage[0] == 1.0
    assert chosen in curve
    for root in ood:
        rejected = [p["rejected"][root] for p in curve]
        assert rejected == sorted(rejected)
    for p in curve:
        answered = scores >= p["threshold"]
        assert p["answered_right"] == pytest.approx(correct[answered].mean())


def test_unknown_rule_of_a_config() -> None:
    cfg = TrainConfig(
        data=["a"],
        out="r",
        ood=["nonleaf"],
        unknown_rule="coverage",
        answered_right=0.97,
        reject=["nonleaf=0.95"],
    )
    assert UnknownRule.of(cfg) == UnknownRule("coverage", 0.95, 0.97, {"nonleaf": 0.95})
    assert UnknownRule.of(TrainConfig(data=["a"], out="r")) == UnknownRule()
    with pytest.raises(InvalidRequestError, match="need --unknown-rule coverage"):
        TrainConfig(data=["a"], out="r", reject=["nonleaf=0.95"])
    with pytest.raises(InvalidRequestError, match="ROOT=FRACTION"):
        TrainConfig(data=["a"], out="r", unknown_rule="coverage", reject=["nonleaf=95"])
