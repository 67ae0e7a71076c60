import json

import pytest

from conftest import TINY_CLASSES, tiny_spec, tiny_taxonomy_spec
from leafid.errors import InvalidModelError
from leafid.results import Candidate
from leafid.spec import ClassInfo, ModelSpec, display_name


def test_json_round_trip_keeps_every_field():
    spec = tiny_spec(
        temperature=1.7,
        unknown_threshold=0.42,
        metrics={"top1": 0.9},
        training_data={"datasets": ["a"]},
    )
    back = ModelSpec.from_json(spec.to_json())
    assert back == spec
    assert back.metrics == {"top1": 0.9}
    assert back.training_data == {"datasets": ["a"]}
    assert back.labels == ["rubra", "viridis", "caerulea"]


@pytest.mark.parametrize(
    "changes",
    [
        {"classes": ()},
        {"classes": (TINY_CLASSES[0], TINY_CLASSES[0])},
        {"input_size": 300},
        {"interpolation": "magic"},
        {"input_format": "uint16"},
        {"std": (0.2, 0.0, 0.2)},
        {"temperature": 0.0},
        {"temperature": float("nan")},
        {"unknown_threshold": 1.5},
        {"taxon_thresholds": {"genus": 0.5}},  # no class has a genus
    ],
)
def test_invalid_values_are_refused(changes):
    with pytest.raises(InvalidModelError):
        tiny_spec(**changes)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"model_name": "x"}),
    ],
)
def test_bad_json_is_a_typed_error(text):
    with pytest.raises(InvalidModelError):
        ModelSpec.from_json(text)


def test_unknown_spec_version_is_refused():
    data = json.loads(tiny_spec().to_json())
    data["spec_version"] = 99
    with pytest.raises(InvalidModelError, match="spec_version"):
        ModelSpec.from_json(json.dumps(data))


def test_spec_is_frozen():
    spec = tiny_spec()
    with pytest.raises(AttributeError):
        spec.temperature = 2.0  # type: ignore[misc]
    assert isinstance(spec.classes[0], ClassInfo)


@pytest.mark.parametrize(
    ("scientific", "common", "shown"),
    [
        ("Planta rubra", "red plant", "Planta rubra (red plant)"),
        ("Quercus (genus; oak)", "oak", "Quercus (genus; oak)"),
        ("Tilia (genus; linden)", "linden / lime", "Tilia (genus; linden)"),
        # a common name that is part of the binomial itself is still worth showing
        ("Ginkgo biloba", "ginkgo, maidenhair tree", "Ginkgo biloba (ginkgo, maidenhair tree)"),
        ("Planta sine nomine", "", "Planta sine nomine"),
    ],
)
def test_display_name_does_not_repeat_a_name(scientific: str, common: str, shown: str) -> None:
    assert display_name(scientific, common) == shown
    assert ClassInfo("x", scientific, common).display_name == shown
    assert Candidate("x", scientific, common, 0.5).to_dict()["display_name"] == shown


def test_taxonomy_round_trips_and_is_left_out_when_absent():
    spec = tiny_taxonomy_spec()
    back = ModelSpec.from_json(spec.to_json())
    assert back == spec and back.has_taxonomy
    assert back.classes[2].genus == "Caerula" and back.classes[2].family == "Plantaceae"
    assert back.taxon_thresholds == {"genus": 0.6, "family": 0.9}
    plain = json.loads(tiny_spec().to_json())
    assert "taxon_thresholds" not in plain
    assert all(set(c) == {"slug", "scientific_name", "common_name"} for c in plain["classes"])


def test_spec_written_before_taxonomy_loads_unchanged():
    data = json.loads(tiny_spec().to_json())
    spec = ModelSpec.from_json(json.dumps(data))
    assert not spec.has_taxonomy and spec.taxon_thresholds == {}
    assert spec.classes[0].taxon("genus") is None


@pytest.mark.parametrize(
    "thresholds", [{"species": 0.5}, {"genus": 1.5}, {"genus": -0.1}, {"order": 0.3}]
)
def test_bad_taxon_thresholds_are_refused(thresholds):
    with pytest.raises(InvalidModelError, match="taxon_thresholds"):
        tiny_taxonomy_spec(taxon_thresholds=thresholds)


def test_filled_keeps_names_a_class_already_has():
    info = ClassInfo("acer", "Acer (genus; maple)", "maple", genus="Acer")
    assert info.filled("Other", "Sapindaceae") == ClassInfo(
        "acer", "Acer (genus; maple)", "maple", "Acer", "Sapindaceae"
    )
