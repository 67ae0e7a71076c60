import numpy as np
import pytest

from conftest import tiny_spec, tiny_taxonomy_spec
from leafid_train.taxon_rule import pick_taxon_thresholds

CLASSES = tiny_taxonomy_spec().classes  # rubra, viridis: genus Planta; caerulea: Caerula


def _val() -> tuple[np.ndarray, np.ndarray]:
    """Sure species, photos torn between rubra and viridis, and photos unsure of all three."""
    sure = [[0.9, 0.05, 0.05]] * 10
    torn = [[0.45, 0.45, 0.1]] * 6 + [[0.5, 0.4, 0.1]] * 2  # Planta 0.9
    spread = [[0.36, 0.32, 0.32]] * 3  # Planta 0.68, true class caerulea
    probs = np.array(sure + torn + spread)
    labels = np.array([0] * 10 + [1] * 6 + [0] * 2 + [2] * 3)
    return probs, labels


def test_genus_threshold_answers_the_torn_photos_and_is_right_enough():
    probs, labels = _val()
    got = pick_taxon_thresholds(probs, labels, CLASSES, 0.6, 0.98)
    assert got["taxon_thresholds"]["genus"] == pytest.approx(0.9)  # 0.68 would be wrong
    b = got["taxon_backoff"]
    assert (b["val_images"], b["species_right"], b["no_species_answer"]) == (21, 10, 11)
    assert b["genus"] == {
        "threshold": pytest.approx(0.9),
        "answers": 8,
        "right": 8,
        "ood_answers": 0,
    }
    # the three spread photos are right at family rank (all one family)
    assert b["family"]["answers"] == 3 and b["family"]["right"] == 3


def test_a_looser_requirement_answers_more_at_genus_rank():
    probs, labels = _val()
    got = pick_taxon_thresholds(probs, labels, CLASSES, 0.6, 0.7)
    assert got["taxon_thresholds"]["genus"] == pytest.approx(0.68)
    assert got["taxon_backoff"]["genus"]["answers"] == 11


def test_backing_off_keeps_ood_rejection_at_its_target():
    probs, labels = _val()
    ood = {"nonleaf": np.array([[0.34, 0.33, 0.33]] * 4 + [[0.1, 0.1, 0.8]])}
    got = pick_taxon_thresholds(probs, labels, CLASSES, 0.6, 0.98, ood, {"nonleaf": 0.8})
    # 4 of 5 OOD photos are unanswered at species rank: none of them may be answered now
    assert got["taxon_backoff"]["genus"]["ood_answers"] == 0
    assert "family" not in got["taxon_thresholds"]  # Plantaceae = 1.0 for every OOD photo
    assert got["taxon_backoff"]["family"]["threshold"] is None
    free = pick_taxon_thresholds(probs, labels, CLASSES, 0.6, 0.98, ood, {})
    assert free["taxon_backoff"]["family"]["ood_answers"] == 4


def test_no_taxonomy_no_thresholds():
    probs, labels = _val()
    got = pick_taxon_thresholds(probs, labels, tiny_spec().classes, 0.6, 0.98)
    assert got["taxon_thresholds"] == {}
    assert "genus" not in got["taxon_backoff"]
