"""The data of a run: roots, split, labels and spec (:class:`RunData`), and the training set."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from leafid.errors import InvalidRequestError
from leafid.spec import ClassInfo, ModelSpec
from leafid_train.augment import augment, greyscale
from leafid_train.backbone import PRETRAINED_ARCHS, PRETRAINED_MEAN, PRETRAINED_STD
from leafid_train.composite import Paste, composite, cut_out
from leafid_train.config import TrainConfig
from leafid_train.data import DataRoot, DatasetError, ImageCache, label_space, open_root
from leafid_train.manifest import checksum, verify_roots
from leafid_train.split import SPLITS, Split, make_split

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """Everything a run needs from the data: roots, split, labels, spec and the cache."""

    roots: list[DataRoot]
    ood_roots: list[DataRoot]
    split: Split
    spec: ModelSpec
    cache: ImageCache

    @property
    def index(self) -> dict[str, int]:
        """Class slug -> output index."""
        return {slug: i for i, slug in enumerate(self.spec.labels)}

    def root(self, name: str) -> DataRoot:
        """A root (leaf or OOD) by name."""
        for r in self.roots + self.ood_roots:
            if r.name == name:
                return r
        raise DatasetError(f"no dataset root named {name!r} in this run")

    def paths(self, part: str, ood: bool = False) -> list[Path]:
        """Files of one split part (``train``/``val``/``test``).

        OOD roots have a ``train`` part only when the run's ``ood_split`` gives it a
        share; otherwise it is empty.
        """
        if part not in SPLITS:
            raise DatasetError(f"no split part {part!r} (want one of {SPLITS})")
        items = (self.split.ood if ood else self.split.leaf).get(part, [])
        return [self.root(s.root).path(s.rel) for s in items]

    def labels(self, part: str) -> np.ndarray:
        """Class indices of one leaf split part."""
        index = self.index
        return np.array([index[s.label] for s in self.split.leaf[part]], dtype=np.int64)

    def eval_arrays(self, part: str, ood: bool = False, limit: int | None = None) -> np.ndarray:
        """Preprocessed model inputs (exactly what the Classifier feeds) of a split part."""
        paths = self.paths(part, ood)[:limit]
        size = self.spec.input_size
        if not paths:
            return np.zeros((0, size, size, 3), dtype=np.uint8)
        return np.stack([self.cache.eval_array(p) for p in paths])


def build_spec(cfg: TrainConfig, classes: Sequence[ClassInfo]) -> ModelSpec:
    """The model spec of a run (temperature and threshold are set after calibration).

    The input normalisation is what the shipped lite0 weights expect, else the spec's
    default (ImageNet's).
    """
    spec = ModelSpec(
        model_name=f"leafid-{cfg.arch.replace('_', '-')}",
        model_version=cfg.resolved_model_version(),
        classes=tuple(classes),
        input_size=cfg.input_size,
        resize_size=cfg.resize_size,
    )
    if cfg.arch in PRETRAINED_ARCHS:
        spec = spec.replace(mean=PRETRAINED_MEAN, std=PRETRAINED_STD)
    return spec


def fill_taxonomy(spec: ModelSpec, known: Sequence[ClassInfo]) -> ModelSpec:
    """``spec`` with each class's missing genus and family taken from ``known`` (by slug).

    A run trained before taxonomy was recorded gets it at export from its data roots.
    """
    by_slug = {c.slug: c for c in known}
    classes = tuple(
        c.filled(by_slug[c.slug].genus, by_slug[c.slug].family) if c.slug in by_slug else c
        for c in spec.classes
    )
    return spec.replace(classes=classes)


def build_data(cfg: TrainConfig, split_file: Path | None = None) -> RunData:
    """Open and (optionally) verify the roots, split them and make the spec.

    Args:
        cfg: The run's config.
        split_file: Reuse this ``split.json`` (on resume) instead of making a new split.

    Raises:
        ManifestMismatchError: A root does not match its manifest (``cfg.verify``).
        DatasetError: A root is empty or unreadable.
        InvalidRequestError: A root is both --data and --ood, or --oversample or --paste
            names a root that is not a --data root.
    """
    roots = [open_root(d) for d in cfg.data]
    ood_roots = [open_root(d) for d in cfg.ood]
    for flag, named in (("--oversample", cfg.oversample_factors()), ("--paste", cfg.paste)):
        unknown = set(named) - {r.name for r in roots}
        if unknown:
            raise InvalidRequestError(
                f"{flag} names {sorted(unknown)}, not a --data root "
                f"({', '.join(r.name for r in roots)})"
            )
    if cfg.verify:
        checked = verify_roots(roots + ood_roots)
        log.info("verified against manifests: %s", checked or "none found")
    if split_file is not None and split_file.is_file():
        split = Split.load(split_file)
        names = {r.name for r in roots}
        if set(split.roots) != names:
            raise DatasetError(f"{split_file} is for roots {sorted(split.roots)}, not {names}")
    else:
        split = make_split(roots, ood_roots, cfg.seed, cfg.split, cfg.ood_split)
    leaf = [s for part in split.leaf.values() for s in part]
    overlap = {r.name for r in roots} & {r.name for r in ood_roots}
    if overlap:
        raise InvalidRequestError(f"a root cannot be both --data and --ood: {sorted(overlap)}")
    if not split.leaf["train"] or not split.leaf["val"]:
        raise DatasetError("the split has no train or no val images: add more images per class")
    spec = build_spec(cfg, label_space(roots, leaf))
    cache = ImageCache(spec, Path(cfg.cache_dir) if cfg.cache_dir else None)
    return RunData(roots, ood_roots, split, spec, cache)


class TrainSet(Dataset):  # type: ignore[type-arg]
    """Augmented training images from preloaded arrays (shorter side = resize_size).

    Augmentation is seeded by (seed, epoch, index), so an epoch is the same after resume.
    ``order`` lists the array shown at each index (an array listed twice is shown twice
    per epoch, augmented differently); default: each array once. With ``paste``, an
    array that has a cut-out leaf is shown on a background with chance ``paste.prob``
    (:func:`~leafid_train.composite.composite`), else augmented as usual; any image is
    then turned grey with chance ``greyscale_prob``.
    """

    def __init__(
        self,
        arrays: list[np.ndarray],
        labels: np.ndarray,
        spec: ModelSpec,
        seed: int,
        order: Sequence[int] | None = None,
        paste: Paste | None = None,
        greyscale_prob: float = 0.0,
    ) -> None:
        self.arrays = arrays
        self.labels = labels
        self.spec = spec
        self.seed = seed
        self.order = list(range(len(arrays))) if order is None else list(order)
        self.paste = paste
        self.greyscale_prob = greyscale_prob
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.order)

    def image(self, i: int) -> np.ndarray:
        """The uint8 HWC image shown at index ``i`` this epoch."""
        rng = np.random.default_rng([self.seed, self.epoch, i])
        j, size = self.order[i], self.spec.input_size
        cut = self.paste.cutouts[j] if self.paste else None
        # no random draws for what is off, so that runs without these options stay the same
        if self.paste and cut is not None and rng.random() < self.paste.prob:
            arr = composite(self.arrays[j], cut, self.paste.frames, size, rng, self.paste.cfg)
        else:
            arr = augment(self.arrays[j], size, rng, self.spec.interpolation)
        if self.greyscale_prob and rng.random() < self.greyscale_prob:
            arr = greyscale(arr)
        return arr

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return torch.from_numpy(self.image(i)), int(self.labels[self.order[i]])


def load_train_set(
    data: RunData,
    seed: int,
    show: bool = False,
    oversample: Mapping[str, int] | None = None,
    paste: Sequence[str] = (),
    paste_prob: float = 0.5,
    greyscale_prob: float = 0.0,
) -> TrainSet:
    """Decode (or read from the cache) every training image once.

    Args:
        data: The run's data.
        seed: Augmentation seed.
        show: Progress bar on a terminal.
        oversample: {root name: N}: that root's images are shown N times per epoch.
        paste: Roots whose leaves are cut out (once, here) and shown on backgrounds:
            the OOD roots' train part and generated fills.
        paste_prob: Chance that a ``paste`` root's image is shown pasted.
        greyscale_prob: Chance that any image is shown in greyscale.
    """
    factors = dict(oversample or {})
    paths = data.paths("train")
    arrays = [data.cache.train_array(p) for p in progress(paths, "decode train", show)]
    order = [
        i
        for i, item in enumerate(data.split.leaf["train"])
        for _ in range(factors.get(item.root, 1))
    ]
    pasted = load_paste(data, arrays, paste, paste_prob, show) if paste else None
    return TrainSet(arrays, data.labels("train"), data.spec, seed, order, pasted, greyscale_prob)


def load_paste(
    data: RunData, arrays: Sequence[np.ndarray], roots: Sequence[str], prob: float, show: bool
) -> Paste:
    """Cut out the leaves of the ``roots``' training arrays and decode the field frames."""
    samples = data.split.leaf["train"]
    cutouts = [
        cut_out(arr) if s.root in roots else None
        for s, arr in progress(list(zip(samples, arrays, strict=True)), "cut out leaves", show)
    ]
    wanted = sum(s.root in roots for s in samples)
    found = sum(c is not None for c in cutouts)
    frame_paths = data.paths("train", ood=True)
    frames = [data.cache.train_array(p) for p in progress(frame_paths, "decode frames", show)]
    log.info(
        "pasting %d of %d leaves of %s (no usable mask: %d) on %d field frames and fills",
        found,
        wanted,
        ", ".join(roots),
        wanted - found,
        len(frames),
    )
    if not frames:
        log.warning("no OOD train part (see --ood-split): leaves go on generated fills only")
    return Paste(cutouts, frames, prob)


def progress(items: Sequence[Any], desc: str, show: bool) -> Any:
    """``items`` behind a tqdm bar when ``show`` and stderr is a terminal (and tqdm is there)."""
    if not (show and sys.stderr.isatty()):
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, leave=False)


def training_data_summary(data: RunData) -> dict[str, Any]:
    """Datasets (images, classes, checksum) and split sizes, for the spec and the card."""
    datasets = {}
    for root in data.roots + data.ood_roots:
        digest, count = checksum(root)
        datasets[root.name] = {
            "images": count,
            "checksum": digest,
            "role": "ood" if root in data.ood_roots else "train",
        }
    per_root: dict[str, set[str]] = {}
    for part in data.split.leaf.values():
        for s in part:
            per_root.setdefault(s.root, set()).add(s.label)
    for name, labels in per_root.items():
        datasets[name]["classes"] = len(labels)
    return {
        "datasets": datasets,
        "split": {k: len(v) for k, v in data.split.leaf.items()},
        "ood_split": {k: len(v) for k, v in data.split.ood.items()},
        "split_seed": data.split.seed,
        "split_fractions": list(data.split.fractions),
    }
