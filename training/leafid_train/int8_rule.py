"""When a run's INT8 copy ships as the default model: the rule, stated once.

A plain function of figures already loaded: the fp32-vs-INT8 comparison on val
(:func:`leafid_train.quantize.compare`) and, once both models were evaluated, their
test metrics (``leafid evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Largest accepted top-1 loss of the INT8 copy (half a point), on val and on test.
MAX_INT8_TOP1_DROP = 0.005
_ROUNDING = 1e-9  # a drop of exactly half a point computed in floats still passes

#: The rule in words (saved in ``int8_report.json`` and quoted by the model card).
INT8_RULE = (
    f"faster at batch 1 and 16, top-1 drop <= {100 * MAX_INT8_TOP1_DROP:g} points on val "
    "and, once both models were evaluated, on test"
)


@dataclass(frozen=True)
class Int8Decision:
    """Whether the INT8 copy ships, and the figures that decided it."""

    ships: bool
    faster: bool
    val_drop: float
    test_drop: float | None  # None until both models were evaluated on test


def faster(compare: dict[str, Any]) -> bool:
    """Whether the INT8 model of a comparison is faster at batch 1 and 16."""
    fp32, int8 = compare["fp32"], compare["int8"]
    return all(int8[k] > fp32[k] for k in ("images_per_s_b1", "images_per_s_b16"))


def _within(drop: float) -> bool:
    return drop <= MAX_INT8_TOP1_DROP + _ROUNDING


def int8_worth_shipping(compare: dict[str, Any]) -> bool:
    """The rule on val alone (a comparison's figures).

    Without labels in the comparison, the top-1 drop is bounded by the disagreement
    ``1 - top1_agreement``.
    """
    fp32, int8 = compare["fp32"], compare["int8"]
    if "top1" in fp32 and "top1" in int8:
        drop = fp32["top1"] - int8["top1"]
    else:
        drop = 1.0 - compare["top1_agreement"]
    return faster(compare) and _within(drop)


def int8_decision(
    compare: dict[str, Any],
    fp32_test: dict[str, Any] | None = None,
    int8_test: dict[str, Any] | None = None,
) -> Int8Decision:
    """Apply :data:`INT8_RULE`.

    Args:
        compare: The fp32-vs-INT8 comparison on val (with top-1 figures).
        fp32_test: The fp32 model's test metrics, once evaluated.
        int8_test: The INT8 copy's test metrics, once evaluated.
    """
    test_drop = fp32_test["top1"] - int8_test["top1"] if fp32_test and int8_test else None
    return Int8Decision(
        ships=int8_worth_shipping(compare) and (test_drop is None or _within(test_drop)),
        faster=faster(compare),
        val_drop=compare["fp32"]["top1"] - compare["int8"]["top1"],
        test_drop=test_drop,
    )
