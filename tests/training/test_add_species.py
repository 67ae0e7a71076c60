"""``leafid add-species`` on a tiny model shaped as exported ones, with synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

from synthetic_data import make_imagefolder, make_ood  # noqa: E402

from conftest import make_tiny_model, tiny_spec, tiny_taxonomy_spec  # noqa: E402
from leafid.classifier import Classifier, make_session  # noqa: E402
from leafid.cli import main  # noqa: E402
from leafid.spec import ModelSpec  # noqa: E402
from leafid_train import add_species as module  # noqa: E402
from leafid_train.add_species import (  # noqa: E402
    add_species,
    base_model_path,
    base_rule,
    derived_version,
    read_head,
)
from leafid_train.embeddings import EmbeddingMissingError  # noqa: E402
from leafid_train.run_folder import AddSpeciesFiles  # noqa: E402
from leafid_train.unknown_rule import UnknownRule  # noqa: E402

pytestmark = pytest.mark.train

NEW = {"flava": (220, 200, 30), "purpurea": (150, 30, 160)}


TRAINED_ON = {
    "datasets": {
        "setA": {"images": 36, "classes": 3, "role": "train"},
        "nonleaf": {"images": 16, "role": "ood"},
    },
    "split_seed": 7,
    "split_fractions": [0.5, 0.25, 0.25],
}


def _base_spec(**changes: object) -> ModelSpec:
    """The tiny spec, saying it was trained on ``setA`` with ``nonleaf`` as OOD."""
    return tiny_spec(training_data=TRAINED_ON, **changes)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder with the base's datasets and a folder of two new species."""
    data = tmp_path / "data"
    make_imagefolder(data / "setA", per_class=12)
    make_ood(data / "nonleaf", n=16)
    make_imagefolder(tmp_path / "new", per_class=12, classes=NEW, with_tsv=False)
    monkeypatch.setenv("LEAFID_DATA_DIR", str(data))
    make_tiny_model(tmp_path / "base.onnx", _base_spec(), embedding=True)
    return tmp_path


def test_adds_species_keeps_the_old_ones_and_writes_card_and_safety(world: Path) -> None:
    out = world / "out" / "mine.onnx"
    result = add_species(
        [str(world / "new")],
        out,
        base=world / "base.onnx",
        cache_dir=world / "cache",
        int8=False,
    )
    clf = Classifier(out)
    assert clf.spec.labels == ["rubra", "viridis", "caerulea", "flava", "purpurea"]
    assert clf.spec.classes[3].scientific_name == "Flava"  # no classes.tsv: the folder name
    assert clf.model_version == "0.0.1-test+2sp.1"
    assert clf.spec.training_data["derived_from"]["model_version"] == "0.0.1-test"
    assert clf.spec.training_data["datasets"]["new"]["added"] is True
    outputs = [o.name for o in make_session(out).get_outputs()]
    assert outputs == ["logits", "embedding", "class_maps"]
    shades = {"rubra": (220, 30, 30), "caerulea": (30, 40, 210), **NEW}
    for slug, colour in shades.items():
        batch = np.full((1, 32, 32, 3), colour, dtype=np.uint8)
        logits, maps = make_session(out).run(["logits", "class_maps"], {"image": batch})
        assert clf.spec.labels[int(logits.argmax())] == slug
        np.testing.assert_allclose(maps.mean(axis=(2, 3)), logits, rtol=1e-4, atol=1e-3)
    held = result.report["new_species_test"]
    assert held["images"] == 6 and held["top1"] == 1.0
    files = AddSpeciesFiles(out)
    safety = json.loads(files.safety.read_text())
    assert {r["figure"] for r in safety["rows"]} >= {"nonleaf rejected", "ECE", "setA top-1"}
    card = files.card.read_text()
    assert card.startswith("## Added species: tiny-test 0.0.1-test+2sp.1")
    assert "| `flava` | Flava |" in card and "setA top-1" in card
    assert json.loads(files.report.read_text())["embedded_now"] > 0


def test_a_warm_cache_embeds_nothing_again(world: Path) -> None:
    for name in ("a", "b"):
        result = add_species(
            [str(world / "new")],
            world / f"{name}.onnx",
            base=world / "base.onnx",
            cache_dir=world / "cache",
            int8=False,
        )
    assert result.report["embedded_now"] == 0
    assert (world / "a.onnx").read_bytes() == (world / "b.onnx").read_bytes()  # seeded


def test_a_model_without_its_embedding_is_refused_with_a_clear_error(world: Path) -> None:
    make_tiny_model(world / "old.onnx", _base_spec())
    with pytest.raises(EmbeddingMissingError, match="re-export the run.*leafid train"):
        add_species([str(world / "new")], world / "x.onnx", base=world / "old.onnx")


def test_new_roots_with_only_known_classes_add_nothing(world: Path) -> None:
    make_imagefolder(world / "more", per_class=4)
    with pytest.raises(Exception, match="add no species"):
        add_species([str(world / "more")], world / "x.onnx", base=world / "base.onnx", int8=False)


def test_cli_prints_the_safety_table_and_strict_fails_on_a_worse_figure(
    world: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["add-species", str(world / "new"), "--out", str(world / "m.onnx")]
    args += ["--base", str(world / "base.onnx"), "--cache-dir", str(world / "c"), "--no-int8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "safety on val" in out and "nonleaf rejected" in out
    monkeypatch.setattr(module, "val_figures", _worse_each_call(module.val_figures))
    assert main([*args, "--strict"]) == 1
    assert "less safe" in capsys.readouterr().err


def _worse_each_call(real):  # type: ignore[no-untyped-def]
    """``val_figures`` whose second call (the new model) rejects no OOD photo."""
    calls = []

    def figures(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = real(*args, **kwargs)
        calls.append(1)
        if len(calls) % 2 == 0:
            result["rejected"] = {root: 0.0 for root in result["rejected"]}
        return result

    return figures


def test_int8_copy_is_made_and_kept_only_when_it_qualifies(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leafid_train.int8_rule import Int8Decision

    for ships in (False, True):
        decision = Int8Decision(ships=ships, faster=True, val_drop=0.0, test_drop=None)
        monkeypatch.setattr(module, "int8_decision", lambda *a, d=decision: d)
        result = add_species(
            [str(world / "new")],
            world / "m.onnx",
            base=world / "base.onnx",
            cache_dir=world / "cache",
            compare_seconds=0.02,
        )
        assert result.int8_kept is ships
        assert (world / "m.int8.onnx").is_file() is ships


def test_base_rule_version_and_paths() -> None:
    assert base_rule(tiny_spec()) == UnknownRule()
    coverage = {"name": "coverage", "answered_right": 0.97, "reject": {"nonleaf": 0.9}}
    rule = base_rule(tiny_spec(metrics={"val": {"unknown_rule": coverage}}))
    assert rule.name == "coverage" and rule.reject == {"nonleaf": 0.9}
    assert derived_version("1.2.1", 2) == "1.2.1+2sp.1"
    assert derived_version("1.2.1+2sp.1", 1) == "1.2.1+2sp.1.1sp.1"


def test_an_int8_base_stands_for_the_fp32_model_beside_it(world: Path) -> None:
    (world / "base.int8.onnx").write_bytes(b"")
    assert base_model_path(world / "base.int8.onnx") == world / "base.onnx"
    with pytest.raises(Exception, match="not found"):
        base_model_path(world / "gone.int8.onnx")


def test_read_head_gives_the_gemm_weights(world: Path) -> None:
    import onnx

    head = read_head(onnx.load(str(world / "base.onnx")))
    assert head.weight.shape == (3, 3) and head.bias.shape == (3,)
    assert head.weight[0, 0] == pytest.approx(12 / 255)


def test_a_base_with_taxonomy_gets_genus_and_family_thresholds_fitted_again(
    world: Path,
) -> None:
    make_tiny_model(
        world / "taxa.onnx", tiny_taxonomy_spec(training_data=TRAINED_ON), embedding=True
    )
    result = add_species(
        [str(world / "new")], world / "x.onnx", base=world / "taxa.onnx", int8=False
    )
    # the new head's val scores decide the back-off, not the base's stale thresholds
    assert result.report["calibration"]["taxon_backoff"]["val_images"] > 0
    assert result.spec.taxon_thresholds == result.report["calibration"]["taxon_thresholds"]
