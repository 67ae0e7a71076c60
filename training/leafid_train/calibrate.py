"""Temperature scaling, calibration error, AUROC and the calibration report (numpy only).

Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks")
divides the logits by one scalar ``T`` fitted to minimise the NLL on validation logits.
The Classifier answers *unknown* when the best calibrated score (the max softmax) is
under the unknown threshold, chosen by the run's :class:`UnknownRule`
(:mod:`leafid_train.unknown_rule`); other scores of how sure the model is that a photo
shows one of its classes (:data:`SCORES`) are measured beside it, on val.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from leafid.classifier import softmax
from leafid.spec import ClassInfo
from leafid_train.taxon_rule import pick_taxon_thresholds
from leafid_train.unknown_rule import (
    UnknownRule,
    pick_coverage_threshold,
    pick_threshold,
    risk_coverage_curve,
)

log = logging.getLogger(__name__)

ECE_BINS = 15
# Temperatures below 1 sharpen the scores. When val holds no mistakes, the NLL keeps
# falling as T -> 0 and every score goes to ~1, which leaves the unknown threshold
# nothing to separate; so T is kept in [0.5, 10]: at most 2x sharper or 10x softer.
MIN_TEMPERATURE = 0.5
MAX_TEMPERATURE = 10.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)``."""
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    low: float = MIN_TEMPERATURE,
    high: float = MAX_TEMPERATURE,
) -> float:
    """The temperature in ``[low, high]`` minimising validation NLL (golden-section on log T).

    NLL is convex in ``1/T``, so a 1-D search over ``log T`` finds the optimum. A result
    at a bound is logged as a warning: the val set (often too small or error-free)
    did not pin T down.
    """
    if len(labels) == 0:
        return 1.0
    a, b = math.log(low), math.log(high)
    golden = (math.sqrt(5) - 1) / 2
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = nll(logits, labels, math.exp(d))
    t = float(math.exp((a + b) / 2))
    if min(abs(math.log(t / low)), abs(math.log(t / high))) < 1e-3:
        log.warning(
            "temperature %.3g is at the bound of [%g, %g] on %d val images: the val set "
            "does not pin it down (too few images or no mistakes)",
            t,
            low,
            high,
            len(labels),
        )
    return t


def reliability(
    confidences: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """Equal-width confidence bins: count, mean confidence and accuracy of each.

    Bin ``i`` holds confidences in ``(i/n, (i+1)/n]`` (the first bin also holds 0).
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.ceil(confidences * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        mask = index == i
        count = int(mask.sum())
        bins.append(
            {
                "low": float(edges[i]),
                "high": float(edges[i + 1]),
                "count": count,
                "confidence": float(confidences[mask].mean()) if count else 0.0,
                "accuracy": float(correct[mask].mean()) if count else 0.0,
            }
        )
    return bins


def ece(confidences: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: bin-weighted mean ``|accuracy - confidence|``."""
    n = len(confidences)
    if n == 0:
        return 0.0
    return float(
        sum(
            b["count"] / n * abs(b["accuracy"] - b["confidence"])
            for b in reliability(confidences, correct, n_bins)
        )
    )


def ece_of_logits(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """ECE of the top-1 answers of ``softmax(logits / temperature)``."""
    probs = softmax(logits, temperature)
    return ece(probs.max(axis=1), probs.argmax(axis=1) == labels)


SCORES = ("max_softmax", "max_logit", "energy")
"""Scores of how sure the model is that a photo shows one of its classes (higher: surer)."""


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(logits / T)`` of each row (Liu et al., 2020)."""
    z = logits.astype(np.float64) / temperature
    top = z.max(axis=1)
    return np.asarray(temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1))))


def known_scores(logits: np.ndarray, temperature: float) -> dict[str, np.ndarray]:
    """Each of :data:`SCORES` for each row of ``logits``.

    ``max_softmax`` is the Classifier's score (softmax at the calibration ``temperature``);
    ``max_logit`` the largest raw logit; ``energy`` the :func:`energy_score` at T = 1, as
    Liu et al. use it.
    """
    return {
        "max_softmax": softmax(logits, temperature).max(axis=1),
        "max_logit": logits.astype(np.float64).max(axis=1),
        "energy": energy_score(logits),
    }


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half."""
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    start = 0
    while start < len(scores):
        stop = start
        while stop + 1 < len(scores) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    rank_sum = ranks[: len(pos)].sum()
    return float((rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _by_root(scores: np.ndarray, roots: Sequence[str]) -> dict[str, np.ndarray]:
    """OOD scores grouped by the root of each photo (all under ``ood`` without names)."""
    if not roots:
        return {"ood": scores}
    names = np.asarray(roots)
    return {root: scores[names == root] for root in dict.fromkeys(roots)}


def compare_scores(
    logits: np.ndarray,
    labels: np.ndarray,
    ood_logits: np.ndarray,
    ood_roots: Sequence[str],
    temperature: float,
    rule: UnknownRule,
) -> dict[str, dict[str, Any]]:
    """Each of :data:`SCORES` on val: how well it tells leaves from OOD photos.

    Args:
        logits: Val leaf logits (N, C).
        labels: Their class indices.
        ood_logits: Val OOD logits (M, C).
        ood_roots: The OOD root of each of them (may be empty).
        temperature: The calibration temperature (for ``max_softmax``).
        rule: The coverage rule whose operating point is reported for each score.

    Returns:
        Per score: ``auroc`` (leaf vs all OOD), ``auroc_per_root`` and the
        :func:`pick_coverage_threshold` point of that score (``threshold``, ``coverage``,
        ``answered_right``, ``rejected``, ``targets_met``).
    """
    correct = logits.argmax(axis=1) == labels
    leaf, ood = known_scores(logits, temperature), known_scores(ood_logits, temperature)
    out = {}
    for name in SCORES:
        per_root = _by_root(ood[name], ood_roots)
        point, unmet = pick_coverage_threshold(leaf[name], correct, per_root, rule)
        out[name] = {
            "auroc": auroc(leaf[name], ood[name]),
            "auroc_per_root": {root: auroc(leaf[name], s) for root, s in per_root.items()},
            **point,
            "targets_met": unmet is None,
        }
    return out


def backoff_report(
    logits: np.ndarray,
    labels: np.ndarray,
    ood_logits: np.ndarray | None,
    ood_roots: Sequence[str],
    calibration: dict[str, Any],
    rule: UnknownRule,
    classes: Sequence[ClassInfo],
) -> dict[str, Any]:
    """Genus and family thresholds for a calibrated model (:mod:`leafid_train.taxon_rule`).

    Args:
        logits: Val leaf logits.
        labels: Their class indices.
        ood_logits: Val OOD logits, if any.
        ood_roots: The OOD root of each of them.
        calibration: The model's temperature and unknown threshold (a calibration report).
        rule: Gives the answered-right and rejection targets.
        classes: The model's classes.

    Returns:
        ``taxon_thresholds`` and ``taxon_backoff``; empty when no class has a genus or family.
    """
    if not any(c.genus or c.family for c in classes):
        return {}
    t = calibration["temperature"]
    ood = softmax(ood_logits, t) if ood_logits is not None and len(ood_logits) else None
    return pick_taxon_thresholds(
        softmax(logits, t),
        labels,
        classes,
        calibration["unknown_threshold"],
        rule.answered_right,
        _by_root(ood, ood_roots) if ood is not None else {},
        rule.reject,
    )


def calibration_report(
    logits: np.ndarray,
    labels: np.ndarray,
    ood_logits: np.ndarray | None = None,
    rule: UnknownRule | None = None,
    ood_roots: Sequence[str] = (),
    classes: Sequence[ClassInfo] = (),
) -> dict[str, Any]:
    """Fit T and the unknown threshold on validation logits and report the figures.

    Args:
        logits: Validation logits (N, C).
        labels: True class indices (N,).
        ood_logits: Logits of out-of-distribution validation photos, if any.
        rule: How the threshold is chosen; default: the keep rule at 0.95.
        ood_roots: The OOD root of each row of ``ood_logits`` (the coverage rule's
            rejection targets are per root).
        classes: The model's classes: with genus or family, the report has the
            :func:`backoff_report` too.

    Returns:
        temperature, unknown_threshold, nll/ece before and after, val accuracy and,
        with OOD logits, the AUROC of leaf vs non-leaf and the OOD rejection rate.
        The coverage rule adds its targets (``unknown_rule``), whether the threshold
        meets them (``targets_met``, ``fallback``), the val answered-right share, the
        rejection per OOD root, the :func:`risk_coverage_curve` and the
        :func:`compare_scores` of the other scores.
    """
    rule = rule or UnknownRule()
    t = fit_temperature(logits, labels)
    probs = softmax(logits, t)
    best = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    ood_best = softmax(ood_logits, t).max(axis=1) if ood_logits is not None else np.zeros(0)
    unmet = None
    if rule.name == "coverage":
        ood_by_root = _by_root(ood_best, ood_roots) if len(ood_best) else {}
        point, unmet = pick_coverage_threshold(best, correct, ood_by_root, rule)
        threshold = float(np.clip(point["threshold"], 0.0, 1.0))
    else:
        threshold = pick_threshold(best[correct], rule.keep_fraction)
    report: dict[str, Any] = {
        "temperature": t,
        "unknown_threshold": threshold,
        "val_images": int(len(labels)),
        "val_top1": float(correct.mean()) if len(labels) else 0.0,
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, t),
        "ece_before": ece_of_logits(logits, labels),
        "ece_after": ece_of_logits(logits, labels, t),
        "val_unknown_rate": float((best < threshold).mean()) if len(labels) else 0.0,
        "ood_val_images": 0,
        "ood_auroc": None,
        "ood_rejected": None,
    }
    if len(ood_best):
        report["ood_val_images"] = int(len(ood_best))
        report["ood_auroc"] = auroc(best, ood_best)
        report["ood_rejected"] = float((ood_best < threshold).mean())
    if rule.name == "coverage":
        report.update(
            unknown_rule=rule.to_dict(),
            val_answered_right=point["answered_right"],
            ood_rejected_per_root=point["rejected"],
            targets_met=unmet is None,
            fallback=unmet,
            risk_coverage=risk_coverage_curve(best, correct, ood_by_root, threshold),
        )
        if len(ood_best):
            report["scores"] = compare_scores(logits, labels, ood_logits, ood_roots, t, rule)
    report.update(backoff_report(logits, labels, ood_logits, ood_roots, report, rule, classes))
    return report


def calibrate(
    logits_of: Callable[[np.ndarray], np.ndarray],
    val: np.ndarray,
    labels: np.ndarray,
    ood_val: np.ndarray,
    *,
    rule: UnknownRule,
    ood_roots: Sequence[str] = (),
    classes: Sequence[ClassInfo] = (),
) -> dict[str, Any]:
    """Calibrate a model on a run's val (+ OOD val) images: the one entry point.

    Both the run's fp32 model (torch) and its INT8 copy (onnxruntime) are calibrated
    here, on the same images, so their reports compare.

    Args:
        logits_of: The model's raw logits of a uint8 NHWC batch.
        val: The run's preprocessed val images.
        labels: Their class indices.
        ood_val: The run's preprocessed OOD val images (may be empty).
        rule: How the unknown threshold is chosen.
        ood_roots: The OOD root of each OOD val image.
        classes: The model's classes (genus and family thresholds when they have them).

    Returns:
        The :func:`calibration_report`.
    """
    logits = logits_of(val)
    ood = logits_of(ood_val) if len(ood_val) else None
    return calibration_report(logits, labels, ood, rule, ood_roots, classes)
