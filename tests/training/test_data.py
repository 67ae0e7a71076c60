from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic_data import make_imagefolder, make_ood, write_taxonomy

from conftest import encode, make_tiny_model, noisy, tiny_spec, tiny_taxonomy_spec
from leafid.classifier import Classifier
from leafid.images import ImageLimits, decode
from leafid.preprocess import preprocess
from leafid_train.config import TrainConfig
from leafid_train.data import DatasetError, ImageCache, label_space, open_root, samples_of
from leafid_train.run_data import build_data, fill_taxonomy


def test_open_root_reads_tsv_and_images(tmp_path: Path) -> None:
    root = open_root(make_imagefolder(tmp_path / "setA"))
    assert root.name == "setA"
    assert root.images == tmp_path / "setA" / "images"
    assert root.classes["rubra"].scientific_name == "Planta rubra"
    samples = samples_of(root)
    assert len(samples) == 24
    assert {s.label for s in samples} == {"rubra", "viridis", "caerulea"}


def test_genus_and_family_columns_of_classes_tsv(tmp_path: Path) -> None:
    folder = make_imagefolder(tmp_path / "mine", per_class=1)
    (folder / "classes.tsv").write_text(
        "class_slug\tscientific_name\tcommon_name\tgenus\tfamily\n"
        "rubra\tPlanta rubra\tred plant\tPlanta\tPlantaceae\n"
        "viridis\tPlanta viridis\tgreen plant\t\t\n"
    )
    classes = open_root(folder).classes
    assert (classes["rubra"].genus, classes["rubra"].family) == ("Planta", "Plantaceae")
    assert (classes["viridis"].genus, classes["viridis"].family) == (None, None)


def test_taxonomy_file_of_the_repository_fills_what_classes_tsv_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEAFID_MANIFEST_DIR", str(tmp_path / "manifests"))
    write_taxonomy(tmp_path / "manifests", "setA", ("rubra", "caerulea"))
    classes = open_root(make_imagefolder(tmp_path / "setA", per_class=1)).classes
    assert classes["rubra"].genus == "Planta" and classes["caerulea"].family == "Plantaceae"
    assert classes["viridis"].genus is None
    assert classes["rubra"].scientific_name == "Planta rubra"  # names still from classes.tsv


def test_fill_taxonomy_gives_an_older_spec_the_names_of_its_roots() -> None:
    known = tiny_taxonomy_spec().classes
    filled = fill_taxonomy(tiny_spec(), known[:2])  # caerulea is not in the roots
    assert [(c.genus, c.family) for c in filled.classes] == [
        ("Planta", "Plantaceae"),
        ("Planta", "Plantaceae"),
        (None, None),
    ]
    assert fill_taxonomy(tiny_spec(), ()) == tiny_spec()


def test_plain_imagefolder_without_tsv(tmp_path: Path) -> None:
    root = open_root(make_imagefolder(tmp_path / "mine", with_tsv=False, nested_images=False))
    assert root.images == tmp_path / "mine"
    classes = label_space([root], samples_of(root))
    assert [c.slug for c in classes] == ["caerulea", "rubra", "viridis"]
    assert classes[0].scientific_name == "Caerulea"


def test_empty_root_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "images" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        samples_of(open_root(tmp_path / "empty"))


def test_same_slug_in_two_roots_is_one_class(tmp_path: Path) -> None:
    a = open_root(make_imagefolder(tmp_path / "a"))
    b = open_root(
        make_imagefolder(tmp_path / "b", classes={"viridis": (1, 2, 3), "zeta": (9, 9, 9)})
    )
    classes = label_space([a, b], samples_of(a) + samples_of(b))
    assert [c.slug for c in classes] == ["caerulea", "rubra", "viridis", "zeta"]
    assert classes[2].scientific_name == "Planta viridis"  # first root's row wins


def test_run_data_lists_ood_train_paths(tmp_path: Path) -> None:
    make_imagefolder(tmp_path / "leaf")
    make_ood(tmp_path / "nonleaf", n=12)
    common = dict(data=[str(tmp_path / "leaf")], ood=[str(tmp_path / "nonleaf")], out="x")
    plain = build_data(TrainConfig(**common, verify=False))  # type: ignore[arg-type]
    assert plain.paths("train", ood=True) == []
    asked = build_data(
        TrainConfig(**common, verify=False, ood_split=(0.5, 0.25, 0.25))  # type: ignore[arg-type]
    )
    train = asked.paths("train", ood=True)
    assert len(train) == 6 and all(p.is_file() for p in train)
    assert not set(train) & set(asked.paths("val", ood=True) + asked.paths("test", ood=True))
    with pytest.raises(DatasetError, match="no split part"):
        asked.paths("holdout", ood=True)


def test_cache_matches_preprocess_and_disk(tmp_path: Path) -> None:
    root = open_root(make_imagefolder(tmp_path / "leaf", per_class=1, size=(80, 60)))
    spec = tiny_spec()
    path = root.path(samples_of(root)[0].rel)
    cache = ImageCache(spec, tmp_path / "cache")
    want = preprocess(decode(path.read_bytes(), ImageLimits(), spec.resize_size), spec)
    np.testing.assert_array_equal(cache.eval_array(path), want)
    train = cache.train_array(path)
    assert train.dtype == np.uint8 and min(train.shape[:2]) == spec.resize_size
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 2
    # a fresh cache reads the .npy files instead of decoding again
    marked = {f: np.full_like(np.load(f), 7) for f in files}
    for f, arr in marked.items():
        np.save(f, arr)
    fresh = ImageCache(spec, tmp_path / "cache")
    got = [fresh.train_array(path), fresh.eval_array(path)]
    for arr in got:
        assert (arr == 7).all()
    assert sorted(a.shape for a in got) == sorted(a.shape for a in marked.values())


def test_cache_files_are_kept_apart_by_input_format_mean_and_std(tmp_path: Path) -> None:
    path = tmp_path / "leaf.jpg"
    noisy((20, 160, 40), (80, 60), seed=3).save(path)
    specs = [
        tiny_spec(),
        tiny_spec(input_format="float32_nchw"),
        tiny_spec(input_format="float32_nchw", mean=(0.5, 0.5, 0.5)),
        tiny_spec(input_format="float32_nchw", std=(0.5, 0.5, 0.5)),
    ]
    for spec in specs:  # one folder: each spec must find its own array there
        ImageCache(spec, tmp_path / "cache").eval_array(path)
    for spec in specs:
        want = preprocess(decode(path.read_bytes(), ImageLimits(), spec.resize_size), spec)
        got = ImageCache(spec, tmp_path / "cache").eval_array(path)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_caches_sharing_a_folder_write_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchrun ranks decode the same files into one cache folder at the same time
    path = tmp_path / "leaf.jpg"
    noisy((20, 160, 40), (80, 60), seed=3).save(path)
    want = ImageCache(tiny_spec()).train_array(path)
    both_saved = threading.Barrier(2, timeout=10)
    real_save = np.save

    def save_then_wait(file: Any, arr: np.ndarray) -> None:
        real_save(file, arr)
        both_saved.wait()  # both writers have saved before either renames

    monkeypatch.setattr(np, "save", save_then_wait)
    folder = tmp_path / "cache"
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda _: ImageCache(tiny_spec(), folder).train_array(path), range(2)))
    for arr in got:
        np.testing.assert_array_equal(arr, want)
    assert [p.suffix for p in folder.iterdir()] == [".npy"]  # one file, no leftovers


def test_bad_image_is_a_dataset_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="bad.jpg"):
        ImageCache(tiny_spec()).train_array(bad)


def test_unplanned_pillow_exception_is_a_dataset_error(tmp_path: Path, odd_image: bytes) -> None:
    odd = tmp_path / "odd.png"
    odd.write_bytes(odd_image)
    for get in (ImageCache(tiny_spec()).train_array, ImageCache(tiny_spec()).eval_array):
        with pytest.raises(DatasetError, match=r"odd\.png: cannot decode image: IndexError"):
            get(odd)


def test_eval_arrays_are_the_classifiers_inputs(tmp_path: Path) -> None:
    # a big JPEG: the classifier decodes it in draft mode, and so must the cache
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(noisy((20, 160, 40), (800, 600), seed=4)))
    clf = Classifier(make_tiny_model(tmp_path / "tiny.onnx"))
    want = clf.try_load(path)
    assert isinstance(want, np.ndarray)
    np.testing.assert_array_equal(ImageCache(clf.spec).eval_array(path), want)
    train = ImageCache(clf.spec).train_array(path)
    assert min(train.shape[:2]) == clf.spec.resize_size  # resized from the drafted image
