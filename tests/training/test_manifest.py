from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from synthetic_data import make_imagefolder, write_taxonomy

from leafid_train.data import open_root
from leafid_train.locations import MANIFEST_DIR
from leafid_train.manifest import (
    ManifestMismatchError,
    build_manifest,
    checksum,
    load_manifest,
    verify,
    verify_roots,
    write_manifest,
)


def _root(tmp_path: Path) -> Path:
    root = make_imagefolder(tmp_path / "setA", per_class=3)
    (root / "SOURCE.md").write_text(
        "# setA: a test set\n\n## What it is\nColoured squares.\n\n"
        "## Licence\nCC0.\n\n## Original authors / citation\nNobody (2026).\n"
    )
    return root


def test_manifest_content_and_files(tmp_path: Path) -> None:
    root = open_root(_root(tmp_path))
    path = write_manifest(root, tmp_path / "manifests")
    data = json.loads(path.read_text())
    assert data["name"] == "setA" and data["image_count"] == 9
    assert data["title"] == "a test set"
    assert data["what_it_is"] == "Coloured squares."
    assert data["licence"] == "CC0." and data["citation"] == "Nobody (2026)."
    assert {c["slug"]: c["images"] for c in data["classes"]} == {
        "caerulea": 3,
        "rubra": 3,
        "viridis": 3,
    }
    assert data["checksum"]["value"] == checksum(root)[0]
    md = (tmp_path / "manifests" / "setA.md").read_text()
    assert "| rubra | Planta rubra | red plant | 3 |" in md  # no taxonomy: no such columns
    assert load_manifest("setA", tmp_path / "manifests") == data
    assert load_manifest("other", tmp_path / "manifests") is None


def test_citation_and_licence_items_of_one_source_section(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "setB", per_class=1)
    (root / "SOURCE.md").write_text(
        "# setB: frames\n\n## Source\nFrames of a survey.\n\n- Citation: A. Author,\n"
        "  Survey (2019).\n- Licence: CC BY 4.0 (cite the paper).\n- Repository: x/y.\n"
    )
    data = build_manifest(open_root(root))
    assert data["citation"] == "A. Author, Survey (2019)."
    assert data["licence"] == "CC BY 4.0 (cite the paper)."
    assert data["source"].startswith("Frames of a survey.")


def test_verify_passes_then_fails_clearly(tmp_path: Path) -> None:
    folder = _root(tmp_path)
    root = open_root(folder)
    manifest = build_manifest(root)
    verify(root, manifest)
    extra = folder / "images" / "rubra" / "rubra_000.jpg"
    (folder / "images" / "rubra" / "copy.jpg").write_bytes(extra.read_bytes())
    with pytest.raises(ManifestMismatchError) as info:
        verify(root, manifest)
    message = str(info.value)
    assert "setA" in message and "10 images, manifest says 9" in message
    assert "rubra" in message and "--no-verify" in message


def test_changed_file_changes_checksum(tmp_path: Path) -> None:
    folder = _root(tmp_path)
    root = open_root(folder)
    manifest = build_manifest(root)
    target = folder / "images" / "viridis" / "viridis_001.jpg"
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(ManifestMismatchError, match="checksum differs"):
        verify(root, manifest)


def test_verify_roots_skips_roots_without_manifest(tmp_path: Path) -> None:
    root = open_root(_root(tmp_path))
    assert verify_roots([root], tmp_path / "none") == []
    write_manifest(root, tmp_path / "m")
    assert verify_roots([root], tmp_path / "m") == ["setA"]


STAGED = ("swedish-leaf", "flavia", "plantvillage", "deepweeds")


@pytest.mark.parametrize("name", STAGED)
def test_every_class_of_a_staged_dataset_has_genus_family_and_source(name: str) -> None:
    manifest = load_manifest(name, MANIFEST_DIR)
    assert manifest is not None and f"{name}.taxonomy.tsv" in manifest["taxonomy"]
    text = (MANIFEST_DIR / f"{name}.taxonomy.tsv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    assert {r["class_slug"] for r in rows} == {c["slug"] for c in manifest["classes"]}
    for c in manifest["classes"]:
        assert c["genus"][0].isupper() and c["family"].endswith("aceae")
        assert c["scientific_name"].split()[0] == c["genus"]  # genus-level classes too
    assert all(r["source"] for r in rows)


def test_manifest_shows_genus_and_family_of_the_taxonomy_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEAFID_MANIFEST_DIR", str(tmp_path / "manifests"))
    write_taxonomy(tmp_path / "manifests", "setA", ("rubra",))
    path = write_manifest(open_root(_root(tmp_path)))
    data = json.loads(path.read_text())
    rubra = next(c for c in data["classes"] if c["slug"] == "rubra")
    assert (rubra["genus"], rubra["family"]) == ("Planta", "Plantaceae")
    assert "setA.taxonomy.tsv" in data["taxonomy"]
    md = path.with_suffix(".md").read_text()
    assert "| rubra | Planta rubra | red plant | Planta | Plantaceae | 3 |" in md
    assert "| viridis | Planta viridis | green plant |  |  | 3 |" in md
