"""Synthetic ImageFolders and helpers for the training tests (tests/training/test_*.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from conftest import TINY_CLASSES, TINY_COLOURS, TINY_TAXA, noisy


def make_imagefolder(
    root: Path,
    per_class: int = 8,
    size: tuple[int, int] = (48, 40),
    with_tsv: bool = True,
    classes: dict[str, tuple[int, int, int]] | None = None,
    nested_images: bool = True,
) -> Path:
    """Write ``root/images/<slug>/<i>.jpg`` (or ``root/<slug>/...``) and a classes.tsv."""
    colours = classes or TINY_COLOURS
    images = root / "images" if nested_images else root
    for k, (slug, colour) in enumerate(colours.items()):
        folder = images / slug
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noisy(colour, size, seed=1000 * k + i).save(folder / f"{slug}_{i:03d}.jpg", quality=90)
    if with_tsv:
        names = {c.slug: c for c in TINY_CLASSES}
        rows = ["class_slug\tscientific_name\tcommon_name\tnote"]
        for slug in colours:
            info = names.get(slug)
            sci = info.scientific_name if info else slug.capitalize()
            common = info.common_name if info else ""
            rows.append(f"{slug}\t{sci}\t{common}\tx")
        (root / "classes.tsv").write_text("\n".join(rows) + "\n")
    return root


def make_ood(root: Path, n: int = 8) -> Path:
    """A one-class OOD folder of grey-ish noisy images."""
    folder = root / "images" / "nonleaf"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        noisy((128, 128, 128), (48, 40), seed=5000 + i).save(folder / f"n{i}.jpg", quality=90)
    return root


def lab_photo(
    paper: tuple[int, int, int], leaf: tuple[int, int, int], seed: int = 0, shadow: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A leaf-like ellipse with a thin stem on plain paper (noisy), and its true mask."""
    size = (120, 96)
    truth = Image.new("L", size, 0)
    draw = ImageDraw.Draw(truth)
    draw.ellipse((30, 18, 90, 66), fill=255)
    draw.line((60, 66, 62, 88), fill=255, width=3)  # the stem
    photo = Image.new("RGB", size, paper)
    if shadow:  # a darker, same-hued shadow beside the leaf, as on plantvillage's paper
        dark = tuple(round(c * 0.55) for c in paper)
        ImageDraw.Draw(photo).ellipse((38, 24, 100, 74), fill=dark)
    photo.paste(Image.new("RGB", size, leaf), (0, 0), truth)
    grey = len(set(paper)) == len(set(leaf)) == 1  # a greyscale photo has grey noise too
    noise = np.random.default_rng(seed).integers(-8, 9, (96, 120, 1 if grey else 3))
    arr = np.clip(np.asarray(photo).astype(int) + noise, 0, 255).astype(np.uint8)
    return arr, np.asarray(truth) > 127


def make_lab_root(root: Path, per_class: int = 6) -> Path:
    """An ImageFolder of lab photos: each tiny class's colour as a leaf on white paper."""
    for slug, colour in TINY_COLOURS.items():
        folder = root / "images" / slug
        folder.mkdir(parents=True)
        for k in range(per_class):
            arr, _ = lab_photo((250, 250, 248), colour, seed=k)
            Image.fromarray(arr).save(folder / f"{k}.png")
    return root


def write_taxonomy(folder: Path, name: str, slugs: tuple[str, ...] = tuple(TINY_TAXA)) -> Path:
    """Write ``folder/<name>.taxonomy.tsv`` with the :data:`TINY_TAXA` of ``slugs``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["class_slug\tgenus\tfamily\tsource"]
    rows += [f"{slug}\t{TINY_TAXA[slug][0]}\t{TINY_TAXA[slug][1]}\tby hand" for slug in slugs]
    path = folder / f"{name}.taxonomy.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_config(tmp_path: Path, out: str = "run", **changes: object) -> object:
    """A fast TrainConfig on a synthetic root (made if missing): tiny arch, 32 px."""
    from leafid_train.config import TrainConfig

    leaf = tmp_path / "leaf"
    if not leaf.exists():
        make_imagefolder(leaf)
    options: dict[str, object] = dict(
        data=[str(leaf)],
        out=str(tmp_path / out),
        arch="test_efficientnet",
        pretrained=False,
        input_size=32,
        resize_size=36,
        epochs=2,
        head_epochs=1,
        batch_size=8,
        lr=3e-3,
        verify=False,
        patience=0,
        threads=1,
    )
    options.update(changes)
    return TrainConfig(**options)  # type: ignore[arg-type]


def train_parser() -> argparse.ArgumentParser:
    """The real ``leafid train`` parser (from :func:`leafid_train.commands.register`)."""
    from leafid_train import commands

    parser = argparse.ArgumentParser(prog="leafid")
    subparsers = parser.add_subparsers(dest="command")
    commands.register(subparsers)
    train: argparse.ArgumentParser = subparsers.choices["train"]
    return train
