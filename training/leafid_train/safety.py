"""The safety report: a new model's val figures beside those of the model it replaces.

After ``leafid train`` (beside the shipped model) and ``leafid add-species`` (beside its
base), both models answer the same val photos, each with its own temperature and unknown
threshold: the share of each OOD root's photos answered unknown (non-leaf and
unlisted-plant rejection), the AUROC of leaf vs OOD scores, the ECE and each dataset's
top-1. A figure worse by more than :data:`MAX_WORSE` is a warning, and with ``--strict``
a :class:`SafetyError`. numpy only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from leafid.errors import LeafidError
from leafid_train.calibrate import auroc, ece
from leafid_train.card_sections import num

log = logging.getLogger(__name__)

MAX_WORSE = 0.02
"""A figure may be this much worse (2 points) than the base model's without a warning."""
_ROUNDING = 1e-9


class SafetyError(LeafidError):
    """``--strict``: the new model is worse than the model it replaces on a safety figure."""

    code = "safety_check_failed"
    http_status = 422


def val_figures(
    model: str,
    probs: np.ndarray,
    classes: Sequence[str],
    truth: Sequence[str],
    datasets: Sequence[str],
    ood_probs: np.ndarray,
    ood_roots: Sequence[str],
    threshold: float,
) -> dict[str, Any]:
    """One model's safety figures on val photos.

    Args:
        model: The model's name for the table (its version).
        probs: Its calibrated probabilities of the val leaf photos (N, K).
        classes: Its class slugs, in output order.
        truth: The true slug of each photo.
        datasets: The dataset (root) of each photo.
        ood_probs: Its calibrated probabilities of the val OOD photos (M, K).
        ood_roots: The OOD root of each of them.
        threshold: Its unknown threshold.

    Returns:
        ``model``, ``rejected`` ({OOD root: share answered unknown}), ``auroc`` (leaf vs
        OOD best score; None without OOD photos), ``ece`` and ``top1`` ({dataset: share};
        a dataset with a class the model does not have is left out).
    """
    guess = np.asarray(classes)[probs.argmax(axis=1)] if len(probs) else np.array([])
    correct = guess == np.asarray(truth)
    best = probs.max(axis=1) if len(probs) else np.zeros(0)
    ood_best = ood_probs.max(axis=1) if len(ood_probs) else np.zeros(0)
    known = set(classes)
    names, roots = np.asarray(datasets), np.asarray(ood_roots)
    top1 = {}
    for name in sorted(set(datasets)):
        rows = names == name
        if {t for t, r in zip(truth, rows, strict=True) if r} <= known:
            top1[name] = float(correct[rows].mean())
    return {
        "model": model,
        "rejected": {
            root: float((ood_best[roots == root] < threshold).mean())
            for root in sorted(set(ood_roots))
        },
        "auroc": auroc(best, ood_best) if len(ood_best) else None,
        "ece": ece(best, correct),
        "top1": top1,
    }


def _rows(base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Figure by figure: name, both values, and how much worse the new one is."""
    pairs: list[tuple[str, float | None, float | None, int]] = [
        (f"{root} rejected", base["rejected"].get(root), value, 1)
        for root, value in new["rejected"].items()
    ]
    pairs.append(("AUROC leaf vs OOD", base["auroc"], new["auroc"], 1))
    pairs.append(("ECE", base["ece"], new["ece"], -1))
    pairs += [(f"{name} top-1", base["top1"].get(name), v, 1) for name, v in new["top1"].items()]
    rows = []
    for name, old, value, better in pairs:
        worse = None if old is None or value is None else better * (old - value)
        rows.append(
            {
                "figure": name,
                "base": old,
                "new": value,
                "worse_by": worse,
                "warn": worse is not None and worse > MAX_WORSE + _ROUNDING,
            }
        )
    return rows


def compare(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The safety report of ``new`` against ``base`` (both :func:`val_figures`).

    Returns:
        ``base``, ``new``, ``max_worse``, ``rows`` (figure, base, new, worse_by, warn)
        and ``warnings`` (one sentence per figure worse by more than :data:`MAX_WORSE`).
    """
    rows = _rows(base, new)
    warnings = [
        f"{r['figure']} is {100 * r['worse_by']:.1f} points worse than {base['model']}'s "
        f"({num(r['base'])} -> {num(r['new'])})"
        for r in rows
        if r["warn"]
    ]
    return {"base": base, "new": new, "max_worse": MAX_WORSE, "rows": rows, "warnings": warnings}


def table(report: dict[str, Any]) -> str:
    """The report as a short plain-text table (one line per figure)."""
    base, new = report["base"]["model"], report["new"]["model"]
    width = max([len("figure"), *(len(r["figure"]) for r in report["rows"])])
    lines = [f"{'figure':<{width}}  {base:>12}  {new:>12}  change"]
    for r in report["rows"]:
        change = "" if r["worse_by"] is None else f"{100 * (r['new'] - r['base']):+.1f} pt"
        flag = "  WORSE" if r["warn"] else ""
        lines.append(
            f"{r['figure']:<{width}}  {num(r['base']):>12}  {num(r['new']):>12}  {change}{flag}"
        )
    return "\n".join(lines)


def check(report: dict[str, Any], *, strict: bool) -> None:
    """Warn about each figure that got worse, or raise with ``strict``.

    Raises:
        SafetyError: ``strict`` and a figure is worse by more than :data:`MAX_WORSE`.
    """
    if strict and report["warnings"]:
        raise SafetyError(
            "the new model is less safe than the one it replaces (--strict): "
            + "; ".join(report["warnings"])
        )
    for warning in report["warnings"]:
        log.warning("safety: %s", warning)
