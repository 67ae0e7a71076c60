"""Image folders, the joint label space, the deterministic split and the decode cache.

A dataset root is an ImageFolder (``<root>/<class_slug>/*.jpg``) or a folder with an
``images/`` ImageFolder inside, optionally with a ``classes.tsv`` (columns
``class_slug``, ``scientific_name``, ``common_name``, more ignored) in the root.
Several roots share one label space: the same slug in two roots is the same class.
Nothing here needs torch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from leafid.batch import IMAGE_EXTENSIONS
from leafid.classifier import decode_input
from leafid.errors import ImageError, LeafidError
from leafid.images import ImageLimits, read_bytes
from leafid.preprocess import RESAMPLE, preprocess
from leafid.spec import ClassInfo, ModelSpec
from leafid_train.config import DEFAULT_OOD_SPLIT, resolve_root

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class DatasetError(LeafidError):
    """A dataset folder, split file or manifest is not usable."""

    code = "dataset_error"
    http_status = 422


@dataclass(frozen=True)
class DataRoot:
    """One dataset folder.

    Attributes:
        name: Short name (the folder name, or its parent's when it is ``images/``).
        root: The folder as given.
        images: The ImageFolder (``root/images`` when present, else ``root``).
        classes: Rows of ``classes.tsv`` by slug (empty when there is none).
    """

    name: str
    root: Path
    images: Path
    classes: dict[str, ClassInfo]

    def path(self, rel: str) -> Path:
        """Absolute path of a file given relative to :attr:`images`."""
        return self.images / rel


@dataclass(frozen=True, order=True)
class Sample:
    """One labelled image: its root's name, its path under the root's images, its class."""

    root: str
    rel: str
    label: str


def read_classes_tsv(path: Path) -> dict[str, ClassInfo]:
    """Read ``classes.tsv`` into ClassInfo rows by slug.

    Raises:
        DatasetError: A needed column is missing or a slug repeats.
    """
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        need = {"class_slug", "scientific_name", "common_name"}
        if not need <= set(reader.fieldnames or ()):
            raise DatasetError(f"{path}: needs the columns {sorted(need)}")
        out: dict[str, ClassInfo] = {}
        for row in reader:
            slug = row["class_slug"].strip()
            if slug in out:
                raise DatasetError(f"{path}: class {slug!r} is listed twice")
            out[slug] = ClassInfo(slug, row["scientific_name"].strip(), row["common_name"].strip())
    return out


def open_root(name_or_path: str | Path) -> DataRoot:
    """Find a dataset folder (bare names under the data directory) and read its classes."""
    root = resolve_root(str(name_or_path))
    images = root / "images" if (root / "images").is_dir() else root
    tsv = root / "classes.tsv"
    if not tsv.is_file() and root.name == "images":
        tsv = root.parent / "classes.tsv"
    name = root.resolve().parent.name if root.name == "images" else root.resolve().name
    classes = read_classes_tsv(tsv) if tsv.is_file() else {}
    return DataRoot(name=name, root=root, images=images, classes=classes)


def list_images(images: Path) -> list[tuple[str, str]]:
    """All images of an ImageFolder as sorted ``(relative path, class slug)`` pairs."""
    out = []
    for class_dir in sorted(p for p in images.iterdir() if p.is_dir()):
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                out.append((file.relative_to(images).as_posix(), class_dir.name))
    return out


def samples_of(root: DataRoot) -> list[Sample]:
    """Every image of a root as a :class:`Sample`.

    Raises:
        DatasetError: The folder holds no images.
    """
    found = [Sample(root.name, rel, slug) for rel, slug in list_images(root.images)]
    if not found:
        raise DatasetError(f"no images in {root.images} (want <class_slug>/<image> files)")
    return found


def class_info(slug: str, roots: Sequence[DataRoot]) -> ClassInfo:
    """The first ``classes.tsv`` row for a slug, or a row made from the slug."""
    for root in roots:
        if slug in root.classes:
            return root.classes[slug]
    return ClassInfo(slug, slug.replace("_", " ").capitalize(), "")


def label_space(roots: Sequence[DataRoot], samples: Iterable[Sample]) -> tuple[ClassInfo, ...]:
    """The joint class list: slugs in order of first root, sorted within a root.

    The same slug in two roots is one class; its names come from the first root whose
    ``classes.tsv`` lists it (a different scientific name elsewhere is logged).

    Raises:
        DatasetError: Two roots have the same name.
    """
    names = [r.name for r in roots]
    if len(set(names)) != len(names):
        raise DatasetError(f"two dataset roots have the same name: {names}")
    by_root: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        by_root[s.root].add(s.label)
    order: list[str] = []
    for root in roots:
        order.extend(slug for slug in sorted(by_root[root.name]) if slug not in order)
    for slug in order:
        sci = {r.classes[slug].scientific_name for r in roots if slug in r.classes}
        if len(sci) > 1:
            log.warning("class %s has different scientific names across roots: %s", slug, sci)
    return tuple(class_info(slug, roots) for slug in order)


def _rank(seed: int, sample: Sample) -> str:
    return hashlib.sha256(f"{seed}/{sample.root}/{sample.rel}".encode()).hexdigest()


# A timed camera frame, named as DeepWeeds names them: YYYYMMDD-HHMMSS-CAMERA.jpg.
_FRAME_NAME = re.compile(r"(\d{8})-(\d{6})-(\d+)")
# Frames of one camera less than this apart on one day are one capture run (the rule of
# the staged datasets' SOURCE.md): seconds apart along a transect, nearly the same photo.
CAPTURE_RUN_GAP_S = 120


def _frame_time(sample: Sample) -> tuple[str, str, int] | None:
    """(day, camera, second of the day) of a timed camera frame, or None."""
    m = _FRAME_NAME.fullmatch(PurePosixPath(sample.rel).stem)
    if m is None:
        return None
    day, hms, camera = m.groups()
    seconds = int(hms[:2]) * 3600 + int(hms[2:4]) * 60 + int(hms[4:])
    return day, camera, seconds


def split_units(group: Sequence[Sample]) -> list[list[Sample]]:
    """The files of one (root, class) group that must stay on one side of the split.

    When every file is a timed camera frame (``YYYYMMDD-HHMMSS-CAMERA``), frames of
    one camera on one day taken at most :data:`CAPTURE_RUN_GAP_S` apart form one
    capture run, kept together so that neighbouring frames never straddle train, val
    and test. Any other group is split file by file.
    """
    frames = [(time, s) for s in group if (time := _frame_time(s)) is not None]
    if not group or len(frames) < len(group):
        return [[s] for s in group]
    frames.sort(key=lambda pair: pair[0])
    units: list[list[Sample]] = []
    previous: tuple[str, str, int] | None = None
    for time, sample in frames:
        if (
            previous is None
            or time[:2] != previous[:2]
            or time[2] - previous[2] > CAPTURE_RUN_GAP_S
        ):
            units.append([])
        units[-1].append(sample)
        previous = time
    return units


def split_samples(
    samples: Iterable[Sample], seed: int, fractions: Sequence[float]
) -> dict[str, list[Sample]]:
    """Deterministic stratified split into train/val/test.

    Each (root, class) group is cut into :func:`split_units` (single files, or whole
    capture runs of timed camera frames), the units are ordered by a seeded hash of
    their first file's relative path and dealt to test, then val, then train until
    each side has its share of ``fractions`` (a capture run may take a side a few
    files over). A file's side therefore does not depend on the other files' order.
    Groups of 3+ images get at least one val and one test image (when their fraction
    is > 0), and train keeps at least one unit when its fraction is > 0.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.
    """
    f_train, f_val, f_test = fractions
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.root, s.label)].append(s)
    out: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for group in groups.values():
        n = len(group)
        n_test = round(n * f_test)
        n_val = min(round(n * f_val), n - n_test) if f_train > 0 else n - n_test
        if n >= 3 and f_train > 0:
            n_test = max(n_test, 1 if f_test > 0 else 0)
            n_val = max(n_val, 1 if f_val > 0 else 0)
            while n - n_test - n_val < 1:
                if n_val >= n_test:
                    n_val -= 1
                else:
                    n_test -= 1
        units = sorted(split_units(group), key=lambda unit: _rank(seed, unit[0]))
        sides: dict[str, list[list[Sample]]] = {name: [] for name in SPLITS}
        targets, counts = {"test": n_test, "val": n_val}, {"test": 0, "val": 0}
        for unit in units:
            side = next((s for s in ("test", "val") if counts[s] < targets[s]), "train")
            sides[side].append(unit)
            if side != "train":
                counts[side] += len(unit)
        if f_train > 0 and not sides["train"] and len(units) > 1:
            fuller = max(("val", "test"), key=lambda s: len(sides[s]))
            sides["train"].append(sides[fuller].pop())
        for name, taken in sides.items():
            out[name].extend(s for unit in taken for s in unit)
    return {name: sorted(items) for name, items in out.items()}


@dataclass
class Split:
    """The files of one run: leaf splits and OOD splits, saved as split.json.

    ``ood`` has ``val`` and ``test`` parts, and a ``train`` part only when the run's OOD
    fractions give train a share (older runs and the default have none).
    """

    seed: int
    fractions: tuple[float, float, float]
    roots: dict[str, str]
    ood_roots: dict[str, str]
    leaf: dict[str, list[Sample]]
    ood: dict[str, list[Sample]]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""

        def rows(items: list[Sample]) -> list[list[str]]:
            return [[s.root, s.rel, s.label] for s in items]

        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            "roots": self.roots,
            "ood_roots": self.ood_roots,
            "splits": {k: rows(v) for k, v in self.leaf.items()},
            "ood": {k: rows(v) for k, v in self.ood.items()},
        }

    def save(self, path: Path) -> None:
        """Write ``split.json``."""
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Split:
        """Read a ``split.json``.

        Raises:
            DatasetError: The file is missing or malformed.
        """
        try:
            data = json.loads(path.read_text())
            return cls(
                seed=int(data["seed"]),
                fractions=tuple(data["fractions"]),
                roots=dict(data["roots"]),
                ood_roots=dict(data["ood_roots"]),
                leaf={k: [Sample(*row) for row in v] for k, v in data["splits"].items()},
                ood={k: [Sample(*row) for row in v] for k, v in data["ood"].items()},
            )
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"cannot read split file {path}: {exc}") from exc


def make_split(
    roots: Sequence[DataRoot],
    ood_roots: Sequence[DataRoot],
    seed: int,
    fractions: Sequence[float],
    ood_fractions: Sequence[float] = DEFAULT_OOD_SPLIT,
) -> Split:
    """Scan the roots and split them, each by capture run (:func:`split_samples`).

    OOD roots are split by ``ood_fractions``; their ``train`` part is kept only when its
    fraction is > 0 (by default OOD roots have val and test halves only).
    """
    leaf = [s for r in roots for s in samples_of(r)]
    ood = [s for r in ood_roots for s in samples_of(r)]
    ood_split = split_samples(ood, seed, ood_fractions)
    ood_parts = SPLITS if ood_fractions[0] > 0 else ("val", "test")
    return Split(
        seed=seed,
        fractions=(float(fractions[0]), float(fractions[1]), float(fractions[2])),
        roots={r.name: str(r.root.resolve()) for r in roots},
        ood_roots={r.name: str(r.root.resolve()) for r in ood_roots},
        leaf=split_samples(leaf, seed, fractions),
        ood={part: ood_split[part] for part in ood_parts},
    )


class ImageCache:
    """Decoded images, kept in memory and optionally as ``.npy`` files keyed by content.

    Files are read and decoded as the classifier does it (:func:`leafid.images.read_bytes`,
    then :func:`leafid.classifier.decode_input`). Two kinds of array are cached:
    training arrays (shorter side resized to the spec's ``resize_size``, for
    augmentation) and evaluation inputs, which are exactly what
    :meth:`leafid.Classifier.load` makes (the decoded image, preprocessed).

    Args:
        spec: Gives resize/input sizes and the interpolation.
        cache_dir: Folder for ``.npy`` files (None: memory only).
        limits: Decode limits.
    """

    def __init__(
        self, spec: ModelSpec, cache_dir: Path | None = None, limits: ImageLimits | None = None
    ) -> None:
        self.spec = spec
        self.cache_dir = cache_dir
        self.limits = limits or ImageLimits()
        self._memory: dict[tuple[str, str], np.ndarray] = {}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)

    def _get(self, path: Path, kind: str) -> np.ndarray:
        key = (kind, str(path))
        if key in self._memory:
            return self._memory[key]
        try:
            data = read_bytes(path, self.limits)
            disk = None
            if self.cache_dir is not None:
                digest = hashlib.sha256(data).hexdigest()[:40]
                disk = self.cache_dir / f"{digest}-{self._tag(kind)}.npy"
                if disk.is_file():
                    arr = np.load(disk)
                    self._memory[key] = arr
                    return arr
            img = decode_input(data, self.spec, self.limits)
        except ImageError as exc:
            raise DatasetError(f"{path}: {exc}") from exc
        arr = self._train_array(img) if kind == "train" else preprocess(img, self.spec)
        if disk is not None:  # a temporary file of its own: torchrun ranks share the folder
            fd, tmp = tempfile.mkstemp(dir=disk.parent, prefix=f".{disk.stem}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, arr)
            os.replace(tmp, disk)
        self._memory[key] = arr
        return arr

    def _tag(self, kind: str) -> str:
        """The part of a ``.npy`` name that names every spec field the array depends on.

        Training arrays depend on the decode size and the resize; evaluation inputs also
        on the crop size, the input format and, for ``float32_nchw``, mean and std.
        """
        s = self.spec
        tag = f"{kind}-{s.resize_size}-{s.input_size}-{s.interpolation}"
        if kind == "train":
            return tag
        norm = json.dumps([s.input_format, list(s.mean), list(s.std)])
        return f"{tag}-{hashlib.sha256(norm.encode()).hexdigest()[:12]}"

    def _train_array(self, img: Image.Image) -> np.ndarray:
        width, height = img.size
        scale = self.spec.resize_size / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = img.resize(size, RESAMPLE[self.spec.interpolation])
        return np.asarray(resized, dtype=np.uint8)

    def train_array(self, path: Path) -> np.ndarray:
        """uint8 HWC array whose shorter side is ``spec.resize_size``."""
        return self._get(path, "train")

    def eval_array(self, path: Path) -> np.ndarray:
        """The model input :func:`leafid.preprocess.preprocess` makes for this file."""
        return self._get(path, "eval")
