"""How the genus and family thresholds are chosen on val (numpy only).

A photo whose best species is under the unknown threshold may be answered at genus
rank (its genus's summed score reaches the genus threshold), else at family rank
(:mod:`leafid.taxonomy`). Each rank's threshold is the lowest one whose answers on val
are right at least as often as species answers must be (``answered_right`` of the
run's :class:`~leafid_train.unknown_rule.UnknownRule`), and that keeps each OOD root
with a rejection target at or over it: backing off must not answer photos of none of
the species that the unknown rule turned away.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from leafid.spec import TAXON_RANKS, ClassInfo
from leafid.taxonomy import Taxa


def _lowest_threshold(
    scores: np.ndarray,
    right: np.ndarray,
    need: float,
    ood_scores: Mapping[str, np.ndarray],
    ood_allowed: Mapping[str, int],
) -> float | None:
    """The lowest threshold answering ``need`` right and at most ``ood_allowed`` per root."""
    for t in np.unique(scores):
        answered = scores >= t
        if right[answered].mean() < need:
            continue
        if all(int((ood_scores[r] >= t).sum()) <= n for r, n in ood_allowed.items()):
            return float(t)
    return None


def pick_taxon_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[ClassInfo],
    species_threshold: float,
    answered_right: float,
    ood_probs: Mapping[str, np.ndarray] | None = None,
    reject: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Genus, then family threshold on val, and what backing off does there.

    Args:
        probs: Calibrated val leaf scores (N, n_classes).
        labels: Their class indices.
        classes: The model's classes (with genus and family where known).
        species_threshold: The unknown threshold of species answers.
        answered_right: Least share of a rank's answers that must be right.
        ood_probs: {OOD root: its val photos' calibrated scores}.
        reject: {OOD root: least share of its photos to leave unanswered}.

    Returns:
        ``taxon_thresholds`` ({rank: threshold}; a rank without a threshold that meets
        the targets, or without taxonomy, is left out) and ``taxon_backoff``: the val
        photos, those right at species rank, those without a species answer, and per
        rank the ``answers``, those ``right``, and ``ood_answers`` (OOD photos answered
        at that rank).
    """
    ood_probs = dict(ood_probs or {})
    best = probs.max(axis=1) if len(probs) else np.zeros(0)
    species = best >= species_threshold
    left = ~species
    ood_left = {r: p.max(axis=1) < species_threshold for r, p in ood_probs.items()}
    # photos each root may still answer without going under its target
    allowed = {
        r: max(0, int(ood_left[r].sum()) - math.ceil(target * len(ood_left[r]) - 1e-9))
        for r, target in (reject or {}).items()
        if r in ood_left
    }
    thresholds: dict[str, float] = {}
    figures: dict[str, Any] = {
        "val_images": int(len(labels)),
        "species_right": int((species & (probs.argmax(axis=1) == labels)).sum()),
        "no_species_answer": int(left.sum()),
    }
    for rank in TAXON_RANKS:
        taxa = Taxa.of(classes, rank)
        if not taxa.names:
            continue
        sums = taxa.sums(probs)
        score, guess = sums.max(axis=1), sums.argmax(axis=1)
        right = (guess == taxa.members[labels]) & (taxa.members[labels] >= 0)
        ood_score = {r: taxa.sums(p).max(axis=1) for r, p in ood_probs.items()}
        t = _lowest_threshold(
            score[left],
            right[left],
            answered_right,
            {r: ood_score[r][ood_left[r]] for r in allowed},
            allowed,
        )
        if t is None:
            figures[rank] = {"threshold": None, "answers": 0, "right": 0, "ood_answers": 0}
            continue
        thresholds[rank] = t
        answered = left & (score >= t)
        ood_answered = {r: ood_left[r] & (ood_score[r] >= t) for r in ood_probs}
        figures[rank] = {
            "threshold": t,
            "answers": int(answered.sum()),
            "right": int((answered & right).sum()),
            "ood_answers": int(sum(a.sum() for a in ood_answered.values())),
        }
        left = left & ~answered
        for r, a in ood_answered.items():
            ood_left[r] = ood_left[r] & ~a
            if r in allowed:
                allowed[r] -= int(a.sum())
    return {"taxon_thresholds": thresholds, "taxon_backoff": figures}
