from __future__ import annotations

import logging

import numpy as np
import pytest

from leafid.classifier import softmax
from leafid.spec import ClassInfo
from leafid_train.calibrate import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    SCORES,
    auroc,
    backoff_report,
    calibrate,
    calibration_report,
    compare_scores,
    ece,
    energy_score,
    fit_temperature,
    known_scores,
    nll,
    reliability,
)
from leafid_train.unknown_rule import UnknownRule, pick_coverage_threshold, pick_threshold


def overconfident(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 70%-accurate model that is ~99% sure of every answer."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    predicted = np.where(rng.random(n) < 0.7, labels, (labels + 1) % 4)
    logits = rng.normal(0, 0.5, (n, 4))
    logits[np.arange(n), predicted] += 8.0
    return logits, labels


def test_temperature_lowers_nll_on_overconfident_logits() -> None:
    logits, labels = overconfident()
    t = fit_temperature(logits, labels)
    assert t > 2.0
    assert nll(logits, labels, t) < nll(logits, labels) - 0.5
    # it is the minimum: nearby temperatures are no better
    assert nll(logits, labels, t) <= min(nll(logits, labels, t * 0.9), nll(logits, labels, t * 1.1))


def test_temperature_of_error_free_val_stops_at_the_lower_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # no mistakes: the NLL keeps falling as T -> 0, which would make every score ~1
    labels = np.arange(30) % 3
    logits = np.eye(3)[labels] * 4.0
    with caplog.at_level(logging.WARNING, logger="leafid_train.calibrate"):
        t = fit_temperature(logits, labels)
    assert t == pytest.approx(MIN_TEMPERATURE, rel=1e-3)
    assert "at the bound" in caplog.text


def test_temperature_inside_the_bounds_is_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    logits, labels = overconfident()
    with caplog.at_level(logging.WARNING, logger="leafid_train.calibrate"):
        t = fit_temperature(logits, labels)
    assert MIN_TEMPERATURE < t < MAX_TEMPERATURE
    assert caplog.text == ""


def test_ece_hand_example() -> None:
    # bins of width 1/15: 0.95 and 0.97 share bin 15, 0.55 is in bin 9, 0.30 in bin 5
    conf = np.array([0.95, 0.97, 0.55, 0.30])
    correct = np.array([True, False, True, False])
    # bin 15: acc 0.5, conf 0.96 -> 0.46 * 2/4; bin 9: |1 - 0.55| * 1/4; bin 5: 0.30 * 1/4
    want = 0.46 * 0.5 + 0.45 * 0.25 + 0.30 * 0.25
    assert ece(conf, correct) == pytest.approx(want)
    bins = reliability(conf, correct)
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4
    assert bins[14]["count"] == 2 and bins[14]["accuracy"] == 0.5


def test_ece_perfectly_calibrated_is_zero() -> None:
    conf = np.full(10, 0.8)
    correct = np.array([True] * 8 + [False] * 2)
    assert ece(conf, correct) == pytest.approx(0.0)


def test_auroc() -> None:
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auroc(np.array([0.1]), np.array([0.9])) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5
    assert auroc(np.array([0.9, 0.4]), np.array([0.5, 0.1])) == 0.75


def test_calibration_report_with_ood() -> None:
    logits, labels = overconfident()
    rng = np.random.default_rng(2)
    ood = rng.normal(0, 0.5, (100, 4))
    report = calibration_report(logits, labels, ood)
    assert report["ece_after"] < report["ece_before"]
    assert report["ood_val_images"] == 100
    assert report["ood_auroc"] > 0.9 and report["ood_rejected"] > 0.9
    assert 0 < report["unknown_threshold"] < 1


def test_calibrate_runs_the_model_on_val_and_ood_val() -> None:
    logits, labels = overconfident(200)
    images = np.arange(200).reshape(200, 1, 1, 1).astype(np.uint8)
    ood_logits = np.zeros((5, 4))
    seen: list[int] = []

    def logits_of(batch: np.ndarray) -> np.ndarray:  # a "model": images index the logits
        seen.append(len(batch))
        return ood_logits if len(batch) == 5 else logits[batch[:, 0, 0, 0]]

    ood = np.zeros((5, 1, 1, 1), dtype=np.uint8)
    keep = UnknownRule(keep_fraction=0.9)
    report = calibrate(logits_of, images, labels, ood, rule=keep)
    assert report == calibration_report(logits, labels, ood_logits, keep)
    assert seen == [200, 5] and report["ood_val_images"] == 5
    seen.clear()
    no_ood = calibrate(logits_of, images, labels, ood[:0], rule=keep)
    assert seen == [200] and no_ood == calibration_report(logits, labels, None, keep)


def test_calibration_report_chooses_genus_and_family_thresholds_with_taxonomy() -> None:
    logits, labels = overconfident()
    classes = tuple(ClassInfo(f"c{i}", f"G{i // 2} c{i}", "", f"G{i // 2}", "F") for i in range(4))
    plain = calibration_report(logits, labels, None, UnknownRule(keep_fraction=0.9))
    report = calibration_report(logits, labels, None, UnknownRule(keep_fraction=0.9), (), classes)
    assert "taxon_thresholds" not in plain
    assert report == plain | backoff_report(
        logits, labels, None, (), plain, UnknownRule(keep_fraction=0.9), classes
    )
    assert set(report["taxon_backoff"]) >= {"genus", "family", "no_species_answer"}
    assert report["taxon_backoff"]["no_species_answer"] > 0


def test_energy_and_max_logit_scores() -> None:
    logits = np.array([[0.0, 0.0], [1.0, 2.0], [1000.0, 1000.0]])
    energy = energy_score(logits)
    assert energy[0] == pytest.approx(np.log(2))
    assert energy[1] == pytest.approx(np.log(np.e + np.e**2))
    assert energy[2] == pytest.approx(1000 + np.log(2))  # no overflow
    assert energy_score(logits[1:2], 2.0)[0] == pytest.approx(2 * np.log(np.e**0.5 + np.e))
    scores = known_scores(logits, temperature=2.0)
    assert list(scores) == list(SCORES)
    np.testing.assert_allclose(scores["max_logit"], [0.0, 2.0, 1000.0])
    np.testing.assert_allclose(scores["energy"], energy)  # at T = 1 whatever the calibration's
    np.testing.assert_allclose(scores["max_softmax"], softmax(logits, 2.0).max(axis=1))


def test_compare_scores_reports_each_scores_auroc_on_val() -> None:
    logits, labels = overconfident(300)
    rng = np.random.default_rng(3)
    # flat but large logits: a low max softmax, a high max logit
    flat = 9.0 + rng.normal(0, 0.1, (40, 4))
    quiet = rng.normal(0, 0.5, (20, 4))
    ood = np.concatenate([flat, quiet])
    roots = ["flat"] * 40 + ["quiet"] * 20
    rule = UnknownRule("coverage", answered_right=0.6, reject={"flat": 0.9})
    got = compare_scores(logits, labels, ood, roots, 1.5, rule)
    assert list(got) == list(SCORES)
    leaf, other = known_scores(logits, 1.5), known_scores(ood, 1.5)
    for name in SCORES:
        assert got[name]["auroc"] == auroc(leaf[name], other[name])
        assert got[name]["auroc_per_root"]["flat"] == auroc(leaf[name], other[name][:40])
    assert got["max_softmax"]["auroc_per_root"]["flat"] > 0.95
    assert got["max_logit"]["auroc_per_root"]["flat"] < 0.05
    # each score's own threshold under the same rule: max logit must reject nearly all
    assert got["max_softmax"]["targets_met"] and got["max_softmax"]["rejected"]["flat"] >= 0.9
    assert got["max_softmax"]["coverage"] > 0.5 > got["max_logit"]["coverage"]


def test_coverage_rule_report() -> None:
    logits, labels = overconfident(400)
    rng = np.random.default_rng(4)
    ood = rng.normal(0, 0.5, (60, 4))
    roots = ["nonleaf"] * 30 + ["plants"] * 30
    rule = UnknownRule("coverage", answered_right=0.7, reject={"nonleaf": 0.9, "plants": 0.8})
    report = calibration_report(logits, labels, ood, rule, roots)
    t = report["temperature"]
    best, other = softmax(logits, t).max(axis=1), softmax(ood, t).max(axis=1)
    correct = softmax(logits, t).argmax(axis=1) == labels
    point, _ = pick_coverage_threshold(
        best, correct, {"nonleaf": other[:30], "plants": other[30:]}, rule
    )
    assert report["unknown_threshold"] == point["threshold"]
    assert report["val_unknown_rate"] == pytest.approx(1 - point["coverage"])
    assert report["val_answered_right"] == point["answered_right"] >= 0.7
    assert report["ood_rejected_per_root"] == point["rejected"]
    assert report["targets_met"] is True and report["fallback"] is None
    assert report["unknown_rule"] == {
        "name": "coverage",
        "answered_right": 0.7,
        "reject": {"nonleaf": 0.9, "plants": 0.8},
    }
    assert any(p["threshold"] == point["threshold"] for p in report["risk_coverage"])
    assert list(report["scores"]) == list(SCORES)
    assert report["scores"]["max_softmax"]["threshold"] == point["threshold"]


def test_keep_rule_report_has_only_the_old_keys() -> None:
    logits, labels = overconfident()
    ood = np.random.default_rng(2).normal(0, 0.5, (100, 4))
    report = calibration_report(logits, labels, ood, UnknownRule(keep_fraction=0.9))
    assert list(report) == [
        "temperature",
        "unknown_threshold",
        "val_images",
        "val_top1",
        "nll_before",
        "nll_after",
        "ece_before",
        "ece_after",
        "val_unknown_rate",
        "ood_val_images",
        "ood_auroc",
        "ood_rejected",
    ]
    probs = softmax(logits, report["temperature"])
    correct = probs.argmax(axis=1) == labels
    assert report["unknown_threshold"] == pick_threshold(probs.max(axis=1)[correct], 0.9)
