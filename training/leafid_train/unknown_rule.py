"""How the unknown threshold is chosen on val: the keep and coverage rules (numpy only).

A photo is answered when its score is ``>=`` the threshold, else it is *unknown*. The
keep rule keeps a share of the correct answers (:func:`pick_threshold`); the coverage
rule answers the most val leaf photos within answered-right and per-root rejection
targets (:func:`pick_coverage_threshold`). :func:`risk_coverage_curve` shows what the
other thresholds would do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leafid.errors import InvalidRequestError
from leafid_train.config import TrainConfig

RISK_COVERAGE_POINTS = 20


def pick_threshold(correct_scores: np.ndarray, keep: float = 0.95) -> float:
    """The highest unknown threshold that still answers ``keep`` of the correct answers.

    Raising the threshold can only reject more out-of-distribution photos, so the best
    threshold under the constraint is the largest one that keeps at least ``keep`` of
    the correct in-distribution answers (scores ``>=`` threshold are answered).
    """
    scores = np.sort(np.asarray(correct_scores, dtype=np.float64))
    if len(scores) == 0:
        return 0.0
    k = math.floor((1.0 - keep) * len(scores) + 1e-9)
    return float(np.clip(scores[min(k, len(scores) - 1)], 0.0, 1.0))


@dataclass(frozen=True)
class UnknownRule:
    """How the unknown threshold is chosen on val (``leafid train --unknown-rule``).

    Attributes:
        name: ``keep``: the highest threshold that still answers ``keep_fraction`` of the
            correct answers (:func:`pick_threshold`; every run before the coverage rule).
            ``coverage``: the threshold that answers the most val leaf photos subject to
            ``answered_right`` and ``reject`` (:func:`pick_coverage_threshold`).
        keep_fraction: Keep rule: share of correct answers kept.
        answered_right: Coverage rule: least share of answered val leaf photos that are right.
        reject: Coverage rule: {OOD root name: least share of its val photos answered
            unknown}; roots not named have no target.
    """

    name: str = "keep"
    keep_fraction: float = 0.95
    answered_right: float = 0.98
    reject: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: TrainConfig) -> UnknownRule:
        """The rule of a run's config."""
        return cls(cfg.unknown_rule, cfg.keep_fraction, cfg.answered_right, cfg.reject_targets())

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the coverage rule's targets)."""
        return {
            "name": self.name,
            "answered_right": self.answered_right,
            "reject": dict(self.reject),
        }


def operating_points(
    thresholds: np.ndarray,
    scores: np.ndarray,
    correct: np.ndarray,
    ood_scores: Mapping[str, np.ndarray],
) -> list[dict[str, Any]]:
    """What each threshold does on val: a photo is answered when its score is ``>=`` it.

    Returns:
        Per threshold: ``coverage`` (share of leaf photos answered), ``answered_right``
        (share of the answered ones that are right; None when none is) and ``rejected``
        ({OOD root: share of its photos answered unknown}).
    """
    order = np.argsort(scores, kind="mergesort")
    leaf = np.asarray(scores, dtype=np.float64)[order]
    # right answers among the photos scoring >= leaf[i]: a suffix sum
    right_from = np.concatenate([np.cumsum(np.asarray(correct)[order][::-1])[::-1], [0]])
    ood = {root: np.sort(np.asarray(s, dtype=np.float64)) for root, s in ood_scores.items()}
    points = []
    for t in np.asarray(thresholds, dtype=np.float64):
        first = int(np.searchsorted(leaf, t, side="left"))
        answered = len(leaf) - first
        points.append(
            {
                "threshold": float(t),
                "coverage": answered / len(leaf) if len(leaf) else 0.0,
                "answered_right": float(right_from[first]) / answered if answered else None,
                "rejected": {
                    root: float(np.searchsorted(s, t, side="left")) / len(s) if len(s) else 1.0
                    for root, s in ood.items()
                },
            }
        )
    return points


def _shortfall(point: dict[str, Any], rule: UnknownRule) -> float:
    """How far ``point`` falls short of the rule's rejection targets, summed over roots."""
    return sum(max(0.0, target - point["rejected"][root]) for root, target in rule.reject.items())


def pick_coverage_threshold(
    scores: np.ndarray,
    correct: np.ndarray,
    ood_scores: Mapping[str, np.ndarray],
    rule: UnknownRule,
) -> tuple[dict[str, Any], str | None]:
    """The threshold that answers the most val leaf photos within the rule's targets.

    Targets: at least ``rule.answered_right`` of the answered leaf photos right, and at
    least ``rule.reject[root]`` of each named OOD root's photos answered unknown. Only
    the leaf scores are candidates (a threshold between two of them answers the same
    leaf photos as the upper one and rejects fewer OOD photos). When no threshold meets
    every target, the issue's priority order decides: answered-right first (else the
    most right), then rejection (the least summed shortfall), then coverage.

    Returns:
        The chosen :func:`operating_points` entry, and None when it meets every target,
        else a sentence saying which targets could not be met.

    Raises:
        InvalidRequestError: A rejection target names a root without OOD scores.
    """
    missing = sorted(set(rule.reject) - set(ood_scores))
    if missing:
        raise InvalidRequestError(f"rejection targets for {missing}: no OOD val photos of them")
    points = operating_points(np.unique(scores), scores, correct, ood_scores)
    if not points:
        return operating_points(np.array([0.0]), scores, correct, ood_scores)[0], None

    def rank(p: dict[str, Any]) -> tuple[bool, float, float, float]:
        right_ok = p["answered_right"] >= rule.answered_right
        return (
            right_ok,
            0.0 if right_ok else p["answered_right"],
            -_shortfall(p, rule),
            p["coverage"],
        )

    best = max(points, key=rank)
    unmet = []
    if best["answered_right"] < rule.answered_right:
        unmet.append(f"answered right >= {rule.answered_right:g}")
    unmet += [
        f"{root} answered unknown >= {target:g}"
        for root, target in rule.reject.items()
        if best["rejected"][root] < target
    ]
    if not unmet:
        return best, None
    return best, (
        f"no threshold meets every target on val ({'; '.join(unmet)} not met): chosen by the "
        "priority order answered-right, then rejection, then coverage"
    )


def risk_coverage_curve(
    scores: np.ndarray,
    correct: np.ndarray,
    ood_scores: Mapping[str, np.ndarray],
    chosen: float,
    points: int = RISK_COVERAGE_POINTS,
) -> list[dict[str, Any]]:
    """Coverage vs answered-right (and OOD rejection) over thresholds, lowest first.

    The thresholds answer 100%, 95%, ... of the val leaf photos (``points`` levels), plus
    the ``chosen`` one; coverage falls as the threshold rises.
    """
    ranked = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    levels = np.linspace(1.0, 1.0 / points, points)
    picks = (
        ranked[np.maximum(np.ceil(levels * len(ranked)).astype(int) - 1, 0)] if len(ranked) else []
    )
    thresholds = np.unique(np.concatenate([np.asarray(picks, dtype=np.float64), [chosen]]))
    return operating_points(thresholds, scores, correct, ood_scores)
