"""Static INT8 (QDQ) quantisation of an exported model, and an fp32-vs-int8 comparison.

The INT8 model keeps the same inputs, outputs and leafid spec metadata, so the
:class:`leafid.Classifier` loads either file. Whether it ships is decided by
:mod:`leafid_train.int8_rule`.

Needs the [train] extra (onnx).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from leafid.classifier import LOGITS_OUTPUT, make_session
from leafid.errors import InvalidRequestError
from leafid.spec import METADATA_KEY
from leafid_train.export import INPUT_NAME
from leafid_train.graph_rewrite import input_quant_overrides, uint8_image_input

log = logging.getLogger(__name__)


class _BatchReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds a uint8 NHWC array to the calibrator in small batches."""

    def __init__(self, images: np.ndarray, batch_size: int = 8) -> None:
        self._batches = iter(
            [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}


def quantize_int8(
    fp32_path: Path,
    range_images: np.ndarray,
    *,
    per_channel: bool = True,
    unsigned_activations: bool = True,
) -> onnx.ModelProto:
    """A static INT8 QDQ copy of an exported fp32 model, in memory.

    Activation ranges are calibrated (min/max) on ``range_images``: real preprocessed
    training images, except the normalised image's: where the normalisation is exact in
    uint8 (and activations are uint8), it gets those exact parameters and the image goes
    straight to the first quantised op (:mod:`leafid_train.graph_rewrite`).
    The leafid metadata is copied unchanged; write the copy with
    :func:`leafid_train.export.save_onnx` (full ``onnx.checker``, atomic), after
    changing its spec if need be.

    Args:
        fp32_path: The model written by :func:`leafid_train.export.export_onnx`.
        range_images: uint8 array (N, S, S, 3), N >= 1 (a few hundred is plenty).
        per_channel: Quantise conv weights per output channel.
        unsigned_activations: uint8 activations with int8 weights ("U8S8"), else int8
            for both ("S8S8"). U8S8 is the faster kind on CPUs with AVX512-VNNI;
            onnxruntime notes that U8S8 can saturate on x86 CPUs without VNNI, where
            S8S8 is the safe choice.

    Raises:
        InvalidRequestError: ``range_images`` has the wrong type or shape.
    """
    fp32_path = Path(fp32_path)
    if range_images.dtype != np.uint8 or range_images.ndim != 4 or len(range_images) == 0:
        raise InvalidRequestError(
            f"range_images must be a non-empty uint8 [N, H, W, 3] array, got "
            f"{range_images.dtype} {range_images.shape}"
        )
    source = onnx.load(str(fp32_path))
    with tempfile.TemporaryDirectory(dir=fp32_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        # uint8 activations: the normalised image gets its exact uint8 parameters, so
        # that uint8_image_input can drop the float normalisation below.
        overrides = input_quant_overrides(onnx.load(str(prepared))) if unsigned_activations else {}
        quantize_static(
            str(prepared),
            str(quantized),
            _BatchReader(range_images),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8 if unsigned_activations else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"TensorQuantOverrides": overrides},
        )
        proto = onnx.load(str(quantized))
    uint8_image_input(proto)
    onnx.helper.set_model_props(proto, {p.key: p.value for p in source.metadata_props})
    for field in ("producer_name", "producer_version", "model_version", "doc_string"):
        setattr(proto, field, getattr(source, field))
    if METADATA_KEY not in {p.key for p in proto.metadata_props}:
        log.warning("%s has no leafid metadata; the int8 copy has none either", fp32_path)
    return proto


def _run(session: Any, images: np.ndarray) -> None:
    session.run([LOGITS_OUTPUT], {INPUT_NAME: images})


def _images_per_second(session: Any, images: np.ndarray, seconds: float) -> float:
    """Throughput over at least ``seconds`` and at least 2 runs."""
    runs, start = 0, time.perf_counter()
    while True:
        _run(session, images)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and runs >= 2:
            return runs * len(images) / elapsed


def compare(
    fp32_path: Path,
    int8_path: Path,
    batch: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    threads: int = 0,
    min_seconds: float = 1.0,
    rounds: int = 3,
) -> dict[str, Any]:
    """Compare an fp32 model and its INT8 copy on the same images.

    Speeds are measured after a warm-up, alternating between the two models for
    ``rounds`` rounds and keeping each model's best round, so that other load on the
    machine disturbs both alike.

    Args:
        fp32_path: The fp32 ONNX file.
        int8_path: Its quantised copy.
        batch: uint8 array (N, S, S, 3) of preprocessed images (held-out ones).
        labels: Optional true class indices (N,), to report each model's top-1 accuracy.
        threads: onnxruntime intra-op threads (0: onnxruntime's choice).
        min_seconds: Time spent on each speed figure of each model, over all rounds.
        rounds: Number of alternating timing rounds.

    Returns:
        ``{"n", "top1_agreement", "fp32": {...}, "int8": {...}}``; each model's dict has
        ``size_mb``, ``images_per_s_b1``, ``images_per_s_b16`` and, with labels,
        ``top1``.
    """
    if batch.dtype != np.uint8 or batch.ndim != 4 or len(batch) == 0:
        raise InvalidRequestError(
            f"batch must be a non-empty uint8 [N, H, W, 3] array, got {batch.dtype} {batch.shape}"
        )
    if labels is not None and labels.shape != (len(batch),):
        raise InvalidRequestError(f"labels shape {labels.shape} does not match {len(batch)} images")
    inputs = {
        "images_per_s_b1": np.ascontiguousarray(batch[:1]),
        "images_per_s_b16": np.ascontiguousarray(np.resize(batch, (16, *batch.shape[1:]))),
    }
    paths = {"fp32": Path(fp32_path), "int8": Path(int8_path)}
    sessions = {name: make_session(path, threads) for name, path in paths.items()}
    result: dict[str, Any] = {"n": len(batch)}
    top1 = {}
    for name, session in sessions.items():
        logits = np.concatenate(
            [
                session.run([LOGITS_OUTPUT], {INPUT_NAME: batch[i : i + 16]})[0]
                for i in range(0, len(batch), 16)
            ]
        )
        top1[name] = logits.argmax(axis=1)
        result[name] = {"size_mb": paths[name].stat().st_size / 1e6}
        if labels is not None:
            result[name]["top1"] = float(np.mean(top1[name] == labels))
        for key, images in inputs.items():
            _run(session, images)  # warm-up
            result[name][key] = 0.0
    for _ in range(rounds):
        for name, session in sessions.items():
            for key, images in inputs.items():
                speed = _images_per_second(session, images, min_seconds / rounds)
                result[name][key] = max(result[name][key], speed)
    result["top1_agreement"] = float(np.mean(top1["fp32"] == top1["int8"]))
    return result
