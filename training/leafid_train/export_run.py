"""``leafid export``: turn a finished run into a self-describing ONNX model."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from leafid.errors import InvalidRequestError, ModelError
from leafid.spec import ModelSpec
from leafid_train.config import TrainConfig
from leafid_train.export import export_onnx, max_abs_diff
from leafid_train.quantize import compare, quantize_int8
from leafid_train.train import build_data, load_best

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-3
PARITY_IMAGES = 8
INT8_CALIBRATION_IMAGES = 128


def _spread(n: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    return (
        np.unique(np.linspace(0, n - 1, num=min(n, k)).round().astype(int)) if n else np.array([])
    )


def headline_metrics(run_dir: Path) -> dict[str, Any]:
    """Val figures of ``calibration.json`` (+ test figures of ``eval/metrics.json``)."""
    calibration = json.loads((run_dir / "calibration.json").read_text())
    metrics: dict[str, Any] = {
        "val": {
            k: calibration[k]
            for k in (
                "val_images",
                "val_top1",
                "ece_before",
                "ece_after",
                "ood_auroc",
                "ood_rejected",
                "val_unknown_rate",
            )
        }
    }
    eval_file = run_dir / "eval" / "metrics.json"
    if eval_file.is_file():
        ev = json.loads(eval_file.read_text())
        keys = ("split", "images", "top1", "top5", "ece", "unknown_rate", "per_dataset", "ood")
        metrics["test"] = {k: ev[k] for k in keys if k in ev}
    return metrics


def run_spec(run_dir: Path, base: ModelSpec, cfg: TrainConfig) -> ModelSpec:
    """The spec to ship: the trained spec plus calibration, metrics and data summary."""
    calibration = json.loads((run_dir / "calibration.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    return base.replace(
        model_version=cfg.model_version,
        temperature=float(calibration["temperature"]),
        unknown_threshold=float(calibration["unknown_threshold"]),
        metrics=headline_metrics(run_dir),
        training_data=summary["training_data"],
    )


def export_run(run_dir: Path, out: Path, int8: bool = False) -> dict[str, Any]:
    """Export the best checkpoint of a run, check ONNX parity and optionally quantise.

    Args:
        run_dir: A finished run folder (``best.pt``, ``config.json``, ``split.json``,
            ``calibration.json``, ``summary.json``).
        out: The fp32 ``.onnx`` to write.
        int8: Also write ``<out stem>.int8.onnx``, calibrated on training images, and
            compare it with the fp32 model on val images.

    Returns:
        A report: paths, parity (max |logit difference|) and the int8 comparison.

    Raises:
        InvalidRequestError: The run folder is incomplete.
        ModelError: The ONNX logits differ from torch's by more than 1e-3.
    """
    for name in ("best.pt", "config.json", "split.json", "calibration.json", "summary.json"):
        if not (run_dir / name).is_file():
            raise InvalidRequestError(f"{run_dir} is not a finished run: {name} is missing")
    cfg = TrainConfig.load(run_dir / "config.json")
    model, base = load_best(run_dir, cfg)
    spec = run_spec(run_dir, base, cfg)
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
    }
    if int8:
        train_paths = data.paths("train")
        pick = _spread(len(train_paths), INT8_CALIBRATION_IMAGES)
        calibration = np.stack([data.cache.eval_array(train_paths[i]) for i in pick])
        int8_path = out.with_name(out.stem + ".int8.onnx")
        quantize_int8(out, int8_path, calibration)
        report["int8"] = str(int8_path)
        report["int8_compare"] = compare(out, int8_path, val, data.labels("val"))
    (run_dir / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
