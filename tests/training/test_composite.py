from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_data import lab_photo, make_lab_root, make_ood, tiny_config

from leafid.errors import InvalidRequestError
from leafid_train import run_data
from leafid_train.augment import augment
from leafid_train.composite import (
    CompositeConfig,
    Paste,
    composite,
    cut_out,
    fill,
    leaf_mask,
    otsu,
)
from leafid_train.run_data import TrainSet, build_data, load_train_set


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(
    ("paper", "leaf", "shadow"),
    [
        ((250, 250, 248), (70, 110, 40), False),  # a scan on white
        ((150, 150, 160), (60, 140, 50), True),  # grey paper with a shadow
        ((245, 245, 245), (120, 120, 120), False),  # greyscale (flavia)
    ],
)
def test_mask_cuts_the_leaf_and_its_stem_off_the_paper(
    paper: tuple[int, int, int], leaf: tuple[int, int, int], shadow: bool
) -> None:
    arr, truth = lab_photo(paper, leaf, shadow=shadow)
    mask = leaf_mask(arr)
    assert iou(mask, truth) > 0.9
    assert mask[72:86, 58:65].sum() >= 0.6 * truth[72:86, 58:65].sum()  # the stem is kept


def test_mask_fills_holes_and_drops_specks() -> None:
    arr, truth = lab_photo((250, 250, 248), (70, 110, 40))
    arr[40:44, 55:59] = (250, 250, 248)  # a glint inside the leaf
    arr[5:7, 5:7] = (70, 110, 40)  # a crumb on the scanner glass
    mask = leaf_mask(arr)
    assert mask[40:44, 55:59].all() and not mask[5:7, 5:7].any()


def test_otsu_splits_two_groups() -> None:
    values = np.concatenate([np.full(100, 10.0), np.full(50, 90.0)])
    assert 10 < otsu(values) <= 90


def test_cut_out_box_and_unusable_photos() -> None:
    arr, truth = lab_photo((250, 250, 248), (70, 110, 40))
    cut = cut_out(arr)
    assert cut is not None
    left, top, right, bottom = cut.box
    assert cut.mask.shape == (bottom - top, right - left) and set(np.unique(cut.mask)) <= {0, 255}
    rows, cols = np.flatnonzero(truth.any(axis=1)), np.flatnonzero(truth.any(axis=0))
    assert abs(top - rows[0]) <= 2 and abs(left - cols[0]) <= 2
    assert not cut.grey
    grey_cut = cut_out(lab_photo((245, 245, 245), (120, 120, 120))[0])
    assert grey_cut is not None and grey_cut.grey
    grey = composite(arr, grey_cut, [], 32, np.random.default_rng(0))
    assert (grey == grey[..., :1]).all()  # a grey leaf's composite is grey as a whole
    plain = np.full((64, 64, 3), 200, dtype=np.uint8)
    assert cut_out(plain) is None  # nothing on the paper
    cropped = arr[30:, :]  # the leaf runs off the frame
    cropped[:, 40:80] = (70, 110, 40)
    assert cut_out(cropped) is None


def test_composite_is_seeded_and_puts_the_leaf_on_the_background() -> None:
    arr, _ = lab_photo((250, 250, 248), (70, 110, 40))
    cut = cut_out(arr)
    assert cut is not None
    frames = [np.full((48, 64, 3), (200, 40, 200), dtype=np.uint8)]  # a magenta "field"
    cfg = CompositeConfig(
        leaf_side=(0.8, 0.8), inside=1.0, field_share=1.0, blur=(0, 0, 0), jpeg=(0, 0, 0), shadow=0
    )
    a = composite(arr, cut, frames, 64, np.random.default_rng([1, 2, 3]), cfg)
    b = composite(arr, cut, frames, 64, np.random.default_rng([1, 2, 3]), cfg)
    c = composite(arr, cut, frames, 64, np.random.default_rng([1, 2, 4]), cfg)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    x = a.astype(int)
    greenish = (x[..., 1] > x[..., 0]) & (x[..., 1] > x[..., 2])
    assert greenish.mean() > 0.15  # the leaf is there
    assert (x[..., 0] > x[..., 1] + 60).mean() > 0.2  # on the field, no white paper
    assert (x.min(axis=2) > 200).mean() < 0.01


def test_fills_are_seeded_and_vary() -> None:
    a, b = fill(32, np.random.default_rng(0)), fill(32, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    means = {
        tuple(fill(32, np.random.default_rng(s)).mean(axis=(0, 1)).round(-1)) for s in range(8)
    }
    assert len(means) > 3


def _train_set(paste_prob: float = 0.0, greyscale_prob: float = 0.0, n: int = 12) -> TrainSet:
    from conftest import tiny_spec

    arrays = [lab_photo((250, 250, 248), (70, 110, 40), seed=k)[0] for k in range(n)]
    cutouts = [cut_out(a) for a in arrays]
    paste = Paste(cutouts, [], paste_prob) if paste_prob else None
    labels = np.zeros(n, dtype=np.int64)
    return TrainSet(arrays, labels, tiny_spec(), 7, paste=paste, greyscale_prob=greyscale_prob)


def test_without_paste_and_greyscale_images_are_todays() -> None:
    plain = _train_set()
    plain.epoch = 3
    for i in range(len(plain)):
        want = augment(plain.arrays[i], 32, np.random.default_rng([7, 3, i]))
        np.testing.assert_array_equal(plain.image(i), want)


def test_paste_and_greyscale_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    marker = np.full((32, 32, 3), (1, 2, 3), dtype=np.uint8)
    monkeypatch.setattr(run_data, "composite", lambda *args: marker)
    shown = _train_set(paste_prob=0.3, greyscale_prob=0.2, n=400)
    images = [shown.image(i) for i in range(len(shown))]
    pasted = np.mean([np.array_equal(im, marker) for im in images])
    grey = np.mean([(im == im[..., :1]).all() for im in images])
    assert 0.22 < pasted < 0.38  # the rest are the originals, augmented as usual
    assert 0.13 < grey < 0.27


def test_pasted_epoch_is_the_same_after_resume() -> None:
    first, again = _train_set(paste_prob=0.5), _train_set(paste_prob=0.5)
    first.epoch = again.epoch = 2
    for i in range(len(first)):
        np.testing.assert_array_equal(first.image(i), again.image(i))
    again.epoch = 3
    assert not all(np.array_equal(first.image(i), again.image(i)) for i in range(len(first)))


def test_load_train_set_cuts_out_paste_roots_and_reads_the_ood_train_part(tmp_path: Path) -> None:
    lab = make_lab_root(tmp_path / "lab")
    make_ood(tmp_path / "field", n=12)
    cfg = tiny_config(
        tmp_path, data=[str(tmp_path / "leaf"), str(lab)], ood=[str(tmp_path / "field")]
    )
    cfg.ood_split = (0.5, 0.25, 0.25)  # type: ignore[attr-defined]
    data = build_data(cfg)  # type: ignore[arg-type]
    shown = load_train_set(data, 1, paste=["lab"], paste_prob=1.0)
    assert shown.paste is not None and len(shown.paste.frames) == 6
    roots = [s.root for s in data.split.leaf["train"]]
    cut = [c is not None for c in shown.paste.cutouts]
    assert cut == [r == "lab" for r in roots]
    i = roots.index("lab")
    assert shown[i][0].shape == (32, 32, 3)


def test_paste_must_name_a_data_root(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match=r"--paste names \['elsewhere'\]"):
        build_data(tiny_config(tmp_path, paste=["elsewhere"]))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="paste_prob"):
        tiny_config(tmp_path, paste_prob=1.5)
