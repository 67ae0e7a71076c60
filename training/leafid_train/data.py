"""Image folders, the joint label space and the decode cache.

A dataset root is an ImageFolder (``<root>/<class_slug>/*.jpg``) or a folder with an
``images/`` ImageFolder inside, optionally with a ``classes.tsv`` (columns
``class_slug``, ``scientific_name``, ``common_name``, optionally ``genus`` and
``family``, more ignored) in the root. A staged dataset's genus and family may come
from the repository instead (:func:`~leafid_train.locations.taxonomy_path`).
Several roots share one label space: the same slug in two roots is the same class.
Nothing here needs torch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from leafid.batch import IMAGE_EXTENSIONS
from leafid.classifier import decode_input
from leafid.errors import ImageError, LeafidError
from leafid.images import ImageLimits, read_bytes
from leafid.preprocess import RESAMPLE, preprocess
from leafid.spec import ClassInfo, ModelSpec
from leafid_train.locations import resolve_root, taxonomy_path

log = logging.getLogger(__name__)


def file_digest(data: bytes) -> str:
    """The content hash of a file's bytes (SHA-256, 40 hex digits): a file's cache key."""
    return hashlib.sha256(data).hexdigest()[:40]


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


def _read_tsv(path: Path, need: set[str]) -> dict[str, dict[str, str]]:
    """The rows of a TSV file with a ``class_slug`` column, by slug, cells stripped.

    Raises:
        DatasetError: A needed column is missing or a slug repeats.
    """
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if not need | {"class_slug"} <= set(reader.fieldnames or ()):
            raise DatasetError(f"{path}: needs the columns {sorted(need | {'class_slug'})}")
        out: dict[str, dict[str, str]] = {}
        for row in reader:
            slug = row["class_slug"].strip()
            if slug in out:
                raise DatasetError(f"{path}: class {slug!r} is listed twice")
            out[slug] = {k: (v or "").strip() for k, v in row.items() if k is not None}
    return out


def read_classes_tsv(path: Path) -> dict[str, ClassInfo]:
    """Read ``classes.tsv`` into ClassInfo rows by slug (genus and family when it has them).

    Raises:
        DatasetError: A needed column is missing or a slug repeats.
    """
    rows = _read_tsv(path, {"scientific_name", "common_name"})
    return {
        slug: ClassInfo(
            slug,
            row["scientific_name"],
            row["common_name"],
            genus=row.get("genus") or None,
            family=row.get("family") or None,
        )
        for slug, row in rows.items()
    }


def with_taxonomy(classes: dict[str, ClassInfo], path: Path) -> dict[str, ClassInfo]:
    """``classes`` with the genus and family of a taxonomy file filled in where missing.

    The file (``class_slug``, ``genus``, ``family``, ``source``) is the repository's
    record of a staged dataset's taxonomy; a name ``classes.tsv`` gives wins.

    Raises:
        DatasetError: The file lacks a column or repeats a slug.
    """
    rows = _read_tsv(path, {"genus", "family"})
    return {
        slug: info.filled(rows[slug]["genus"] or None, rows[slug]["family"] or None)
        if slug in rows
        else info
        for slug, info in classes.items()
    }


def open_root(name_or_path: str | Path) -> DataRoot:
    """Find a dataset folder (bare names under the data directory) and read its classes."""
    root = resolve_root(str(name_or_path))
    images = root / "images" if (root / "images").is_dir() else root
    tsv = root / "classes.tsv"
    if not tsv.is_file() and root.name == "images":
        tsv = root.parent / "classes.tsv"
    name = root.resolve().parent.name if root.name == "images" else root.resolve().name
    classes = read_classes_tsv(tsv) if tsv.is_file() else {}
    if taxonomy_path(name).is_file():
        classes = with_taxonomy(classes, taxonomy_path(name))
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
        self._digests: dict[str, str] = {}
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
                disk = self.cache_dir / f"{self.digest(path, data)}-{self._tag(kind)}.npy"
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

    def digest(self, path: Path, data: bytes | None = None) -> str:
        """The content hash of a file's bytes (SHA-256, 40 hex digits), hashed once per file.

        Args:
            path: The file.
            data: Its bytes when they are read already.

        Raises:
            DatasetError: The file cannot be read or is over the byte limit.
        """
        key = str(path)
        if key not in self._digests:
            if data is None:
                try:
                    data = read_bytes(path, self.limits)
                except ImageError as exc:
                    raise DatasetError(f"{path}: {exc}") from exc
            self._digests[key] = file_digest(data)
        return self._digests[key]

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
