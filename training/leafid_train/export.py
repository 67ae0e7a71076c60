"""Export a :class:`~leafid_train.backbone.LeafNet` to ONNX with the leafid spec inside.

The graph takes ``image``: uint8 [batch, S, S, 3] RGB and returns ``logits``: float32
[batch, n_classes], then ``embedding``: the pooled features the head reads [batch, C] (for
reference-photo search and new heads), and ``class_maps``: each class's activation map
[batch, n_classes, h, w], whose spatial mean is the logit (where the model looked). The
calibration temperature is not in the graph; the :class:`leafid.Classifier` applies
``spec.temperature``.

Needs the [train] extra (torch, onnx, onnxscript).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxscript  # noqa: F401  (torch's exporter needs it)
import torch

from leafid import __version__
from leafid.classifier import CLASS_MAPS_OUTPUT, EMBEDDING_OUTPUT, LOGITS_OUTPUT, make_session
from leafid.errors import InvalidRequestError
from leafid.spec import METADATA_KEY, ModelSpec
from leafid_train.backbone import LeafNet
from leafid_train.graph_rewrite import global_average_pools

log = logging.getLogger(__name__)

INPUT_NAME = "image"
PRODUCER = "leafid_train"
MIN_OPSET = 18  # the lowest opset torch's (dynamo) exporter implements


def export_onnx(model: LeafNet, spec: ModelSpec, out: Path, *, opset: int = MIN_OPSET) -> Path:
    """Write ``model`` as an ONNX file whose metadata holds ``spec``.

    Uses torch's ``torch.export``-based exporter (needs ``onnxscript``). The model is
    put in eval mode. Spatial means become ``GlobalAveragePool``
    (:func:`~leafid_train.graph_rewrite.global_average_pools`). The file is checked with
    ``onnx.checker`` (full check) and written atomically.

    Args:
        model: The trained network (uint8 NHWC input).
        spec: The spec to embed; must be ``uint8_nhwc`` and match the model's outputs.
        out: Destination ``.onnx`` path.
        opset: ONNX opset version (>= :data:`MIN_OPSET`).

    Returns:
        ``out``.

    Raises:
        InvalidRequestError: The spec's input format is not ``uint8_nhwc``, the opset
            is too old, or the model's output does not have one logit per class.
    """
    if spec.input_format != "uint8_nhwc":
        raise InvalidRequestError(
            f"export needs a uint8_nhwc spec (normalisation is inside LeafNet), "
            f"got {spec.input_format}"
        )
    if opset < MIN_OPSET:
        raise InvalidRequestError(f"opset must be >= {MIN_OPSET}, got {opset}")
    model.eval()
    size = spec.input_size
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with torch.no_grad():
        n_out = model(example).shape[-1]
    if n_out != len(spec.classes):
        raise InvalidRequestError(
            f"model has {n_out} outputs but the spec has {len(spec.classes)} classes"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        _AllOutputs(model).eval(),
        (example,),
        input_names=[INPUT_NAME],
        output_names=[LOGITS_OUTPUT, EMBEDDING_OUTPUT, CLASS_MAPS_OUTPUT],
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    if program is None:  # pragma: no cover - only for the TorchScript exporter
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    global_average_pools(proto)
    set_metadata(proto, spec)
    proto.doc_string = f"leafid {spec.model_name} {spec.model_version}: uint8 RGB image -> logits"
    save_onnx(proto, out)
    return out


class _AllOutputs(torch.nn.Module):
    """The exported graph: :meth:`LeafNet.forward_outputs` as the module's forward."""

    def __init__(self, model: LeafNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, embedding and class activation maps of a uint8 NHWC batch."""
        return self.model.forward_outputs(x)


def set_metadata(proto: onnx.ModelProto, spec: ModelSpec) -> None:
    """Store ``spec`` under :data:`METADATA_KEY` and set producer fields of ``proto``."""
    props = {p.key: p.value for p in proto.metadata_props}
    props[METADATA_KEY] = spec.to_json()
    onnx.helper.set_model_props(proto, props)
    proto.producer_name = PRODUCER
    proto.producer_version = __version__
    proto.model_version = 1


def save_onnx(proto: onnx.ModelProto, out: Path) -> None:
    """Check ``proto`` fully and write it to ``out`` atomically (temp file + rename)."""
    onnx.checker.check_model(proto, full_check=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)


def onnx_logits(onnx_path: Path | bytes, batch: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Raw logits (no temperature) of an exported model on preprocessed inputs.

    Args:
        onnx_path: An exported (fp32 or int8) model, or its serialised bytes.
        batch: uint8 array (N, S, S, 3), N >= 1.
        batch_size: Inputs per onnxruntime call.
    """
    session = make_session(onnx_path)
    return np.concatenate(
        [
            session.run([LOGITS_OUTPUT], {INPUT_NAME: batch[i : i + batch_size]})[0]
            for i in range(0, len(batch), batch_size)
        ]
    )


def max_abs_diff(model: LeafNet, onnx_path: Path, batch: np.ndarray) -> float:
    """Largest absolute logit difference between ``model`` and the ONNX file.

    Args:
        model: The torch model (put in eval mode).
        onnx_path: Its export.
        batch: uint8 array (N, S, S, 3), e.g. stacked :func:`leafid.preprocess.preprocess`
            outputs.
    """
    model.eval()
    with torch.no_grad():
        expected = model(torch.tensor(batch)).numpy()
    return float(np.max(np.abs(expected - onnx_logits(onnx_path, batch))))
