import numpy as np
import pytest

from conftest import (
    TINY_COLOURS,
    make_tiny_model,
    noisy,
    solid,
    tiny_spec,
    tiny_taxonomy_spec,
)
from leafid.classifier import Classifier
from leafid.taxonomy import Taxa, back_off


def test_taxa_group_classes_and_sum_their_scores():
    classes = tiny_taxonomy_spec().classes
    genus = Taxa.of(classes, "genus")
    assert genus.names == ("Planta", "Caerula")
    assert genus.members.tolist() == [0, 0, 1]
    np.testing.assert_allclose(genus.sums(np.array([[0.2, 0.3, 0.5]])), [[0.5, 0.5]])
    assert Taxa.of(tiny_spec().classes, "family").names == ()


@pytest.mark.parametrize(
    ("row", "thresholds", "want"),
    [
        ([0.4, 0.35, 0.25], {"genus": 0.7, "family": 0.9}, ("genus", "Planta", 0.75, (0, 1))),
        ([0.2, 0.3, 0.5], {"genus": 0.7, "family": 0.9}, ("family", "Plantaceae", 1.0, (2, 1, 0))),
        ([0.2, 0.3, 0.5], {"genus": 0.7}, None),
        ([0.4, 0.35, 0.25], {"family": 0.9}, ("family", "Plantaceae", 1.0, (0, 1, 2))),
    ],
)
def test_back_off_names_the_most_specific_sure_taxon(row, thresholds, want):
    classes = tiny_taxonomy_spec().classes
    taxa = [Taxa.of(classes, "genus"), Taxa.of(classes, "family")]
    found = back_off(np.array(row), taxa, thresholds)
    if want is None:
        assert found is None
    else:
        assert (found.rank, found.name, found.members) == (want[0], want[1], want[3])
        assert found.score == pytest.approx(want[2])


@pytest.fixture(scope="module")
def taxa_clf(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    path = tmp_path_factory.mktemp("taxa") / "taxa.onnx"
    return Classifier(make_tiny_model(path, tiny_taxonomy_spec()))


def test_unsure_species_backs_off_to_genus_with_its_hesitation(taxa_clf: Classifier):
    # equal scores: no species reaches 0.5; the genus Planta has 2/3 >= 0.6
    (answer,) = taxa_clf.classify([solid((128, 128, 128))])
    assert not answer.unknown and answer.rank == "genus" and answer.best_match == "Planta"
    assert answer.match_score == pytest.approx(2 / 3, abs=1e-3)
    row = answer.to_dict()
    assert row["rank"] == "genus" and row["best_match"] == "Planta"
    assert {c["slug"] for c in row["hesitates_between"]} == {"rubra", "viridis"}
    assert row["reason"] is None and row["reason_code"] is None


def test_family_when_the_genus_is_not_sure_enough(tmp_path):
    spec = tiny_taxonomy_spec(taxon_thresholds={"genus": 0.7, "family": 0.9})
    clf = Classifier(make_tiny_model(tmp_path / "m.onnx", spec))
    (answer,) = clf.classify([solid((128, 128, 128))])
    assert answer.rank == "family" and answer.best_match == "Plantaceae"
    assert len(answer.to_dict()["hesitates_between"]) == 3


def test_sure_species_is_answered_at_species_rank(taxa_clf: Classifier):
    (answer,) = taxa_clf.classify([noisy(TINY_COLOURS["caerulea"])])
    assert answer.rank == "species" and answer.best_match == "caerulea"
    row = answer.to_dict()
    assert row["hesitates_between"] is None and row["match_score"] == row["results"][0]["score"]


def test_model_without_taxonomy_answers_species_or_unknown(tiny_model):
    clf = Classifier(tiny_model)
    grey, red = clf.classify([solid((128, 128, 128)), noisy(TINY_COLOURS["rubra"])])
    assert grey.unknown and grey.rank is None and grey.to_dict()["best_match"] is None
    assert red.rank == "species" and red.best_match == "rubra"


def test_genus_answers_do_not_count_as_photos_that_disagree(taxa_clf: Classifier):
    loaded = [taxa_clf.prepare(solid((128, 128, 128))), taxa_clf.prepare(noisy((220, 30, 30)))]
    identified = taxa_clf.identify_loaded(loaded, ["grey.png", "red.jpg"])
    assert identified.images[0].rank == "genus"
    assert identified.disagreement == ()
