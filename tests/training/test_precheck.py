from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest
from synthetic_data import make_imagefolder, make_ood, tiny_config

from conftest import tiny_spec
from leafid.cli import main
from leafid_train.config import TrainConfig
from leafid_train.data import ImageCache
from leafid_train.precheck import MIN_TRAIN_IMAGES, DataCheckError, check_data
from leafid_train.run_data import build_data


def _clean(tmp_path: Path, **changes: object) -> TrainConfig:
    """A run whose data passes every check: enough images per class and an --ood root."""
    make_imagefolder(tmp_path / "leaf", per_class=20)
    make_ood(tmp_path / "nonleaf")
    cfg: TrainConfig = tiny_config(tmp_path, ood=[str(tmp_path / "nonleaf")], **changes)
    return cfg


def test_clean_data_passes_every_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = build_data(_clean(tmp_path))
    assert check_data(data, strict=True) == []
    assert caplog.records == []


def test_the_same_image_under_two_labels_is_named_with_its_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _clean(tmp_path)
    images = tmp_path / "leaf" / "images"
    shutil.copy(images / "rubra" / "rubra_000.jpg", images / "viridis" / "copy.jpg")
    shutil.copy(images / "rubra" / "rubra_001.jpg", images / "rubra" / "same_label.jpg")
    with caplog.at_level(logging.WARNING):
        problems = check_data(build_data(cfg), strict=False)
    assert len(problems) == 1 and caplog.messages == [f"check before training: {problems[0]}"]
    assert problems[0].startswith("1 image(s) are the same file under two labels")
    assert "leaf/rubra/rubra_000.jpg (rubra) = leaf/viridis/copy.jpg (viridis)" in problems[0]
    assert "same_label" not in problems[0]  # twice under one label is no clash


def test_a_leaf_photo_among_the_ood_photos_is_a_clash(tmp_path: Path) -> None:
    cfg = _clean(tmp_path)
    leaf = tmp_path / "leaf" / "images" / "caerulea" / "caerulea_003.jpg"
    shutil.copy(leaf, tmp_path / "nonleaf" / "images" / "nonleaf" / "leaf.jpg")
    (problem,) = check_data(build_data(cfg), strict=False)
    assert "leaf/caerulea/caerulea_003.jpg (caerulea)" in problem
    assert "nonleaf/nonleaf/leaf.jpg (--ood nonleaf)" in problem


def test_many_clashes_show_a_few_and_count_the_rest(tmp_path: Path) -> None:
    cfg = _clean(tmp_path)
    images = tmp_path / "leaf" / "images"
    for i in range(5):
        shutil.copy(images / "rubra" / f"rubra_{i:03d}.jpg", images / "viridis" / f"c{i}.jpg")
    (problem,) = check_data(build_data(cfg), strict=False)
    assert problem.startswith("5 image(s)") and "; and 2 more." in problem
    assert problem.count(" = ") == 3


def test_classes_with_few_training_images_are_listed(tmp_path: Path) -> None:
    cfg = _clean(tmp_path)
    make_imagefolder(tmp_path / "few", per_class=4, classes={"alba": (240, 240, 230)})
    data = build_data(TrainConfig(**{**cfg.to_dict(), "data": [*cfg.data, str(tmp_path / "few")]}))
    train = sum(item.label == "alba" for item in data.split.leaf["train"])
    assert 0 < train < MIN_TRAIN_IMAGES
    (problem,) = check_data(data, strict=False)
    assert problem.startswith(
        f"1 class(es) have fewer than {MIN_TRAIN_IMAGES} training images (alba {train})"
    )


def test_no_ood_root_says_what_it_costs(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "leaf", per_class=20)
    (problem,) = check_data(build_data(tiny_config(tmp_path)), strict=False)
    assert problem.startswith("no --ood roots: the unknown threshold is set from leaf photos")
    assert "no figure for how many such photos the model rejects" in problem


def test_strict_turns_every_warning_into_one_error(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "leaf")  # 8 photos a class and no --ood
    with pytest.raises(DataCheckError, match=r"\(--strict\): 3 class\(es\) .* no --ood roots"):
        check_data(build_data(tiny_config(tmp_path)), strict=True)


def test_a_file_is_hashed_once_and_names_its_cache_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from leafid_train import data as data_module

    make_imagefolder(tmp_path / "leaf", per_class=1)
    path = tmp_path / "leaf" / "images" / "rubra" / "rubra_000.jpg"
    cache = ImageCache(tiny_spec(), tmp_path / "cache")
    digest = cache.digest(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()[:40]
    hashed: list[bytes] = []
    real = data_module.hashlib.sha256
    monkeypatch.setattr(data_module.hashlib, "sha256", lambda b=b"": hashed.append(b) or real(b))
    cache.train_array(path)
    assert [f.name.split("-")[0] for f in (tmp_path / "cache").glob("*.npy")] == [digest]
    assert len(hashed) == 0  # the bytes were hashed once, by digest()


def test_strict_stops_the_command_before_the_run_folder_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    make_imagefolder(tmp_path / "leaf")
    out = tmp_path / "run"
    rc = main(["train", "--data", str(tmp_path / "leaf"), "--out", str(out), "--strict"])
    assert rc == 1 and not out.exists()
    err = capsys.readouterr().err
    assert err.startswith("leafid: error: the data failed the checks before training (--strict)")
    assert "Without --strict these are warnings." in err
