"""``leafid add-species``: new species on a model's backbone, in minutes, from embeddings.

The base model's backbone and classes are kept. Its own datasets (named in its spec)
and the new roots are split as training splits them (same seed and fractions, so the
base's photos keep their sides), embedded once by the base's fp32 model
(:mod:`~leafid_train.embeddings`, cached by model and file hash), and a linear head for
the old and new classes is fitted on the train part (:mod:`~leafid_train.linear_head`).
Temperature and unknown threshold are fitted with the base's rule on a val split holding
the new classes and the base's OOD roots; the head goes into a copy of the base graph
(:func:`~leafid_train.graph_rewrite.replace_head`) with a new spec, then an INT8 copy
when it qualifies (:mod:`~leafid_train.int8_rule`), a card section and the safety report
(:mod:`~leafid_train.safety`) beside the model (:class:`AddSpeciesFiles`).
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from leafid.classifier import EMBEDDING_OUTPUT, LOGITS_OUTPUT, make_session, softmax
from leafid.errors import InvalidModelError, InvalidRequestError, ModelError, ModelNotFoundError
from leafid.paths import INT8_SUFFIX, fp32_of_int8_copy, shipped_model_candidates
from leafid.spec import ClassInfo, ModelSpec
from leafid_train.calibrate import calibrate
from leafid_train.card_sections import num, pct
from leafid_train.config import DEFAULT_OOD_SPLIT
from leafid_train.data import DataRoot, Sample, class_info, open_root
from leafid_train.embeddings import Embedder, model_digest
from leafid_train.export import INPUT_NAME, save_onnx, set_metadata
from leafid_train.export_run import (
    COMPARE_ROUNDS,
    COMPARE_SECONDS,
    INT8_RANGE_IMAGES,
    PARITY_IMAGES,
    PARITY_TOLERANCE,
    keep_int8_if_it_ships,
    make_int8,
    run_spec,
    spread,
)
from leafid_train.graph_rewrite import head_weights, replace_head
from leafid_train.int8_rule import int8_decision
from leafid_train.linear_head import LinearHead, extend_head, fit_head
from leafid_train.locations import cache_dir as default_cache_dir
from leafid_train.manifest import checksum
from leafid_train.quantize import compare
from leafid_train.run_folder import AddSpeciesFiles
from leafid_train.safety import compare as safety_compare
from leafid_train.safety import val_figures
from leafid_train.split import Split, make_split
from leafid_train.unknown_rule import UnknownRule

log = logging.getLogger(__name__)

METHOD = (
    "leafid add-species: the base model's backbone and classes kept; a linear head for the "
    "old and new classes fitted on the base's embeddings of the training split"
)


def base_model_path(base: Path | None) -> Path:
    """The fp32 model to add species to: ``base``, or the shipped model.

    An INT8 copy (``NAME.int8.onnx``) stands for the fp32 model beside it: the head is
    fitted on fp32 embeddings and written into the fp32 graph.

    Raises:
        ModelNotFoundError: The model (or the fp32 model of an INT8 copy) is not there.
    """
    if base is None:
        found = [p for p in shipped_model_candidates() if not p.name.endswith(INT8_SUFFIX)]
        base = next((p for p in found if p.is_file()), found[-1])
    fp32 = fp32_of_int8_copy(base) or base
    if not fp32.is_file():
        beside = f" (the fp32 model beside the INT8 copy {base})" if fp32 != base else ""
        raise ModelNotFoundError(f"base model not found: {fp32}{beside}")
    return fp32


def base_rule(spec: ModelSpec) -> UnknownRule:
    """The unknown rule the base model was calibrated with (its spec's val figures).

    A spec without the coverage rule's targets was calibrated with the keep rule.
    """
    saved = spec.metrics.get("val", {}).get("unknown_rule")
    if not saved or saved.get("name") != "coverage":
        return UnknownRule()
    return UnknownRule("coverage", answered_right=saved["answered_right"], reject=saved["reject"])


def derived_version(base: str, added: int, serial: int = 1) -> str:
    """``BASE+Nsp.SERIAL``: derived from version BASE with N species added.

    A base that has a local part already (``1.2.1+2sp.1``) gets the new part after a dot.
    """
    return f"{base}{'.' if '+' in base else '+'}{added}sp.{serial}"


def read_head(proto: onnx.ModelProto) -> LinearHead:
    """The linear head of an exported model (:func:`~leafid_train.graph_rewrite.head_weights`).

    Raises:
        InvalidModelError: The logits are not made by a Gemm with constant weights.
    """
    try:
        return LinearHead(*head_weights(proto))
    except ValueError as exc:
        raise InvalidModelError(f"the model has no linear head to refit: {exc}") from exc


@dataclass(frozen=True)
class BaseData:
    """The datasets a base model was trained on, found again, and how it split them."""

    roots: list[DataRoot]
    ood_roots: list[DataRoot]
    seed: int
    fractions: tuple[float, float, float]
    ood_fractions: tuple[float, float, float]


def base_data(spec: ModelSpec) -> BaseData:
    """Find the base's datasets (bare names under the data folder) and its split settings.

    A dataset whose checksum differs from the spec's is used with a warning: the base's
    split of it cannot be made again exactly.

    Raises:
        InvalidModelError: The spec does not say what the model was trained on.
        InvalidRequestError: A dataset folder is not found.
    """
    td = spec.training_data
    datasets = td.get("datasets") or {}
    if not datasets or "split_seed" not in td:
        raise InvalidModelError(
            f"{spec.model_name} {spec.model_version} does not say which datasets and split it "
            "was trained on, so its classes cannot be kept: use leafid train"
        )
    roots, ood = [], []
    for name, info in datasets.items():
        root = open_root(name)
        digest, _ = checksum(root)
        if info.get("checksum") and digest != info["checksum"]:
            log.warning(
                "%s changed since %s was trained: some of its val photos may be photos the "
                "base model trained on",
                name,
                spec.model_version,
            )
        (ood if info.get("role") == "ood" else roots).append(root)
    return BaseData(
        roots,
        ood,
        int(td["split_seed"]),
        tuple(td.get("split_fractions", (0.7, 0.15, 0.15))),  # type: ignore[arg-type]
        tuple(td.get("ood_split_fractions", DEFAULT_OOD_SPLIT)),  # type: ignore[arg-type]
    )


def new_classes(spec: ModelSpec, roots: Sequence[DataRoot], split: Split) -> list[ClassInfo]:
    """The classes of the new roots the base does not have (names from classes.tsv or folder).

    Raises:
        InvalidRequestError: The new roots hold no class the base lacks.
    """
    names = {r.name for r in roots}
    slugs = {s.label for part in split.leaf.values() for s in part if s.root in names}
    added = sorted(slugs - set(spec.labels))
    if not added:
        raise InvalidRequestError(
            f"{', '.join(sorted(names))} add no species: every class is one of the base's "
            "(photos of a class the base has go through leafid train)"
        )
    return [class_info(slug, roots) for slug in added]


@dataclass
class AddSpeciesResult:
    """What :func:`add_species` made."""

    files: AddSpeciesFiles
    spec: ModelSpec
    int8_kept: bool
    safety: dict[str, Any]
    report: dict[str, Any]


def _say(say: Callable[[str], None] | None, text: str) -> None:
    if say is not None:
        say(text)


def add_species(
    new_roots: Sequence[str],
    out: Path,
    *,
    base: Path | None = None,
    cache_dir: Path | None = None,
    model_version: str | None = None,
    int8: bool = True,
    threads: int = 0,
    compare_seconds: float = COMPARE_SECONDS,
    say: Callable[[str], None] | None = None,
) -> AddSpeciesResult:
    """Add the classes of ``new_roots`` to a model; write it, its card and safety report.

    Args:
        new_roots: ImageFolders of the new species (names under the data folder or paths).
        out: The fp32 ``.onnx`` to write (an INT8 copy beside it when it qualifies).
        base: The model to start from (default: the shipped model).
        cache_dir: The embedding cache (default: ``embeddings/`` in the user's cache).
        model_version: The new model's version (default: :func:`derived_version`).
        int8: Make the INT8 copy (kept only when it qualifies); else a stale one goes.
        threads: onnxruntime intra-op threads (0: its choice).
        compare_seconds: Seconds per speed figure and model in the INT8 comparison.
        say: Where progress lines go (None: nowhere).

    Raises:
        ModelNotFoundError: The base model is not there.
        EmbeddingMissingError: The base model has no ``embedding`` output.
        InvalidModelError: Its spec does not name its datasets, or its head is not linear.
        InvalidRequestError: A folder is missing, or the new roots add no class.
        DatasetError: A root is empty, an image unreadable, or two roots share a name.
        ModelError: The written model's logits differ from the fitted head's.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    base_path = base_model_path(base)
    embedder = Embedder(base_path, (cache_dir or default_cache_dir() / "embeddings"), threads)
    spec = embedder.spec
    head = read_head(onnx.load(str(base_path)))
    bd = base_data(spec)
    added_roots = [open_root(r) for r in new_roots]
    split = make_split(
        bd.roots + added_roots, bd.ood_roots, bd.seed, bd.fractions, bd.ood_fractions
    )
    added = new_classes(spec, added_roots, split)
    classes = (*spec.classes, *added)
    index = {c.slug: i for i, c in enumerate(classes)}
    new_names = {r.name for r in added_roots}
    # photos of a class the base lacks in one of its own roots (the data changed) are left out
    leaf = {
        part: [s for s in items if s.root in new_names or s.label in spec.labels]
        for part, items in split.leaf.items()
    }
    by_name = {r.name: r for r in bd.roots + added_roots + bd.ood_roots}

    def paths(samples: Sequence[Sample]) -> list[Path]:
        return [by_name[s.root].path(s.rel) for s in samples]

    def labels(samples: Sequence[Sample]) -> np.ndarray:
        return np.array([index[s.label] for s in samples], dtype=np.int64)

    held_out = [s for s in leaf["test"] if s.root in new_names]
    sets = {
        "train": leaf["train"],
        "val": leaf["val"],
        "new test": held_out,
        "ood val": split.ood["val"],
    }
    total = sum(len(v) for v in sets.values())
    _say(say, f"embedding {total} photos with {spec.model_name} {spec.model_version} ...")
    emb = {name: embedder.embed(paths(items)) for name, items in sets.items()}
    seconds["embed"] = time.perf_counter() - started
    _say(
        say,
        f"embedded {total} photos in {seconds['embed']:.0f} s ({embedder.computed} by the "
        f"model, {total - embedder.computed} from the cache)",
    )

    t0 = time.perf_counter()
    new_head = fit_head(
        emb["train"], labels(leaf["train"]), extend_head(head, len(added)), seed=bd.seed
    )
    rule = base_rule(spec)
    ood_roots = [s.root for s in split.ood["val"]]
    calibration = calibrate(
        new_head.logits,
        emb["val"],
        labels(leaf["val"]),
        emb["ood val"],
        rule=rule,
        ood_roots=ood_roots,
        classes=classes,
    )
    seconds["fit"] = time.perf_counter() - t0
    version = model_version or derived_version(spec.model_version, len(added))
    new_spec = run_spec(
        spec.replace(classes=classes),
        version,
        calibration,
        None,
        _training_data(spec, base_path, bd, added_roots, split, leaf),
    )
    files = AddSpeciesFiles(out)
    t0 = time.perf_counter()
    parity = _write_model(base_path, out, new_spec, new_head, embedder, leaf["val"], paths)
    seconds["export"] = time.perf_counter() - t0
    _say(say, f"wrote {out} ({len(spec.classes)} + {len(added)} classes, version {version})")

    t0 = time.perf_counter()
    int8_report: dict[str, Any] | None = None
    if int8:
        int8_report = _int8(
            out, new_spec, embedder, leaf, split, paths, labels, rule, compare_seconds
        )
    elif files.model_int8.is_file():  # made from an older model at this path: stale
        files.model_int8.unlink()
    seconds["int8"] = time.perf_counter() - t0

    safety = safety_compare(
        _figures(spec, head, spec.temperature, spec.unknown_threshold, emb, leaf, split),
        _figures(
            new_spec, new_head, new_spec.temperature, new_spec.unknown_threshold, emb, leaf, split
        ),
    )
    files.write_safety(safety)
    held = _held_out(new_head, new_spec, emb["new test"], labels(held_out))
    seconds["total"] = time.perf_counter() - started
    report = {
        "base": {"model": str(base_path), "version": spec.model_version},
        "model": str(out),
        "model_version": version,
        "added": [c.slug for c in added],
        "new_roots": {r.name: str(r.root) for r in added_roots},
        "photos": {name: len(items) for name, items in sets.items()},
        "split_counts": {
            c.slug: {part: sum(s.label == c.slug for s in items) for part, items in leaf.items()}
            for c in added
        },
        "embedded_now": embedder.computed,
        "calibration": calibration,
        "new_species_test": held,
        "parity_max_abs_diff": parity,
        "int8": int8_report,
        "seconds": seconds,
    }
    files.write_report(report)
    files.card.write_text(card_section(new_spec, spec, added, report, safety, new_roots, base))
    return AddSpeciesResult(
        files, new_spec, bool(int8_report and int8_report["ship_int8"]), safety, report
    )


def _training_data(
    spec: ModelSpec,
    base_path: Path,
    bd: BaseData,
    added_roots: Sequence[DataRoot],
    split: Split,
    leaf: dict[str, list[Sample]],
) -> dict[str, Any]:
    """The new spec's ``training_data``: the base's datasets, the new ones, what it derives from."""
    datasets = dict(spec.training_data["datasets"])
    for root in added_roots:
        digest, count = checksum(root)
        classes = {s.label for part in leaf.values() for s in part if s.root == root.name}
        datasets[root.name] = {
            "images": count,
            "checksum": digest,
            "classes": len(classes),
            "role": "train",
            "added": True,
        }
    return {
        "derived_from": {
            "model_name": spec.model_name,
            "model_version": spec.model_version,
            "file": base_path.name,
            "sha256_16": model_digest(base_path),
        },
        "method": METHOD,
        "datasets": datasets,
        "split": {k: len(v) for k, v in leaf.items()},
        "ood_split": {k: len(v) for k, v in split.ood.items()},
        "split_seed": bd.seed,
        "split_fractions": list(bd.fractions),
        "ood_split_fractions": list(bd.ood_fractions),
    }


def _write_model(
    base_path: Path,
    out: Path,
    spec: ModelSpec,
    head: LinearHead,
    embedder: Embedder,
    val: Sequence[Sample],
    paths: Callable[[Sequence[Sample]], list[Path]],
) -> float:
    """Write the base graph with the new head and spec to ``out``, if its logits check out.

    Returns:
        The largest |logit difference| between the written model and the fitted head
        on a few val photos.

    Raises:
        ModelError: It is over :data:`PARITY_TOLERANCE`.
    """
    proto = onnx.load(str(base_path))
    replace_head(proto, head.weight, head.bias)
    set_metadata(proto, spec)
    proto.doc_string = f"leafid {spec.model_name} {spec.model_version}: uint8 RGB image -> logits"
    picked = [val[i] for i in spread(len(val), PARITY_IMAGES)]
    inputs = embedder.inputs(paths(picked))
    session = make_session(proto.SerializeToString())
    logits, embedding = session.run([LOGITS_OUTPUT, EMBEDDING_OUTPUT], {INPUT_NAME: inputs})
    diff = float(np.max(np.abs(logits - head.logits(embedding)))) if len(inputs) else 0.0
    if diff > PARITY_TOLERANCE:
        raise ModelError(f"the new model's logits differ from its head's by {diff:.2e}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_onnx(proto, out)
    return diff


def _int8(
    out: Path,
    spec: ModelSpec,
    embedder: Embedder,
    leaf: dict[str, list[Sample]],
    split: Split,
    paths: Callable[[Sequence[Sample]], list[Path]],
    labels: Callable[[Sequence[Sample]], np.ndarray],
    rule: UnknownRule,
    compare_seconds: float,
) -> dict[str, Any]:
    """Make the INT8 copy as ``leafid export --int8`` does; keep it only if it qualifies."""
    train = leaf["train"]
    range_images = embedder.inputs(paths([train[i] for i in spread(len(train), INT8_RANGE_IMAGES)]))
    val = embedder.inputs(paths(leaf["val"]))
    val_labels = labels(leaf["val"])
    calibration_set = (
        val,
        val_labels,
        embedder.inputs(paths(split.ood["val"])),
        [s.root for s in split.ood["val"]],
    )
    int8_path, calibration = make_int8(out, spec, range_images, calibration_set, rule, None)
    comparison = compare(
        out, int8_path, val, val_labels, min_seconds=compare_seconds, rounds=COMPARE_ROUNDS
    )
    return keep_int8_if_it_ships(int8_path, comparison, calibration, int8_decision(comparison))


def _figures(
    spec: ModelSpec,
    head: LinearHead,
    temperature: float,
    threshold: float,
    emb: dict[str, np.ndarray],
    leaf: dict[str, list[Sample]],
    split: Split,
) -> dict[str, Any]:
    """A model's :func:`~leafid_train.safety.val_figures` from its head on the val embeddings."""
    return val_figures(
        spec.model_version,
        softmax(head.logits(emb["val"]), temperature),
        spec.labels,
        [s.label for s in leaf["val"]],
        [s.root for s in leaf["val"]],
        softmax(head.logits(emb["ood val"]), temperature),
        [s.root for s in split.ood["val"]],
        threshold,
    )


def _held_out(
    head: LinearHead, spec: ModelSpec, embeddings: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """How the new model answers the new species' test photos (never fitted or calibrated on)."""
    if not len(labels):
        return {"images": 0}
    probs = softmax(head.logits(embeddings), spec.temperature)
    right = probs.argmax(axis=1) == labels
    answered = probs.max(axis=1) >= spec.unknown_threshold
    return {
        "images": int(len(labels)),
        "top1": float(right.mean()),
        "unknown_rate": float(1 - answered.mean()),
        "answered_right": float(right[answered].mean()) if answered.any() else None,
    }


def card_section(
    spec: ModelSpec,
    base: ModelSpec,
    added: Sequence[ClassInfo],
    report: dict[str, Any],
    safety: dict[str, Any],
    new_roots: Sequence[str],
    base_arg: Path | None,
) -> str:
    """The Markdown card section of a model made by ``leafid add-species``."""
    held, cal, int8 = report["new_species_test"], report["calibration"], report["int8"]
    command = ["leafid add-species", *map(shlex.quote, new_roots), "--out", report["model"]]
    if base_arg is not None:
        command += ["--base", shlex.quote(str(base_arg))]
    lines = [
        f"## Added species: {spec.model_name} {spec.model_version}",
        "",
        f"Derived from {base.model_name} {base.model_version} "
        f"(`{Path(report['base']['model']).name}`) by `{' '.join(command)}`: its backbone "
        f"and {len(base.classes)} classes kept, a new linear head for {len(spec.classes)} "
        "classes fitted on the base model's embeddings of its own training split and the "
        "new photos. A full `leafid train` is needed when the backbone must change.",
        "",
        "| Added class | Name | Train | Val | Test |",
        "|---|---|---|---|---|",
    ]
    counts = report["split_counts"]
    lines += [
        f"| `{c.slug}` | {c.display_name} | {counts[c.slug]['train']} | {counts[c.slug]['val']} | "
        f"{counts[c.slug]['test']} |"
        for c in added
    ]
    lines += [
        "",
        f"Held-out (test) photos of the added species: {held['images']}, top-1 "
        f"{pct(held.get('top1'))}, answered unknown {pct(held.get('unknown_rate'))}, right "
        f"when answered {pct(held.get('answered_right'))}.",
        "",
        f"Calibrated on {cal['val_images']} val photos (+ {cal['ood_val_images']} OOD): "
        f"temperature {cal['temperature']:.3f}, unknown threshold "
        f"{cal['unknown_threshold']:.3f} (the base's {base_rule(base).name} rule).",
        "",
    ]
    if int8 is not None:
        verdict = "ships as the default" if int8["ship_int8"] else "was not kept"
        lines += [f"INT8 copy: {verdict} (rule: {int8['rule']}).", ""]
    lines += [
        f"Safety on val, beside {base.model_version} (each with its own temperature and "
        f"threshold; a figure more than {100 * safety['max_worse']:g} points worse is marked):",
        "",
        "| Figure | Base | New | Worse by more than the margin |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['figure']} | {num(r['base'])} | {num(r['new'])} | {'yes' if r['warn'] else ''} |"
        for r in safety["rows"]
    ]
    return "\n".join(lines) + "\n"
