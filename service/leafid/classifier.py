"""The inference core: one onnxruntime session, calibrated top-k, unknown, fusion.

Many images are answered in two steps, the same for every caller (``leafid classify``,
``leafid identify``, the service, evaluation): :meth:`Classifier.try_load` turns each
input into a model input or the typed :class:`~leafid.errors.ImageError` saying why it
cannot be used, then :meth:`Classifier.classify_loaded` (or
:meth:`Classifier.identify_loaded`) runs the model on the good ones and puts each error
back in its place. The images of one request are loaded with one
:class:`~leafid.images.DecodeBudget` (:meth:`Classifier.load_request`), so that a
request of many costly images is bounded in time too: each image past the budget gets
its own :class:`~leafid.errors.TooLargeError`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort
from PIL import Image

from leafid.errors import (
    ImageError,
    InvalidModelError,
    InvalidRequestError,
    MissingOutputError,
    ModelNotFoundError,
)
from leafid.flora import Flora
from leafid.images import DecodeBudget, ImageLimits, decode, decoded, read_bytes
from leafid.paths import default_model_path
from leafid.preprocess import preprocess
from leafid.results import (
    LOW_SCORE,
    PHOTOS_DISAGREE,
    Candidate,
    Identification,
    PhotoPick,
    Prediction,
    TaxonMatch,
)
from leafid.spec import METADATA_KEY, TAXON_RANKS, ModelSpec
from leafid.taxonomy import HESITATION, Taxa, back_off

log = logging.getLogger(__name__)

ImageInput = bytes | str | os.PathLike[str]
"""One image to answer: its encoded bytes (an upload) or the path of its file."""

Loaded = np.ndarray | ImageError
"""One image after :meth:`Classifier.try_load`: a model input, or why there is none."""

T = TypeVar("T")
_END = object()

LOGITS_OUTPUT = "logits"
"""The name exported models give their first output, the logits (read by position here)."""
EMBEDDING_OUTPUT = "embedding"
"""The output holding each input's pooled features, the vector the linear head reads."""
CLASS_MAPS_OUTPUT = "class_maps"
"""The output holding each class's activation map [K, h, w]; a map's mean is its logit."""


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
            and spinning threads take CPU from the decoders. On when the model has the
            cores to itself: a thread that spins starts the next operator sooner than
            one that sleeps, which lowers small-batch latency.

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


def decode_input(data: bytes, spec: ModelSpec, limits: ImageLimits) -> Image.Image:
    """Decode image bytes for a model with this spec (JPEGs drafted down to its resize size).

    Raises:
        ImageError: The bytes are not a usable image (see :func:`leafid.images.decode`).
    """
    return decode(data, limits, min_side=spec.resize_size)


def in_place(loaded: Sequence[Loaded], answers: Iterable[T]) -> list[T | ImageError]:
    """The answers of the good inputs in their places, each error left where it was.

    Args:
        loaded: Inputs after :meth:`Classifier.try_load`.
        answers: One answer per good input, in order.
    """
    todo = iter(answers)
    out: list[T | ImageError] = [
        item if isinstance(item, ImageError) else next(todo) for item in loaded
    ]
    if next(todo, _END) is not _END:
        raise ValueError("more answers than good inputs")
    return out


def usable(loaded: Sequence[Loaded], names: Sequence[str]) -> list[np.ndarray]:
    """The model inputs of the photos of one plant that could be used.

    Raises:
        InvalidRequestError: There are no photos.
        ImageError: None of the photos could be used: the first photo's error, its
            name in front of the message.
    """
    if len(loaded) != len(names):
        raise ValueError("one name per photo")
    if not loaded:
        raise InvalidRequestError("identify needs at least one image")
    good = [item for item in loaded if isinstance(item, np.ndarray)]
    if not good:
        first = loaded[0]
        assert isinstance(first, ImageError)
        raise _named(first, names[0]) from first
    return good


def _named(exc: ImageError, name: str) -> ImageError:
    """The same kind of error, with the image's name in front of the message."""
    return type(exc)(f"{name}: {exc}")


def _without_frames(exc: ImageError) -> ImageError:
    """``exc`` with the tracebacks of it and its causes dropped.

    A kept error's traceback holds the frames of the failed decode, and with them the
    image's bytes (and the list the error is kept in: a cycle that only a full garbage
    collection frees), so a request's failed photos would stay in memory.
    """
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        err.__traceback__ = None
        err = err.__cause__ or err.__context__
    return exc


def photos_disagree(
    answers: Sequence[Prediction | ImageError], names: Sequence[str]
) -> tuple[PhotoPick, ...]:
    """The photos whose own confident answers name different species, if any do.

    A photo counts when its own answer is a species (its best score is at or over
    the unknown threshold); the photos disagree when those answers name two or more
    species. Unsure photos (unknown, or answered at genus or family rank) do not count:
    a blurred photo beside a sharp one is no sign of two plants.

    Returns:
        Each confident photo with its best candidate, in order, when they name two or
        more species; empty otherwise.
    """
    picks = tuple(
        PhotoPick(i, names[i], answer.results[0])
        for i, answer in enumerate(answers)
        if isinstance(answer, Prediction) and answer.rank == "species"
    )
    return picks if len({p.candidate.slug for p in picks}) > 1 else ()


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
        self.flora: Flora | None = None
        self._input_name = self._check_io()
        self._output_name = str(self.session.get_outputs()[0].name)
        thresholds = self.spec.taxon_thresholds
        self._taxa = [Taxa.of(self.spec.classes, r) for r in TAXON_RANKS if r in thresholds]
        self._output_names = frozenset(str(o.name) for o in self.session.get_outputs())

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

    def with_flora(self, flora: Flora | None) -> Classifier:
        """This classifier (sharing its session) answering among ``flora``'s classes only.

        None: among all classes.
        """
        restricted = copy.copy(self)
        restricted.flora = flora
        return restricted

    @property
    def model_version(self) -> str:
        """The spec's model version."""
        return self.spec.model_version

    def load(self, data: bytes, budget: DecodeBudget | None = None) -> np.ndarray:
        """Decode encoded image bytes and preprocess them into one model input.

        Args:
            data: The encoded image.
            budget: The request's decode budget to take the image's cost from, if any.

        Raises:
            ImageError: The bytes are not a usable image.
        """
        # the decoded image counts against concurrent decodes until it is preprocessed
        with decoded(data, self.limits, self.spec.resize_size, budget) as img:
            return preprocess(img, self.spec)

    def try_load(self, image: ImageInput, budget: DecodeBudget | None = None) -> Loaded:
        """Read (a path, with :attr:`limits`), decode and preprocess one image.

        Args:
            image: Encoded bytes or a file path.
            budget: The request's decode budget (see :meth:`load_request`), if any.

        Returns:
            The model input, or the :class:`~leafid.errors.ImageError` saying why the
            image cannot be used (returned, not raised: one bad image of many is not
            a failure of the others).
        """
        try:
            data = image if isinstance(image, bytes) else read_bytes(image, self.limits)
            return self.load(data, budget)
        except ImageError as exc:
            return _without_frames(exc)

    def request_budget(self) -> DecodeBudget:
        """A fresh decode budget for one request (``limits.max_request_decode_bytes``)."""
        return DecodeBudget(self.limits)

    def load_request(self, images: Sequence[ImageInput]) -> list[Loaded]:
        """:meth:`try_load` the images of one request, in order, with one decode budget.

        An image whose decode cost no longer fits the budget gets its own
        :class:`~leafid.errors.TooLargeError`; the others are loaded.
        """
        budget = self.request_budget()
        return [self.try_load(image, budget) for image in images]

    def prepare(self, img: Image.Image) -> np.ndarray:
        """Preprocess an already decoded RGB image into one model input."""
        return preprocess(img, self.spec)

    def require_output(self, name: str, purpose: str) -> None:
        """Check that the model has the output ``name`` (newer models have more outputs).

        Args:
            name: The output, e.g. :data:`EMBEDDING_OUTPUT`.
            purpose: What needs it, for the message (e.g. "find similar reference photos").

        Raises:
            MissingOutputError: The model predates that output.
        """
        if name not in self._output_names:
            raise MissingOutputError(
                f"model {self.spec.model_name} {self.model_version} has no {name!r} output, "
                f"so it cannot {purpose}: it predates it; use a model exported by a newer "
                "leafid-train"
            )

    def run(
        self, batch: np.ndarray, outputs: Sequence[str] = ()
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Calibrated probabilities and other named outputs of a batch, in one model call.

        Args:
            batch: Stacked outputs of :meth:`load`/:meth:`prepare`, batch axis first.
            outputs: Other outputs to fetch too (checked with :meth:`require_output`
                beforehand by the caller); none by default, the cheapest call.

        Returns:
            Array (N, n_classes) of ``softmax(logits / temperature)``, and each asked
            output by name.
        """
        logits, *others = self.session.run([self._output_name, *outputs], {self._input_name: batch})
        if logits.shape != (batch.shape[0], len(self.spec.classes)):
            raise InvalidModelError(
                f"model returned shape {logits.shape}, want ({batch.shape[0]}, "
                f"{len(self.spec.classes)})"
            )
        return softmax(logits, self.spec.temperature), dict(zip(outputs, others, strict=True))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for a batch of preprocessed inputs.

        Args:
            batch: Stacked outputs of :meth:`load`/:meth:`prepare`, batch axis first.

        Returns:
            Array (N, n_classes) of ``softmax(logits / temperature)``.
        """
        # only the logits: newer models also output their embedding and class maps
        return self.run(batch)[0]

    def probabilities_in_parts(self, batch: np.ndarray, parts: int) -> np.ndarray:
        """:meth:`probabilities` of a batch, run as up to ``parts`` concurrent model calls.

        Lets the model use cores that nothing else needs (onnxruntime sessions may be
        run from several threads); the answers are those of one call.
        """
        chunks = np.array_split(batch, max(1, min(parts, len(batch))))  # no empty chunks
        if len(chunks) == 1:
            return self.probabilities(batch)
        with ThreadPoolExecutor(len(chunks), thread_name_prefix="leafid-infer") as pool:
            return np.concatenate(list(pool.map(self.probabilities, chunks)))

    def _candidate(self, i: int, score: float) -> Candidate:
        c = self.spec.classes[i]
        return Candidate(c.slug, c.scientific_name, c.common_name, float(score))

    def predictions(self, probs: np.ndarray, top_k: int = 5) -> list[Prediction]:
        """Turn rows of calibrated probabilities into ranked predictions.

        A row whose best species is under the unknown threshold backs off to its genus,
        then its family, when the model has thresholds for them (:mod:`leafid.taxonomy`).
        With a :attr:`flora`, only its classes are scored (renormalised) and listed, and
        a row whose allowed classes together score under the threshold is unknown.
        """
        if top_k < 1:
            raise InvalidRequestError(f"top_k must be >= 1, got {top_k}")
        # Renormalising makes one allowed class score 1.0 on any photo, so the allowed
        # classes must first pass the threshold together, as a genus does.
        outside = np.zeros(len(probs), dtype=bool)
        if self.flora is not None:
            outside = probs[:, self.flora.index].sum(axis=1) < self.threshold
            # such a row keeps its own scores: unknown, with the allowed classes' real chances
            probs = np.where(outside[:, None], probs, self.flora.restrict(probs))
        allowed = np.arange(probs.shape[1]) if self.flora is None else self.flora.index
        slugs = None if self.flora is None else self.flora.slugs
        out = []
        for row, not_allowed in zip(probs, outside, strict=True):
            order = allowed[np.argsort(-row[allowed], kind="stable")][:top_k]
            results = tuple(self._candidate(int(i), row[i]) for i in order)
            best = results[0].score
            unknown = best < self.threshold or bool(not_allowed)
            found = (
                back_off(row, self._taxa, self.spec.taxon_thresholds)
                if unknown and not not_allowed
                else None
            )
            taxon = None
            if found is not None:
                members = [i for i in found.members if i in allowed][:HESITATION]
                between = tuple(self._candidate(i, row[i]) for i in members)
                taxon = TaxonMatch(found.rank, found.name, found.score, between)
                unknown = False
            reason = None
            if unknown:
                reason = (
                    "the allowed species together score under the unknown threshold "
                    f"{self.threshold:.3f}: it does not look like any of them"
                    if not_allowed
                    else f"best score {best:.3f} is under the unknown threshold "
                    f"{self.threshold:.3f}"
                )
            code = LOW_SCORE if unknown else None
            out.append(Prediction(results, unknown, reason, self.model_version, code, taxon, slugs))
        return out

    def classify_arrays(self, batch: np.ndarray, top_k: int = 5) -> list[Prediction]:
        """Predictions for a batch of preprocessed inputs, one per input."""
        return self.predictions(self.probabilities(batch), top_k)

    def classify_loaded(
        self, loaded: Sequence[Loaded], top_k: int = 5, parts: int = 1
    ) -> list[Prediction | ImageError]:
        """One prediction per good input, in one model call; each error stays in its place.

        Args:
            loaded: Outputs of :meth:`try_load`.
            top_k: Candidates per prediction.
            parts: Run the model call as this many concurrent parts
                (see :meth:`probabilities_in_parts`).
        """
        good = [item for item in loaded if isinstance(item, np.ndarray)]
        if not good:
            return in_place(loaded, [])
        probs = self.probabilities_in_parts(np.stack(good), parts)
        return in_place(loaded, self.predictions(probs, top_k))

    def classify_images(
        self, images: Sequence[ImageInput], top_k: int = 5
    ) -> list[Prediction | ImageError]:
        """A prediction, or the typed error saying why there is none, for each image.

        The images are one request (:meth:`load_request`): they share one decode budget.
        """
        return self.classify_loaded(self.load_request(images), top_k)

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

    def identify_loaded(
        self, loaded: Sequence[Loaded], names: Sequence[str], top_k: int = 5
    ) -> Identification:
        """Identify one plant from several photos: the identify policy of CLI and service.

        The photos that could be used are fused into one answer (and each gets its own
        answer too); each photo that could not be used keeps its error in its place.
        When the photos' own confident answers name different species
        (:func:`photos_disagree`), the fused answer is unknown, reason code
        :data:`~leafid.results.PHOTOS_DISAGREE`.

        Args:
            loaded: The photos after :meth:`try_load`.
            names: The photos' names (file names or paths), for the error below.
            top_k: Candidates per answer.

        Raises:
            InvalidRequestError: There are no photos.
            ImageError: None of the photos could be used: the first photo's error, its
                name in front of the message.
        """
        probs = self.probabilities(np.stack(usable(loaded, names)))  # one call for all photos
        return self.identify_probabilities(loaded, names, probs, top_k)

    def identify_probabilities(
        self, loaded: Sequence[Loaded], names: Sequence[str], probs: np.ndarray, top_k: int = 5
    ) -> Identification:
        """:meth:`identify_loaded` from the probabilities of the photos that could be used.

        Args:
            loaded: The photos after :meth:`try_load`.
            names: The photos' names (file names or paths).
            probs: :meth:`probabilities` of :func:`usable` photos, in order.
            top_k: Candidates per answer.
        """
        images = tuple(in_place(loaded, self.predictions(probs, top_k)))
        fused = self.fuse(probs, top_k)
        disagreement = photos_disagree(images, names)
        if disagreement:
            # averaging photos of different plants answers for none of them
            listed = "; ".join(f"{p.photo}: {p.candidate.display_name}" for p in disagreement)
            fused = dataclasses.replace(
                fused,
                unknown=True,
                taxon=None,
                reason=f"these photos look like different plants ({listed})",
                reason_code=PHOTOS_DISAGREE,
            )
        return Identification(fused, images, disagreement)

    def identify(self, images: Sequence[Image.Image], top_k: int = 5) -> Prediction:
        """One fused answer for several decoded photos of the same plant."""
        if not images:
            raise InvalidRequestError("identify needs at least one image")
        return self.identify_arrays(np.stack([self.prepare(im) for im in images]), top_k)
