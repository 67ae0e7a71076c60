from __future__ import annotations

import logging

import numpy as np
import pytest

from leafid_train.calibrate import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    auroc,
    calibrate,
    calibration_report,
    ece,
    fit_temperature,
    nll,
    pick_threshold,
    reliability,
)


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
    report = calibrate(logits_of, images, labels, ood, keep=0.9)
    assert report == calibration_report(logits, labels, ood_logits, keep=0.9)
    assert seen == [200, 5] and report["ood_val_images"] == 5
    seen.clear()
    no_ood = calibrate(logits_of, images, labels, ood[:0], keep=0.9)
    assert seen == [200] and no_ood == calibration_report(logits, labels, None, keep=0.9)
