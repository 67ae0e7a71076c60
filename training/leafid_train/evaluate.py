"""``leafid evaluate``: score an ONNX model on ImageFolders through :class:`leafid.Classifier`.

The images go through exactly the code users run (:meth:`Classifier.classify_images`),
so the figures describe the shipped behaviour, threshold included.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from leafid.classifier import Classifier, decode_input
from leafid.errors import ImageError, InvalidRequestError
from leafid.images import read_bytes
from leafid.results import Prediction
from leafid.spec import ClassInfo
from leafid.taxonomy import RANKS
from leafid_train.augment import greyscale
from leafid_train.calibrate import auroc, ece, reliability
from leafid_train.composite import composite, cut_out
from leafid_train.data import DataRoot, DatasetError, Sample, open_root, samples_of
from leafid_train.plots import confusion_png, reliability_png
from leafid_train.run_folder import EvalFolder
from leafid_train.split import Split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """One evaluated image."""

    sample: Sample
    prediction: Prediction


def select(
    data: Sequence[str],
    ood: Sequence[str],
    split_file: Path | None,
    split: str,
) -> tuple[list[DataRoot], list[Sample], list[DataRoot], list[Sample]]:
    """The leaf and OOD samples to evaluate.

    Without a split file every image of every root is used. With one, the leaf images
    are those of part ``split`` for the given roots (all of the file's roots when
    ``data`` is empty). An OOD root that the run used gives its part ``split`` (val
    picked the unknown threshold; a train part exists only when the run's ``ood_split``
    gave it a share, else asking for it is an error). An OOD root the run did not use
    contributes all its images.

    Raises:
        DatasetError: The split file has no such part, a root is not in it, or a run's
            OOD root is asked for with ``split="train"``.
    """
    if split_file is None:
        roots = [open_root(d) for d in data]
        ood_roots = [open_root(d) for d in ood]
        leaf = [s for r in roots for s in samples_of(r)]
        return roots, leaf, ood_roots, [s for r in ood_roots for s in samples_of(r)]
    saved = Split.load(split_file)
    if split not in saved.leaf:
        raise DatasetError(f"{split_file} has no part {split!r} (has {sorted(saved.leaf)})")
    roots = [open_root(d) for d in data] or [open_root(p) for p in saved.roots.values()]
    unknown = [r.name for r in roots if r.name not in saved.roots]
    if unknown:
        raise DatasetError(f"roots {unknown} are not in {split_file} ({sorted(saved.roots)})")
    names = {r.name for r in roots}
    leaf = [s for s in saved.leaf[split] if s.root in names]
    ood_roots = [open_root(d) for d in ood]
    ood_samples = []
    for r in ood_roots:
        if r.name not in saved.ood_roots:
            ood_samples += samples_of(r)
        elif split in saved.ood:
            ood_samples += [s for s in saved.ood[split] if s.root == r.name]
        else:
            raise DatasetError(
                f"OOD root {r.name!r} of {split_file} has no {split!r} part (only "
                f"{sorted(saved.ood)}): leave out --ood to evaluate the {split} split"
            )
    return roots, leaf, ood_roots, ood_samples


def score(
    clf: Classifier,
    roots: Sequence[DataRoot],
    samples: Sequence[Sample],
    batch_size: int = 32,
) -> tuple[list[Scored], list[dict[str, str]]]:
    """Run the classifier over samples in batches; unreadable images are listed, not fatal.

    Files are read and decoded as ``leafid classify`` reads users' files (one
    :meth:`Classifier.try_load` each, with the classifier's limits and no request budget:
    a batch here is not a request); an image it cannot use is listed with its error.
    """
    by_name = {r.name: r for r in roots}
    scored: list[Scored] = []
    failed: list[dict[str, str]] = []
    top_k = min(5, len(clf.spec.classes))
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        paths = [by_name[s.root].path(s.rel) for s in chunk]
        answers = clf.classify_loaded([clf.try_load(p) for p in paths], top_k)
        for sample, path, answer in zip(chunk, paths, answers, strict=True):
            if isinstance(answer, ImageError):
                failed.append({"file": str(path), "error": str(answer)})
            else:
                scored.append(Scored(sample, answer))
    return scored, failed


def _rates(items: Sequence[Scored]) -> dict[str, Any]:
    """Top-1/5, ``unknown_rate`` and ``answered_top1`` (top-1 of the rest).

    ``unknown_rate`` is the share without a species answer: some of them may be answered
    at genus or family rank (:func:`rank_counts`).
    """
    n = len(items)
    if n == 0:
        return {"images": 0}
    top1 = [i.prediction.results[0].slug == i.sample.label for i in items]
    top5 = [any(c.slug == i.sample.label for c in i.prediction.results) for i in items]
    unknown = [i.prediction.rank != "species" for i in items]
    answered = [t for t, u in zip(top1, unknown, strict=True) if not u]
    return {
        "images": n,
        "top1": float(np.mean(top1)),
        "top5": float(np.mean(top5)),
        "unknown_rate": float(np.mean(unknown)),
        "answered_top1": float(np.mean(answered)) if answered else None,
    }


def rank_counts(items: Sequence[Scored], classes: Sequence[ClassInfo]) -> dict[str, Any]:
    """What each rank answered: species, genus and family answers and how many are right.

    Returns:
        ``images``; per rank ``answers`` and ``right`` (a genus or family answer is right
        when it names the photo's genus or family), ``accuracy`` (None without answers);
        ``unknown`` (no answer at any rank); ``right_at_species_rank`` and
        ``right_at_some_rank`` as shares of the images.
    """
    taxon = {c.slug: c for c in classes}
    out: dict[str, Any] = {"images": len(items)}
    for rank in RANKS:
        answered = [i for i in items if i.prediction.rank == rank]
        right = sum(
            i.prediction.best_match
            == (i.sample.label if rank == "species" else taxon[i.sample.label].taxon(rank))
            for i in answered
        )
        out[rank] = {
            "answers": len(answered),
            "right": right,
            "accuracy": right / len(answered) if answered else None,
        }
    out["unknown"] = sum(i.prediction.unknown for i in items)
    n = max(1, len(items))
    out["right_at_species_rank"] = out["species"]["right"] / n
    out["right_at_some_rank"] = sum(out[rank]["right"] for rank in RANKS) / n
    return out


def compute_metrics(
    labels: Sequence[str],
    leaf: Sequence[Scored],
    ood: Sequence[Scored],
    classes: Sequence[ClassInfo] = (),
) -> dict[str, Any]:
    """Top-1/5, per-class precision/recall, per-dataset rates, ECE, confusion and OOD figures.

    Args:
        labels: The model's class slugs, in output order.
        leaf: Scored in-distribution images.
        ood: Scored out-of-distribution images (``rejected``: no answer at any rank).
        classes: The model's classes: with genus or family, ``ranks`` (:func:`rank_counts`).
    """
    index = {slug: i for i, slug in enumerate(labels)}
    missing = sorted({s.sample.label for s in leaf} - set(index))
    if missing:
        raise DatasetError(f"classes not known to the model: {missing}")
    truth = np.array([index[s.sample.label] for s in leaf], dtype=int)
    guess = np.array([index[s.prediction.results[0].slug] for s in leaf], dtype=int)
    conf = np.array([s.prediction.results[0].score for s in leaf])
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(matrix, (truth, guess), 1)
    per_class = {}
    for slug, i in index.items():
        support, predicted = int(matrix[i].sum()), int(matrix[:, i].sum())
        per_class[slug] = {
            "support": support,
            "recall": matrix[i, i] / support if support else None,
            "precision": matrix[i, i] / predicted if predicted else None,
        }
    bins = reliability(conf, truth == guess)
    metrics: dict[str, Any] = _rates(leaf)
    metrics["ece"] = ece(conf, truth == guess)
    metrics["reliability"] = bins
    metrics["per_class"] = per_class
    metrics["per_dataset"] = {
        name: _rates([s for s in leaf if s.sample.root == name])
        for name in sorted({s.sample.root for s in leaf})
    }
    metrics["labels"] = list(labels)
    metrics["confusion"] = matrix.tolist()
    if any(c.genus or c.family for c in classes):
        metrics["ranks"] = rank_counts(leaf, classes)
    if ood:
        ood_conf = np.array([s.prediction.results[0].score for s in ood])
        metrics["ood"] = {
            "images": len(ood),
            "auroc": auroc(conf, ood_conf),
            "rejected": float(np.mean([s.prediction.unknown for s in ood])),
            "per_dataset": {
                name: float(np.mean([s.prediction.unknown for s in ood if s.sample.root == name]))
                for name in sorted({s.sample.root for s in ood})
            },
        }
    return metrics


SHIFT_SEED = 14
"""Seeds the shifted images (with the shift and the image's place in the sorted list)."""
FIELD_SIDE = 384
"""Side of a field-shift photo, in pixels (a phone photo, scaled down)."""


def _rotated(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Turned by an angle off the right angles training sees; corners filled with paper."""
    angle = float(rng.uniform(20, 70) + 90 * rng.integers(4))
    paper = tuple(int(v) for v in np.median(np.asarray(img)[[0, -1]].reshape(-1, 3), axis=0))
    return img.rotate(angle, Image.Resampling.BILINEAR, expand=True, fillcolor=paper)


def _low_light(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A third of the light, with sensor noise."""
    x = np.asarray(img, dtype=np.float32) * 0.35 + rng.normal(0, 4, (img.height, img.width, 1))
    return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))


SHIFTS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "greyscale": lambda img, rng: Image.fromarray(greyscale(np.asarray(img))),
    "blur": lambda img, rng: img.filter(ImageFilter.GaussianBlur(min(img.size) / 128)),
    "rotation": _rotated,
    "low_light": _low_light,
}
"""Shifts of a whole photo, by name; ``field`` (leaf on a field photo) is made apart."""


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _shift_rates(
    truth: Sequence[str], answers: Sequence[Prediction | ImageError]
) -> dict[str, Any]:
    """Images, right (top-1 correct and answered), unknown rate, answered-right (species rank)."""
    got = [(t, a) for t, a in zip(truth, answers, strict=True) if isinstance(a, Prediction)]
    if not got:
        return {"images": 0}
    right = [a.results[0].slug == t and a.rank == "species" for t, a in got]
    answered = sum(a.rank == "species" for _, a in got)
    return {
        "images": len(got),
        "right": float(np.mean(right)),
        "unknown_rate": 1 - answered / len(got),
        "answered_right": sum(right) / answered if answered else None,
    }


def shift_report(
    clf: Classifier,
    roots: Sequence[DataRoot],
    leaf: Sequence[Sample],
    ood_roots: Sequence[DataRoot],
    backgrounds: Sequence[Sample],
    batch_size: int = 32,
) -> dict[str, Any]:
    """How the model answers the leaf images shifted as field photos are (seeded).

    ``field``: leaves cut out of their plain background (:func:`cut_out`) and laid on
    the ``backgrounds`` (:func:`composite`); only roots of which at least half the images
    can be cut out (lab photos, not field photos) take part, and only when there are
    backgrounds. The other :data:`SHIFTS` change every leaf image. Shifted images are
    JPEG-encoded and classified as users' files are. Unreadable images are left out.
    """
    by_name = {r.name: r for r in list(roots) + list(ood_roots)}

    def decoded(sample: Sample) -> Image.Image | None:
        try:
            data = read_bytes(by_name[sample.root].path(sample.rel), clf.limits)
            return decode_input(data, clf.spec, clf.limits)
        except ImageError:
            return None

    frames = [np.asarray(img) for s in backgrounds if (img := decoded(s)) is not None]
    made: dict[str, list[bytes]] = {name: [] for name in ("field", *SHIFTS)}
    truth: dict[str, list[str]] = {name: [] for name in made}
    field_by_root: dict[str, list[tuple[str, bytes]]] = {}
    for i, sample in enumerate(leaf):
        img = decoded(sample)
        if img is None:
            continue
        for k, (name, shift) in enumerate(SHIFTS.items(), start=1):
            made[name].append(_jpeg(shift(img, np.random.default_rng([SHIFT_SEED, k, i]))))
            truth[name].append(sample.label)
        arr = np.asarray(img)
        cut = cut_out(arr) if frames else None
        if cut is not None:
            rng = np.random.default_rng([SHIFT_SEED, 0, i])
            field = composite(arr, cut, frames, FIELD_SIDE, rng)
            field_by_root.setdefault(sample.root, []).append(
                (sample.label, _jpeg(Image.fromarray(field)))
            )
    counts = Counter(s.root for s in leaf)
    field_roots = sorted(r for r, pairs in field_by_root.items() if 2 * len(pairs) >= counts[r])
    for root in field_roots:
        for label, data in field_by_root[root]:
            made["field"].append(data)
            truth["field"].append(label)
    results = {}
    for name, images in made.items():
        answers: list[Prediction | ImageError] = []
        for start in range(0, len(images), batch_size):
            answers += clf.classify_images(images[start : start + batch_size])
        results[name] = _shift_rates(truth[name], answers)
    return {
        "seed": SHIFT_SEED,
        "backgrounds": len(frames),
        "field_roots": field_roots,
        "results": results,
    }


def evaluate_model(
    model: Path,
    data: Sequence[str],
    out: Path,
    *,
    ood: Sequence[str] = (),
    split_file: Path | None = None,
    split: str = "test",
    threshold: float | None = None,
    batch_size: int = 32,
    threads: int = 0,
    shifts: bool = False,
) -> dict[str, Any]:
    """Evaluate an ONNX model; writes its metrics and plots into ``out`` (:class:`EvalFolder`).

    Args:
        model: The ONNX model.
        data: Leaf dataset roots (names or paths); may be empty with ``split_file``.
        out: Output folder.
        ood: Out-of-distribution roots.
        split_file: A run's ``split.json`` to take one part of.
        split: The part of ``split_file`` to use.
        threshold: Overrides the model's unknown threshold.
        batch_size: Images per model call.
        threads: onnxruntime threads (0: its choice).
        shifts: Also report :func:`shift_report` under ``shifts``, with the OOD images
            of the evaluated part as field backgrounds (never train: training's backgrounds).

    Returns:
        The metrics written to :attr:`EvalFolder.metrics`.

    Raises:
        InvalidRequestError: ``batch_size`` is under 1, or ``shifts`` with the train
            part of a split file.
        DatasetError: No leaf images are selected or none of them can be read, or a
            split part or root is unknown.
    """
    if batch_size < 1:
        raise InvalidRequestError(f"batch size must be >= 1, got {batch_size}")
    if shifts and split_file is not None and split == "train":
        raise InvalidRequestError("shifts need held-out images and backgrounds: not --split train")
    clf = Classifier(model, threads=threads, threshold=threshold)
    roots, leaf, ood_roots, ood_samples = select(data, ood, split_file, split)
    if not leaf:
        raise DatasetError("nothing to evaluate: no leaf images selected")
    leaf_scored, failed = score(clf, roots, leaf, batch_size)
    if not leaf_scored:
        first = failed[0]
        raise DatasetError(
            f"none of the {len(leaf)} leaf images could be read "
            f"(first: {first['file']}: {first['error']})"
        )
    ood_scored, ood_failed = score(clf, ood_roots, ood_samples, batch_size)
    metrics = compute_metrics(clf.spec.labels, leaf_scored, ood_scored, clf.spec.classes)
    if shifts:
        metrics["shifts"] = shift_report(clf, roots, leaf, ood_roots, ood_samples, batch_size)
    metrics.update(
        model=str(model),
        model_version=clf.model_version,
        input_size=clf.spec.input_size,
        trained_on={
            name: d.get("images") for name, d in clf.spec.training_data.get("datasets", {}).items()
        },
        threshold=clf.threshold,
        temperature=clf.spec.temperature,
        split=split if split_file else "all",
        split_file=str(split_file) if split_file else None,
        datasets=[r.name for r in roots],
        ood_datasets=[r.name for r in ood_roots],
        failed=failed + ood_failed,
    )
    folder = EvalFolder(out)
    folder.write_metrics(metrics)
    title = f"{clf.spec.model_name} {clf.model_version} ({metrics['split']})"
    confusion_png(np.array(metrics["confusion"]), clf.spec.labels, folder.confusion, title)
    reliability_png(metrics["reliability"], metrics["ece"], folder.reliability, title)
    return metrics
