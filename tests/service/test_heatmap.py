"""Where the model looked: heat overlays, and ``--explain DIR`` on the command line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_references import run_cli

from conftest import TINY_COLOURS, noisy, tiny_spec
from leafid.errors import EXIT_OK, EXIT_USAGE
from leafid.heatmap import heat, model_view, overlay_png
from leafid.preprocess import preprocess, resize_and_crop


def test_the_hot_place_is_red_and_the_cold_one_blue() -> None:
    spec = tiny_spec()
    grey = np.full((32, 32, 3), 128, np.uint8)
    class_map = np.zeros((4, 4), np.float32)
    class_map[0, 0] = 5.0  # the model looked at the top left
    img = Image.open(io.BytesIO(overlay_png(grey, spec, class_map)))
    assert img.format == "PNG" and img.size == (32, 32)
    pixels = np.asarray(img.convert("RGB"), dtype=int)
    hot, cold = pixels[0, 0], pixels[-1, -1]
    assert hot[0] > hot[2] + 60  # red over blue
    assert cold[2] > cold[0] + 60  # blue over red


def test_heat_is_scaled_to_zero_and_one_and_a_flat_map_is_cold() -> None:
    levels = heat(np.array([[-3.0, 1.0], [1.0, 5.0]]), (8, 8))
    assert levels.shape == (8, 8)
    assert levels.min() == pytest.approx(0.0) and levels.max() == pytest.approx(1.0)
    assert not heat(np.full((3, 3), 7.0), (6, 6)).any()


def test_model_view_undoes_float_normalisation() -> None:
    spec = tiny_spec(input_format="float32_nchw")
    img = noisy((200, 120, 40), size=(50, 40))
    view = model_view(preprocess(img, spec), spec)
    want = np.asarray(resize_and_crop(img, spec), dtype=int)
    assert np.abs(np.asarray(view, dtype=int) - want).max() <= 1


def test_classify_explain_writes_one_png_per_photo(
    evidence_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder, slug in (("a", "rubra"), ("b", "caerulea")):
        (tmp_path / folder).mkdir()
        noisy(TINY_COLOURS[slug]).save(tmp_path / folder / "leaf.jpg")
    (tmp_path / "a" / "bad.jpg").write_bytes(b"not a photo")
    out_dir = tmp_path / "heat"
    code, out, _ = run_cli(
        [
            "classify",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--model",
            str(evidence_model),
            "--explain",
            str(out_dir),
            "--format",
            "jsonl",
        ],
        capsys,
    )
    assert code == 1  # the bad photo
    rows = [json.loads(line) for line in out.splitlines()]
    explained = {Path(r["path"]).parent.name: r["explain"] for r in rows if "explain" in r}
    assert explained["a"]["slug"] == "rubra" and explained["b"]["slug"] == "caerulea"
    assert sorted(p.name for p in out_dir.iterdir()) == ["leaf-2.png", "leaf.png"]
    assert {Path(e["file"]).name for e in explained.values()} == {"leaf.png", "leaf-2.png"}
    for shown in explained.values():
        with Image.open(shown["file"]) as img:
            assert img.size == (32, 32)


def test_identify_explain_shows_the_fused_answer_on_each_photo(
    evidence_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = []
    for i in range(2):
        photos.append(tmp_path / f"leaf{i}.jpg")
        noisy(TINY_COLOURS["viridis"], seed=i).save(photos[-1])
    code, out, _ = run_cli(
        [
            "identify",
            *map(str, photos),
            "--model",
            str(evidence_model),
            "--format",
            "json",
            "--explain",
            str(tmp_path / "heat"),
        ],
        capsys,
    )
    assert code == EXIT_OK
    result = json.loads(out)
    assert [e["photo"] for e in result["explain"]] == [str(p) for p in photos]
    assert {e["slug"] for e in result["explain"]} == {"viridis"}
    assert all(Path(e["file"]).is_file() for e in result["explain"])


def test_explain_with_an_old_model_is_a_clear_error(
    tiny_model: Path, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "heat"
    code, _, err = run_cli(
        ["classify", str(photo_dir), "--model", str(tiny_model), "--explain", str(out_dir)], capsys
    )
    assert code == EXIT_USAGE
    assert "no 'class_maps' output" in err and "show where it looked" in err
    assert not out_dir.exists()
