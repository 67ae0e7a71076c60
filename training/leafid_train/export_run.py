"""``leafid export``: turn a finished run into a self-describing ONNX model."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from leafid.errors import InvalidRequestError, ModelError
from leafid.paths import int8_copy_path
from leafid.spec import ModelSpec
from leafid_train.calibrate import backoff_report, calibrate
from leafid_train.checkpoint import load_best
from leafid_train.config import TrainConfig
from leafid_train.export import export_onnx, max_abs_diff, onnx_logits, save_onnx, set_metadata
from leafid_train.int8_rule import INT8_RULE, Int8Decision, int8_decision
from leafid_train.loop import predict_logits
from leafid_train.quantize import compare, quantize_int8
from leafid_train.run_data import RunData, build_data, fill_taxonomy
from leafid_train.run_folder import RunFolder
from leafid_train.unknown_rule import UnknownRule

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-3
PARITY_IMAGES = 8
INT8_RANGE_IMAGES = 128
# Speed figures of the int8-vs-fp32 decision: several seconds per figure and model, in
# alternating rounds, so that a busy shared machine moves both models alike.
COMPARE_SECONDS = 6.0
COMPARE_ROUNDS = 6
VAL_KEYS = (
    "val_images",
    "val_top1",
    "ece_before",
    "ece_after",
    "ood_auroc",
    "ood_rejected",
    "val_unknown_rate",
)
# The coverage rule's figures (calibration reports of the keep rule do not have them) and
# the back-off's (models with taxonomy)
RULE_KEYS = (
    "unknown_rule",
    "val_answered_right",
    "ood_rejected_per_root",
    "targets_met",
    "taxon_backoff",
)
TEST_KEYS = (
    "split",
    "images",
    "top1",
    "top5",
    "ece",
    "unknown_rate",
    "per_dataset",
    "ood",
    "shifts",
    "ranks",
)


def spread(n: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    return (
        np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(int)) if n else np.array([])
    )


def headline_metrics(
    calibration: dict[str, Any], evaluation: dict[str, Any] | None
) -> dict[str, Any]:
    """The figures a model carries in its spec: val ones, and test ones once evaluated.

    Args:
        calibration: The model's calibration report (val).
        evaluation: The model's test metrics (``leafid evaluate``), or None.
    """
    metrics: dict[str, Any] = {"val": {k: calibration[k] for k in VAL_KEYS}}
    metrics["val"].update({k: calibration[k] for k in RULE_KEYS if k in calibration})
    if evaluation is not None:
        metrics["test"] = {k: evaluation[k] for k in TEST_KEYS if k in evaluation}
    return metrics


def run_spec(
    base: ModelSpec,
    version: str,
    calibration: dict[str, Any],
    evaluation: dict[str, Any] | None,
    training_data: dict[str, Any],
) -> ModelSpec:
    """The spec to ship: the trained spec plus calibration, metrics and data summary.

    The genus and family thresholds are the calibration's (none when it has none).
    """
    return base.replace(
        model_version=version,
        temperature=float(calibration["temperature"]),
        unknown_threshold=float(calibration["unknown_threshold"]),
        taxon_thresholds=dict(calibration.get("taxon_thresholds", {})),
        metrics=headline_metrics(calibration, evaluation),
        training_data=training_data,
    )


def make_int8(
    out: Path,
    spec: ModelSpec,
    range_images: np.ndarray,
    calibration_set: tuple[np.ndarray, np.ndarray, np.ndarray, list[str]],
    rule: UnknownRule,
    evaluation: dict[str, Any] | None,
) -> tuple[Path, dict[str, Any]]:
    """Quantise ``out``, refit temperature and threshold on its own logits, write it once.

    Quantisation moves the logits, so the fp32 model's temperature and threshold do not
    fit the INT8 copy: they are refitted on the copy's logits of the same val and OOD
    val images as the fp32 model's calibration (:func:`~leafid_train.calibrate.calibrate`).

    Args:
        out: The fp32 model.
        spec: Its spec.
        range_images: Preprocessed training images for the activation ranges.
        calibration_set: The val images, their labels, the OOD val images and their roots.
        rule: How the unknown threshold is chosen.
        evaluation: The INT8 copy's test metrics, once evaluated.

    Returns:
        The INT8 file and its calibration report.
    """
    val, labels, ood_val, ood_roots = calibration_set
    proto = quantize_int8(out, range_images)
    report = calibrate(
        partial(onnx_logits, proto.SerializeToString()),
        val,
        labels,
        ood_val,
        rule=rule,
        ood_roots=ood_roots,
        classes=spec.classes,
    )
    int8_spec = run_spec(
        spec,
        spec.model_version,
        report,
        evaluation,
        {
            **spec.training_data,
            "quantization": (
                f"static int8 QDQ (onnxruntime, per-channel weights), activation ranges from "
                f"{len(range_images)} training images; temperature, unknown threshold and "
                "genus and family thresholds refitted on this model's val logits"
            ),
        },
    )
    set_metadata(proto, int8_spec)
    path = int8_copy_path(out)
    save_onnx(proto, path)
    return path, report


def _with_backoff(
    run: RunFolder, model: Any, spec: ModelSpec, data: RunData, val: np.ndarray, rule: UnknownRule
) -> dict[str, Any]:
    """The run's calibration, with genus and family thresholds added when it lacks them.

    A run calibrated before back-off existed (or before its classes had a taxonomy)
    gets them now, from its fp32 model's val logits at its own temperature and unknown
    threshold; they are written to its calibration report, for the card.
    """
    calibration = run.load_calibration()
    if "taxon_thresholds" in calibration or not spec.has_taxonomy:
        return calibration
    ood_val = data.eval_arrays("val", ood=True)
    calibration |= backoff_report(
        predict_logits(model, val),
        data.labels("val"),
        predict_logits(model, ood_val) if len(ood_val) else None,
        [s.root for s in data.split.ood["val"]],
        calibration,
        rule,
        spec.classes,
    )
    run.write_calibration(calibration)
    return calibration


def _make_int8(
    out: Path, spec: ModelSpec, data: RunData, rule: UnknownRule, run: RunFolder, val: np.ndarray
) -> tuple[Path, dict[str, Any]]:
    """:func:`make_int8` of a run's export, from the run's data."""
    train_paths = data.paths("train")
    pick = spread(len(train_paths), INT8_RANGE_IMAGES)
    images = np.stack([data.cache.eval_array(train_paths[i]) for i in pick])
    ood_roots = [s.root for s in data.split.ood["val"]]
    calibration_set = (val, data.labels("val"), data.eval_arrays("val", ood=True), ood_roots)
    return make_int8(out, spec, images, calibration_set, rule, run.eval_int8.load_metrics())


def keep_int8_if_it_ships(
    int8_path: Path,
    comparison: dict[str, Any],
    calibration: dict[str, Any],
    decision: Int8Decision,
) -> dict[str, Any]:
    """Delete the INT8 copy unless it ships; return its INT8 report.

    Beside a model, an INT8 copy would become its default, so one that does not
    qualify must not stay.
    """
    if not decision.ships:
        int8_path.unlink()
    return {
        "int8": str(int8_path),
        "rule": INT8_RULE,
        "compare": comparison,
        "calibration": calibration,
        "ship_int8": decision.ships,
    }


def export_run(
    run_dir: Path,
    out: Path,
    int8: bool = False,
    *,
    model_version: str | None = None,
    cfg: TrainConfig | None = None,
    compare_seconds: float = COMPARE_SECONDS,
    compare_rounds: int = COMPARE_ROUNDS,
) -> dict[str, Any]:
    """Export the best checkpoint of a run, check ONNX parity and optionally quantise.

    Args:
        run_dir: A finished run folder (:meth:`RunFolder.missing_for_export` is empty).
        out: The fp32 ``.onnx`` to write.
        int8: Also make ``<out stem>.int8.onnx`` (activation ranges from training
            images, temperature and threshold refitted on its own val logits), compare
            it with the fp32 model on val images and write the comparison and the
            decision (:mod:`~leafid_train.int8_rule`) to the run's INT8 report.
            An INT8 copy beside a model is its default (:mod:`leafid.paths`), so the
            copy is kept only if it qualifies; without ``int8``, a copy left beside
            ``out`` by an earlier export is stale and removed.
        model_version: The version written into the spec; default: the run's. A new
            export of the same weights whose outputs differ needs a new version.
        cfg: The run's config when the caller has it loaded; default: read it.
        compare_seconds: Seconds per speed figure and model in the comparison.
        compare_rounds: Alternating timing rounds in the comparison.

    Returns:
        A report: paths, parity (max |logit difference|), with ``int8`` the comparison
        and ``int8_ship``, and ``int8_removed`` when an INT8 copy was deleted.

    Raises:
        InvalidRequestError: The run folder is incomplete.
        ModelError: The ONNX logits differ from torch's by more than 1e-3.
    """
    run = RunFolder(run_dir)
    missing = run.missing_for_export()
    if missing:
        raise InvalidRequestError(f"{run_dir} is not a finished run: {missing[0]} is missing")
    cfg = run.load_config() if cfg is None else cfg
    model, base = load_best(run.best, cfg)
    data = build_data(replace(cfg, verify=False), run.split)  # verified when it trained
    val = data.eval_arrays("val")
    # a run trained before taxonomy was recorded gets it from its roots now
    base = fill_taxonomy(base, data.spec.classes)
    spec = run_spec(
        base,
        cfg.resolved_model_version() if model_version is None else model_version,
        _with_backoff(run, model, base, data, val, UnknownRule.of(cfg)),
        run.eval.load_metrics(),
        # the OOD fractions let anyone re-make the split from the spec alone
        run.load_summary()["training_data"] | {"ood_split_fractions": list(cfg.ood_split)},
    )
    parity_batch = val[spread(len(val), PARITY_IMAGES)]
    unchecked = out.with_name(f".{out.name}.unchecked")  # ``out`` is replaced only if it passes
    try:
        export_onnx(model, spec, unchecked)
        diff = max_abs_diff(model, unchecked, parity_batch)
        if diff > PARITY_TOLERANCE:
            raise ModelError(f"ONNX logits differ from torch by {diff:.2e} (> {PARITY_TOLERANCE})")
        os.replace(unchecked, out)
    finally:
        unchecked.unlink(missing_ok=True)
    report: dict[str, Any] = {
        "onnx": str(out),
        "parity_max_abs_diff": diff,
        "spec": spec.model_name,
        "model_version": spec.model_version,
    }
    if int8:
        int8_path, int8_calibration = _make_int8(out, spec, data, UnknownRule.of(cfg), run, val)
        comparison = compare(
            out,
            int8_path,
            val,
            data.labels("val"),
            min_seconds=compare_seconds,
            rounds=compare_rounds,
        )
        decision = int8_decision(comparison, run.eval.load_metrics(), run.eval_int8.load_metrics())
        kept = keep_int8_if_it_ships(int8_path, comparison, int8_calibration, decision)
        run.write_int8_report(kept)
        report.update(int8=str(int8_path), int8_compare=comparison, int8_ship=decision.ships)
        if not decision.ships:
            report["int8_removed"] = True
    elif int8_copy_path(out).is_file():  # made from an older fp32 model: stale
        int8_copy_path(out).unlink()
        report["int8_removed"] = True
    run.write_export(report)
    return report
