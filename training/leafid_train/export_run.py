"""``leafid export``: turn a finished run into a self-describing ONNX model."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from leafid.errors import InvalidRequestError, ModelError
from leafid.paths import int8_copy_path
from leafid.spec import ModelSpec
from leafid_train.calibrate import calibration_report
from leafid_train.config import TrainConfig
from leafid_train.export import export_onnx, max_abs_diff, onnx_logits, save_onnx, set_metadata
from leafid_train.quantize import compare, int8_decision, quantize_int8
from leafid_train.train import RunData, build_data, load_best

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-3
PARITY_IMAGES = 8
INT8_CALIBRATION_IMAGES = 128
# Speed figures of the int8-vs-fp32 decision: 6 s per figure and model, in 6 alternating
# rounds, so that a busy shared machine moves both models alike.
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


def _spread(n: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    return (
        np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(int)) if n else np.array([])
    )


def headline_metrics(
    run_dir: Path, calibration: dict[str, Any] | None = None, eval_dir: str = "eval"
) -> dict[str, Any]:
    """Val figures of a calibration report (+ test figures of ``RUN/<eval_dir>/metrics.json``).

    Args:
        run_dir: The run folder.
        calibration: The calibration report; default: the run's ``calibration.json``.
        eval_dir: The evaluation folder of the model in question (``eval_int8`` for the
            INT8 copy).
    """
    if calibration is None:
        calibration = json.loads((run_dir / "calibration.json").read_text())
    metrics: dict[str, Any] = {"val": {k: calibration[k] for k in VAL_KEYS}}
    eval_file = run_dir / eval_dir / "metrics.json"
    if eval_file.is_file():
        ev = json.loads(eval_file.read_text())
        keys = ("split", "images", "top1", "top5", "ece", "unknown_rate", "per_dataset", "ood")
        metrics["test"] = {k: ev[k] for k in keys if k in ev}
    return metrics


def run_spec(
    run_dir: Path, base: ModelSpec, cfg: TrainConfig, model_version: str | None = None
) -> ModelSpec:
    """The spec to ship: the trained spec plus calibration, metrics and data summary.

    ``model_version`` replaces the run's version (a new export of the same weights).
    """
    calibration = json.loads((run_dir / "calibration.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    return base.replace(
        model_version=cfg.model_version if model_version is None else model_version,
        temperature=float(calibration["temperature"]),
        unknown_threshold=float(calibration["unknown_threshold"]),
        metrics=headline_metrics(run_dir),
        training_data=summary["training_data"],
    )


def calibrate_int8(
    int8_path: Path, spec: ModelSpec, data: RunData, cfg: TrainConfig, images: int, run_dir: Path
) -> tuple[ModelSpec, dict[str, Any]]:
    """Refit temperature and unknown threshold on the int8 model's own val (+ OOD val) logits.

    Quantisation moves the logits, so the fp32 model's temperature and threshold do not
    fit the int8 copy. The same val and OOD val images as the run's calibration are used.

    Args:
        int8_path: The quantised model.
        spec: The fp32 model's spec (classes, preprocessing, training data).
        data: The run's data (its split).
        cfg: The run's config (``keep_fraction``).
        images: Number of training images the activation ranges were calibrated on.
        run_dir: The run folder (test figures of ``eval_int8/``, once evaluated).

    Returns:
        The int8 model's spec and its calibration report.
    """
    logits = onnx_logits(int8_path, data.eval_arrays("val"))
    ood_val = data.eval_arrays("val", ood=True)
    ood = onnx_logits(int8_path, ood_val) if len(ood_val) else None
    report = calibration_report(logits, data.labels("val"), ood, keep=cfg.keep_fraction)
    int8_spec = spec.replace(
        temperature=float(report["temperature"]),
        unknown_threshold=float(report["unknown_threshold"]),
        metrics=headline_metrics(run_dir, report, "eval_int8"),
        training_data={
            **spec.training_data,
            "quantization": (
                f"static int8 QDQ (onnxruntime, per-channel weights), activation ranges from "
                f"{images} training images; temperature and unknown threshold refitted on "
                "this model's val logits"
            ),
        },
    )
    return int8_spec, report


def export_run(
    run_dir: Path,
    out: Path,
    int8: bool = False,
    *,
    model_version: str | None = None,
    compare_seconds: float = COMPARE_SECONDS,
    compare_rounds: int = COMPARE_ROUNDS,
) -> dict[str, Any]:
    """Export the best checkpoint of a run, check ONNX parity and optionally quantise.

    Args:
        run_dir: A finished run folder (``best.pt``, ``config.json``, ``split.json``,
            ``calibration.json``, ``summary.json``).
        out: The fp32 ``.onnx`` to write.
        int8: Also make ``<out stem>.int8.onnx`` (activation ranges from training
            images, temperature and threshold refitted on its own val logits), compare
            it with the fp32 model on val images and write the decision
            (:func:`~leafid_train.quantize.int8_decision`) to ``RUN/int8_report.json``.
            An INT8 copy beside a model is its default (:mod:`leafid.paths`), so the
            copy is kept only if it qualifies; without ``int8``, a copy left beside
            ``out`` by an earlier export is stale and removed.
        model_version: The version written into the spec; default: the run's. A new
            export of the same weights whose outputs differ needs a new version.
        compare_seconds: Seconds per speed figure and model in the comparison.
        compare_rounds: Alternating timing rounds in the comparison.

    Returns:
        A report: paths, parity (max |logit difference|), with ``int8`` the comparison
        and ``int8_ship``, and ``int8_removed`` when an INT8 copy was deleted.

    Raises:
        InvalidRequestError: The run folder is incomplete.
        ModelError: The ONNX logits differ from torch's by more than 1e-3.
    """
    for name in ("best.pt", "config.json", "split.json", "calibration.json", "summary.json"):
        if not (run_dir / name).is_file():
            raise InvalidRequestError(f"{run_dir} is not a finished run: {name} is missing")
    cfg = TrainConfig.load(run_dir / "config.json")
    model, base = load_best(run_dir, cfg)
    spec = run_spec(run_dir, base, cfg, model_version)
    cfg.verify = False  # the run was verified when it trained
    data = build_data(cfg, run_dir / "split.json")
    val = data.eval_arrays("val")
    parity_batch = val[_spread(len(val), PARITY_IMAGES)]
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
        train_paths = data.paths("train")
        pick = _spread(len(train_paths), INT8_CALIBRATION_IMAGES)
        calibration = np.stack([data.cache.eval_array(train_paths[i]) for i in pick])
        int8_path = int8_copy_path(out)
        quantize_int8(out, int8_path, calibration)
        int8_spec, int8_calibration = calibrate_int8(int8_path, spec, data, cfg, len(pick), run_dir)
        proto = onnx.load(str(int8_path))
        set_metadata(proto, int8_spec)
        save_onnx(proto, int8_path)
        comparison = compare(
            out,
            int8_path,
            val,
            data.labels("val"),
            min_seconds=compare_seconds,
            rounds=compare_rounds,
        )
        int8_report = {
            "int8": str(int8_path),
            "rule": (
                "faster at batch 1 and 16, top-1 drop <= 0.5 points on val and, once both "
                "models were evaluated, on test"
            ),
            "compare": comparison,
            "calibration": int8_calibration,
        }
        report_path = run_dir / "int8_report.json"
        report_path.write_text(json.dumps(int8_report, indent=2) + "\n")
        decision = int8_decision(run_dir)  # reads the report just written
        ship = bool(decision and decision["ships"])
        report_path.write_text(json.dumps({**int8_report, "ship_int8": ship}, indent=2) + "\n")
        report.update(int8=str(int8_path), int8_compare=comparison, int8_ship=ship)
        if not ship:  # beside a model, an INT8 copy would become its default
            int8_path.unlink()
            report["int8_removed"] = True
    elif int8_copy_path(out).is_file():  # made from an older fp32 model: stale
        int8_copy_path(out).unlink()
        report["int8_removed"] = True
    (run_dir / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
