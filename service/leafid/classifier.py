"""The inference core: one onnxruntime session, calibrated top-k, unknown, fusion."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from leafid.errors import InvalidModelError, InvalidRequestError, ModelNotFoundError
from leafid.images import ImageLimits, decode
from leafid.paths import default_model_path
from leafid.preprocess import preprocess
from leafid.results import Candidate, Prediction
from leafid.spec import METADATA_KEY, ModelSpec

log = logging.getLogger(__name__)


def load_spec(session: ort.InferenceSession) -> ModelSpec:
    """Read the leafid spec from an onnxruntime session's custom metadata.

    Raises:
        InvalidModelError: The model has no (valid) leafid metadata.
    """
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise InvalidModelError(
            f"model has no leafid metadata (key {METADATA_KEY!r}); export it with 'leafid export'"
        )
    return ModelSpec.from_json(meta[METADATA_KEY])


def make_session(
    path: str | os.PathLike[str] | bytes, threads: int = 0, spin: bool = False
) -> ort.InferenceSession:
    """The CPU onnxruntime session leafid runs a model with.

    Args:
        path: The ONNX file, or a serialised model in memory.
        threads: Intra-op threads (0 lets onnxruntime choose).
        spin: Let idle intra-op threads spin-wait for the next operator (onnxruntime's
            default). Off by default: leafid usually decodes images on the same cores,
            and spinning threads take CPU from the decoders. On, when the model has the
            cores to itself, batch-1 latency on 2 threads fell from 3.0-4.2 ms to 2.3-2.4 ms
            here (the shipped INT8 model).

    Raises:
        InvalidModelError: onnxruntime cannot load the file.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    try:
        return ort.InferenceSession(
            path if isinstance(path, bytes) else str(path),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        what = "in memory" if isinstance(path, bytes) else str(path)
        raise InvalidModelError(f"cannot load ONNX model {what}: {exc}") from exc


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


class Classifier:
    """An ONNX leaf classifier, loaded once and used for many images.

    Args:
        model_path: The ONNX file; defaults to ``$LEAFID_MODEL`` or the shipped model.
        threads: onnxruntime intra-op threads (0 lets onnxruntime choose).
        threshold: Overrides the spec's unknown threshold when not None.
        limits: Byte and pixel limits for decoding.
        spin: Let idle onnxruntime threads spin (see :func:`make_session`): for a model
            that has the cores to itself.

    Raises:
        ModelNotFoundError: ``model_path`` does not exist.
        InvalidModelError: The file is not a usable leafid ONNX model.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        threads: int = 0,
        threshold: float | None = None,
        limits: ImageLimits | None = None,
        spin: bool = False,
    ) -> None:
        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}")
        self.session = make_session(path, threads, spin)
        self.path = path
        self.spec = load_spec(self.session)
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise InvalidRequestError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = self.spec.unknown_threshold if threshold is None else threshold
        self.limits = limits or ImageLimits()
        self._input_name = self._check_io()

    def _check_io(self) -> str:
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise InvalidModelError("model must have exactly one input and an output")
        size = self.spec.input_size
        want = [size, size, 3] if self.spec.input_format == "uint8_nhwc" else [3, size, size]
        want_type = "tensor(uint8)" if self.spec.input_format == "uint8_nhwc" else "tensor(float)"
        shape = list(inputs[0].shape)
        if inputs[0].type != want_type or len(shape) != 4 or shape[1:] != want:
            raise InvalidModelError(
                f"model input is {inputs[0].type} {shape}, spec says {want_type} [N, *{want}]"
            )
        out_shape = outputs[0].shape
        n_classes = len(self.spec.classes)
        if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != n_classes):
            raise InvalidModelError(
                f"model output shape {out_shape} does not match {n_classes} classes"
            )
        return str(inputs[0].name)

    @property
    def model_version(self) -> str:
        """The spec's model version."""
        return self.spec.model_version

    def load(self, data: bytes) -> np.ndarray:
        """Decode encoded image bytes and preprocess them into one model input."""
        img = decode(data, self.limits, min_side=self.spec.resize_size)
        return preprocess(img, self.spec)

    def prepare(self, img: Image.Image) -> np.ndarray:
        """Preprocess an already decoded RGB image into one model input."""
        return preprocess(img, self.spec)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for a batch of preprocessed inputs.

        Args:
            batch: Stacked outputs of :meth:`load`/:meth:`prepare`, batch axis first.

        Returns:
            Array (N, n_classes) of ``softmax(logits / temperature)``.
        """
        (logits,) = self.session.run(None, {self._input_name: batch})[:1]
        if logits.shape != (batch.shape[0], len(self.spec.classes)):
            raise InvalidModelError(
                f"model returned shape {logits.shape}, want ({batch.shape[0]}, "
                f"{len(self.spec.classes)})"
            )
        return softmax(logits, self.spec.temperature)

    def predictions(self, probs: np.ndarray, top_k: int = 5) -> list[Prediction]:
        """Turn rows of calibrated probabilities into ranked predictions."""
        if top_k < 1:
            raise InvalidRequestError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, probs.shape[1])
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            results = tuple(
                Candidate(
                    slug=self.spec.classes[i].slug,
                    scientific_name=self.spec.classes[i].scientific_name,
                    common_name=self.spec.classes[i].common_name,
                    score=float(row[i]),
                )
                for i in order
            )
            best = results[0].score
            unknown = best < self.threshold
            reason = (
                f"best score {best:.3f} is under the unknown threshold {self.threshold:.3f}"
                if unknown
                else None
            )
            out.append(Prediction(results, unknown, reason, self.model_version))
        return out

    def classify_arrays(self, batch: np.ndarray, top_k: int = 5) -> list[Prediction]:
        """Predictions for a batch of preprocessed inputs, one per input."""
        return self.predictions(self.probabilities(batch), top_k)

    def classify(self, images: Sequence[Image.Image], top_k: int = 5) -> list[Prediction]:
        """Classify decoded RGB images independently, in one onnxruntime call."""
        if not images:
            return []
        return self.classify_arrays(np.stack([self.prepare(im) for im in images]), top_k)

    def fuse(self, probs: np.ndarray, top_k: int = 5) -> Prediction:
        """One answer from the calibrated probabilities of several photos of one plant.

        The photos' log-probabilities are averaged and renormalised.
        """
        if probs.shape[0] == 0:
            raise InvalidRequestError("identify needs at least one image")
        mean_log = np.log(np.clip(probs, 1e-12, 1.0)).mean(axis=0, keepdims=True)
        return self.predictions(softmax(mean_log), top_k)[0]

    def identify_arrays(self, batch: np.ndarray, top_k: int = 5) -> Prediction:
        """One fused answer for several preprocessed photos of the same plant."""
        if batch.shape[0] == 0:
            raise InvalidRequestError("identify needs at least one image")
        return self.fuse(self.probabilities(batch), top_k)

    def identify(self, images: Sequence[Image.Image], top_k: int = 5) -> Prediction:
        """One fused answer for several decoded photos of the same plant."""
        if not images:
            raise InvalidRequestError("identify needs at least one image")
        return self.identify_arrays(np.stack([self.prepare(im) for im in images]), top_k)
