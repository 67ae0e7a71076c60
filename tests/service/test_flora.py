from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_COLOURS, make_tiny_model, noisy, solid, tiny_spec, tiny_taxonomy_spec
from leafid.classifier import Classifier
from leafid.errors import InvalidRequestError, UnknownNameError
from leafid.flora import flora_of_names, read_only, resolve_flora, split_names


def test_restrict_renormalises_over_the_allowed_classes():
    flora = resolve_flora(tiny_spec(), ["rubra", "caerulea"])
    assert flora.slugs == ("rubra", "caerulea")  # model order
    got = flora.restrict(np.array([[0.2, 0.6, 0.2], [0.0, 1.0, 0.0]]))
    np.testing.assert_allclose(got, [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]])


def test_genera_allow_all_their_classes_whatever_the_case():
    spec = tiny_taxonomy_spec()
    assert resolve_flora(spec, genera=["planta"]).slugs == ("rubra", "viridis")
    assert resolve_flora(spec, ["caerulea"], ["Planta"]).slugs == ("rubra", "viridis", "caerulea")
    assert resolve_flora(spec) is None


def test_a_mixed_list_takes_slugs_first_then_genera():
    spec = tiny_taxonomy_spec()
    assert flora_of_names(spec, ["Caerula", "rubra"]).slugs == ("rubra", "caerulea")


@pytest.mark.parametrize(
    ("spec", "species", "genera", "match"),
    [
        (tiny_spec(), ["rubra", "alba"], [], "alba"),
        (tiny_spec(), [], ["Planta"], "no genus names"),
        (tiny_taxonomy_spec(), [], ["Quercus"], "Quercus"),
    ],
)
def test_unknown_names_are_a_typed_usage_error(spec, species, genera, match):
    with pytest.raises(UnknownNameError, match=match) as info:
        resolve_flora(spec, species, genera)
    assert isinstance(info.value, InvalidRequestError) and info.value.http_status == 422


def test_only_reads_a_list_or_a_file(tmp_path: Path):
    assert read_only(" rubra, Planta ,") == ["rubra", "Planta"]
    listed = tmp_path / "flora.txt"
    listed.write_text("# our flora\nrubra\n\nCaerula  # a genus\n")
    assert read_only(str(listed)) == ["rubra", "Caerula"]
    assert split_names(["a,b", "c"]) == ["a", "b", "c"]
    with pytest.raises(UnknownNameError):
        read_only(" , ")


def test_filtered_classifier_answers_among_its_flora_only(tiny_model: Path):
    clf = Classifier(tiny_model)
    only = clf.with_flora(resolve_flora(clf.spec, ["viridis", "caerulea"]))
    (red,) = only.classify([noisy(TINY_COLOURS["rubra"])], top_k=5)
    assert [c.slug for c in red.results] == ["viridis", "caerulea"] and red.unknown
    assert red.flora == ("viridis", "caerulea") and red.to_dict()["flora"] == [
        "viridis",
        "caerulea",
    ]
    (grey,) = only.classify([solid((128, 128, 128))], top_k=5)
    assert [c.slug for c in grey.results] == ["viridis", "caerulea"]
    assert sum(c.score for c in grey.results) == pytest.approx(1.0)  # renormalised
    assert grey.results[0].score == pytest.approx(0.5)
    assert not grey.unknown  # 0.5 over two classes reaches the 0.5 threshold
    assert clf.flora is None and clf.classify([solid((128, 128, 128))])[0].unknown
    assert clf.classify([noisy(TINY_COLOURS["rubra"])])[0].flora is None


def test_flora_applies_before_the_back_off(tmp_path: Path):

    clf = Classifier(
        make_tiny_model(tmp_path / "m.onnx", tiny_taxonomy_spec(unknown_threshold=0.9))
    )
    only = clf.with_flora(resolve_flora(clf.spec, ["rubra", "viridis"]))
    (yellow,) = only.classify([solid((200, 200, 20))])
    # red and green alike: no species reaches 0.9, the two (their genus) together do
    assert yellow.rank == "genus" and yellow.best_match == "Planta"
    assert [c.slug for c in yellow.taxon.hesitates_between] == ["rubra", "viridis"]


def test_a_photo_unlike_every_allowed_class_stays_unknown(tiny_model: Path):
    clf = Classifier(tiny_model)
    only = clf.with_flora(resolve_flora(clf.spec, ["viridis"]))
    (red,) = only.classify([noisy(TINY_COLOURS["rubra"])])
    # renormalised over one class, viridis would score 1.0 on a red photo; it keeps its own
    assert [c.slug for c in red.results] == ["viridis"] and red.results[0].score < 0.5
    assert red.unknown and red.taxon is None
    assert "does not look like any of them" in red.reason
    (green,) = only.classify([noisy(TINY_COLOURS["viridis"])])
    assert not green.unknown and green.best_match == "viridis"
