"""Sections of ``MODEL_CARD.md`` rendered from a run's reports: test results, INT8, risk-coverage.

Each renderer takes the parsed JSON of one report and returns Markdown lines (none when
the run has no such report); :mod:`leafid_train.card` puts them in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leafid_train.int8_rule import INT8_RULE, Int8Decision
from leafid_train.run_folder import EvalFolder


def pct(value: Any) -> str:
    """``value`` as a percentage with two decimals ("n/a" for None)."""
    return "n/a" if value is None else f"{100 * float(value):.2f}%"


def num(value: Any, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals ("n/a" for None)."""
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def risk_coverage_section(cal: dict[str, Any]) -> list[str]:
    """The coverage rule's risk-coverage table and score comparison (none for the keep rule)."""
    if "risk_coverage" not in cal:
        return []
    roots = list(cal["ood_rejected_per_root"])
    out = [
        "Risk-coverage on val: leaf photos answered and the share of them right as the "
        "threshold rises, with the OOD photos answered *unknown*; the chosen threshold in bold.",
        "",
        "| threshold | leaf photos answered | answered right |"
        + "".join(f" {root} unknown |" for root in roots),
        "|---|---|---|" + "---|" * len(roots),
    ]
    for p in cal["risk_coverage"]:
        mark = "**" if p["threshold"] == cal["unknown_threshold"] else ""
        cells = [num(p["threshold"]), pct(p["coverage"]), pct(p["answered_right"])]
        cells += [pct(p["rejected"][root]) for root in roots]
        out.append("| " + " | ".join(f"{mark}{c}{mark}" for c in cells) + " |")
    out.append("")
    if "scores" in cal:
        out += [
            "Other scores than the max softmax, each with its own threshold under the same "
            "targets (measured on val; the model answers with the max softmax):",
            "",
            "| score | AUROC leaf vs OOD | leaf photos answered | answered right | targets met |",
            "|---|---|---|---|---|",
        ]
        for name, sc in cal["scores"].items():
            out.append(
                f"| {name} | {num(sc['auroc'])} | {pct(sc['coverage'])} | "
                f"{pct(sc['answered_right'])} | {'yes' if sc['targets_met'] else 'no'} |"
            )
        out.append("")
    return out


BACKOFF_TARGET_POINTS = 0.05
"""Issue #16's target: right at some rank >= right at species rank + 5 points (test)."""
BACKOFF_TARGET_ACCURACY = 0.95
"""Issue #16's target: genus answers right >= 95% (test)."""


def backoff_section(cal: dict[str, Any], ev: dict[str, Any] | None) -> list[str]:
    """Genus and family answers: thresholds and val figures, test figures once evaluated.

    Args:
        cal: The shipped model's calibration report (none of this without ``taxon_backoff``).
        ev: The shipped model's test metrics (with ``ranks``), or None.
    """
    if "taxon_backoff" not in cal:
        return []
    b = cal["taxon_backoff"]
    ranks = [r for r in ("genus", "family") if r in b]
    chosen = ", ".join(f"{r} {num(b[r]['threshold'])}" for r in ranks) or "none"
    out = [
        "## Backing off to genus or family",
        "",
        "When no species reaches the unknown threshold, the scores of each genus's species "
        "are summed and a genus that reaches its threshold is the answer, then a family. "
        "Thresholds (chosen on val, lowest whose answers are right as often as species "
        f"answers must be, without answering OOD photos the unknown rule turned away): {chosen}.",
        "",
        f"- Val: {b['val_images']} leaf photos, {b['species_right']} right at species rank, "
        f"{b['no_species_answer']} without a species answer; of those, "
        + "; ".join(
            f"{b[r]['answers']} answered at {r} rank ({b[r]['right']} right, "
            f"OOD photos answered so: {b[r]['ood_answers']})"
            for r in ranks
        )
        + ".",
    ]
    test = (ev or {}).get("ranks")
    if test is not None:
        gain = test["right_at_some_rank"] - test["right_at_species_rank"]
        genus_ok = test["genus"]["accuracy"]
        met = gain >= BACKOFF_TARGET_POINTS and (
            genus_ok is None or genus_ok >= BACKOFF_TARGET_ACCURACY
        )
        out.append(
            f"- Test: right at species rank {pct(test['right_at_species_rank'])}, right at "
            f"some rank {pct(test['right_at_some_rank'])} (+{100 * gain:.2f} points); "
            f"genus answers {test['genus']['answers']} ({pct(genus_ok)} right), family "
            f"answers {test['family']['answers']} ({pct(test['family']['accuracy'])} right); "
            f"no answer {test['unknown']}. Target (+5 points, genus answers >= 95% right): "
            f"{'met' if met else 'not met'}."
        )
    return [*out, ""]


def int8_section(
    report: dict[str, Any] | None,
    decision: Int8Decision | None,
    ev: dict[str, Any] | None,
    ev8: dict[str, Any] | None,
    shipped: Path | None,
) -> list[str]:
    """INT8 copy: speed and accuracy against fp32, and whether it ships (``shipped``)."""
    if report is None or decision is None:
        return []
    c = report["compare"]
    out = [
        "## INT8 quantisation",
        "",
        "Static INT8 (QDQ) copy, calibrated on train images, with its own temperature and "
        f"threshold fitted on val. Rule for shipping it as the default: {INT8_RULE}.",
        "",
        "| | size | img/s batch 1 | img/s batch 16 | val top-1 | test top-1 |",
        "|---|---|---|---|---|---|",
    ]
    test = {"fp32": ev["top1"] if ev else None, "int8": ev8["top1"] if ev8 else None}
    for name in ("fp32", "int8"):
        m = c[name]
        out.append(
            f"| {name} | {m['size_mb']:.1f} MB | {m['images_per_s_b1']:.0f} | "
            f"{m['images_per_s_b16']:.0f} | {pct(m['top1'])} | {pct(test[name])} |"
        )
    cal8 = report["calibration"]
    test_drop = decision.test_drop
    if shipped is not None:
        verdict = f"INT8 is shipped as the default (`{shipped.name}`)"
    elif decision.ships:
        verdict = "INT8 qualifies, but this export did not ship a copy; fp32 is the default"
    else:
        verdict = "INT8 is not shipped; fp32 is the default"
    out += [
        "",
        f"INT8 calibration: T = {num(cal8['temperature'])}, unknown threshold "
        f"{num(cal8['unknown_threshold'])}; val ECE {pct(cal8['ece_after'])}, OOD val "
        f"AUROC {num(cal8['ood_auroc'])}.",
        "",
        f"Decision: {verdict} (faster: {'yes' if decision.faster else 'no'}; top-1 drop on val "
        f"{100 * decision.val_drop:.2f} points"
        + (f", on test {100 * test_drop:.2f} points" if test_drop is not None else ", test not run")
        + ").",
        "",
    ]
    return out


def eval_section(ev: dict[str, Any] | None, model: str, plots: EvalFolder | None) -> list[str]:
    """Test figures of one evaluated model (``model`` names it in the heading).

    ``plots``: the evaluation whose plots are copied beside the card, to show them.
    """
    if ev is None:
        return [f"## Test results: {model}", "", "Not evaluated yet (no metrics.json).", ""]
    out = [
        f"## Test results: {model} ({ev['split']} split, through `leafid.Classifier`)",
        "",
        f"- Images: {ev['images']}; top-1 {pct(ev['top1'])}, top-5 {pct(ev['top5'])}; "
        f"ECE (15 bins) {pct(ev['ece'])}; answered unknown {pct(ev['unknown_rate'])} "
        f"(threshold {num(ev['threshold'])}).",
    ]
    if "ood" in ev:
        o = ev["ood"]
        out.append(
            f"- Non-leaf photos: {o['images']}; AUROC leaf vs non-leaf {num(o['auroc'])}; "
            f"answered unknown {pct(o['rejected'])}."
        )
    out += [
        "",
        "| dataset | images | top-1 | top-5 | answered unknown | top-1 of answered |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in ev["per_dataset"].items():
        out.append(
            f"| {name} | {d['images']} | {pct(d['top1'])} | {pct(d['top5'])} | "
            f"{pct(d['unknown_rate'])} | {pct(d['answered_top1'])} |"
        )
    out.append("")
    if "shifts" in ev:
        out += shifts_section(ev["shifts"])
    if plots is not None:
        out += [
            f"![confusion matrix]({plots.confusion.name})",
            "",
            f"![reliability diagram]({plots.reliability.name})",
            "",
        ]
    out += [
        "<details><summary>Per-class precision and recall</summary>",
        "",
        "| class | test images | precision | recall |",
        "|---|---|---|---|",
    ]
    for slug, c in ev["per_class"].items():
        out.append(f"| {slug} | {c['support']} | {pct(c['precision'])} | {pct(c['recall'])} |")
    out += ["", "</details>", ""]
    return out


def shifts_section(shifts: dict[str, Any]) -> list[str]:
    """The field-shift table of ``leafid evaluate --shifts`` (test leaves, shifted)."""
    roots = ", ".join(shifts["field_roots"]) or "none"
    out = [
        "Shifted copies of the same test photos (`leafid evaluate --shifts`, seed "
        f"{shifts['seed']}): *field* lays the leaves of {roots} on {shifts['backgrounds']} "
        "field photos of the OOD roots' held-out part (never a training background); the "
        "other shifts change every test photo. *Right*: top-1 correct and answered.",
        "",
        "| shift | images | right | answered unknown | right of answered |",
        "|---|---|---|---|---|",
    ]
    for name, r in shifts["results"].items():
        if r["images"]:
            out.append(
                f"| {name.replace('_', ' ')} | {r['images']} | {pct(r['right'])} | "
                f"{pct(r['unknown_rate'])} | {pct(r['answered_right'])} |"
            )
        else:
            out.append(f"| {name.replace('_', ' ')} | 0 | n/a | n/a | n/a |")
    return [*out, ""]


def _right(d: dict[str, Any]) -> float | None:
    """Share of a dataset's test photos answered and right (None when none was answered)."""
    if d.get("answered_top1") is None:
        return None
    return float(d["answered_top1"]) * (1.0 - float(d["unknown_rate"]))


def _change(before: Any, now: Any) -> str:
    return f"{pct(before)} -> {pct(now)}"


def comparison_section(base: dict[str, Any], ev: dict[str, Any]) -> list[str]:
    """The previous model (``base``) against this one (``ev``), on the same test photos."""
    out = [
        f"## What changed from {base['model_version']}",
        "",
        f"Model {base['model_version']} (`{Path(base['model']).name}`) and this model "
        f"(`{Path(ev['model']).name}`), each evaluated through `leafid.Classifier` with its "
        f"own threshold on this run's {ev['split']} split; each cell is before -> now. "
        "*Right*: answered and top-1 correct.",
        "",
        "| test photos | images | right | answered unknown | right of answered |",
        "|---|---|---|---|---|",
    ]
    for name, d in ev["per_dataset"].items():
        b = base["per_dataset"].get(name)
        if b is not None:
            out.append(
                f"| {name} | {d['images']} | {_change(_right(b), _right(d))} | "
                f"{_change(b['unknown_rate'], d['unknown_rate'])} | "
                f"{_change(b['answered_top1'], d['answered_top1'])} |"
            )
    shifts = ev.get("shifts", {}).get("results", {})
    base_shifts = base.get("shifts", {}).get("results", {})
    for name, r in shifts.items():
        b = base_shifts.get(name)
        if r.get("images") and b and b.get("images"):
            out.append(
                f"| {name.replace('_', ' ')} (shifted test leaves) | {r['images']} | "
                f"{_change(b['right'], r['right'])} | "
                f"{_change(b['unknown_rate'], r['unknown_rate'])} | "
                f"{_change(b['answered_right'], r['answered_right'])} |"
            )
    roots = ev.get("ood", {}).get("per_dataset", {})
    base_roots = base.get("ood", {}).get("per_dataset", {})
    shared = [root for root in roots if root in base_roots]
    if shared:
        out += ["", "| photos of none of the species | answered unknown |", "|---|---|"]
        out += [f"| {root} | {_change(base_roots[root], roots[root])} |" for root in shared]
    out += ["", f"ECE on the test leaves: {_change(base['ece'], ev['ece'])}.", ""]
    before, now = base.get("input_size"), ev.get("input_size")
    if before and now and before != now:
        out += [
            f"Input {before}x{before} -> {now}x{now} px: the network does about "
            f"{(now / before) ** 2:.2f}x the work per photo, so model-only speed drops by "
            "about that much; decoding a photo (most of the time for camera photos) does "
            "not change.",
            "",
        ]
    base_data, data = base.get("trained_on", {}), ev.get("trained_on", {})
    for name in ev["per_dataset"]:
        if name in base_data and base_data[name] != data.get(name):
            out += [
                f"{base['model_version']} trained on another copy of {name} "
                f"({base_data[name]} images; this model: {data.get(name)}), split otherwise: "
                f"some of these test photos may have been its training photos, so its {name} "
                "figures here may be optimistic.",
                "",
            ]
    return out
