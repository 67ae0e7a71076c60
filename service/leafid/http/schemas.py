"""Response schemas of the API, for the OpenAPI docs.

The data itself comes from :meth:`leafid.results.Prediction.to_dict` and the routes;
these models describe it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ReferenceOut(BaseModel):
    """A reference photo of a candidate species, like the photo sent."""

    path: str
    similarity: float
    url: str


class CandidateOut(BaseModel):
    """One ranked species candidate (with reference photos when the service has them)."""

    slug: str
    scientific_name: str
    common_name: str
    display_name: str
    score: float
    references: list[ReferenceOut] | None = None


class PhotoPickOut(CandidateOut):
    """One photo's own confident answer, listed when the photos disagree."""

    index: int
    photo: str


class PredictionOut(BaseModel):
    """The answer for one photo (the CLI's result rows have the same fields).

    ``best_match`` is a species slug at rank ``species``; at rank ``genus`` or ``family``
    (no species likely enough, its genus or family is) it is the taxon's name, and
    ``hesitates_between`` lists its likeliest species.
    """

    best_match: str | None
    rank: str | None
    match_score: float | None
    hesitates_between: list[CandidateOut] | None
    unknown: bool
    reason: str | None
    reason_code: str | None
    results: list[CandidateOut]
    flora: list[str] | None
    caveat: str
    model_version: str


class ExplainOut(BaseModel):
    """Where the model looked for the top answer (``explain=1``).

    ``image`` is a PNG data URL: the part of the photo the model saw, with the class's
    activation map laid over it as heat (red: most).
    """

    slug: str
    image: str


class ImagePredictionOut(PredictionOut):
    """One uploaded photo's own answer."""

    filename: str
    explain: ExplainOut | None = None


class ErrorItem(BaseModel):
    """Why one photo of a request could not be used."""

    type: str
    message: str


class ImageErrorOut(BaseModel):
    """A photo that could not be used: an item of ``/v1/classify`` or ``/v1/identify``."""

    filename: str
    error: ErrorItem
    caveat: str
    model_version: str


class ModelRef(BaseModel):
    """The model that answered."""

    name: str
    version: str


class Timing(BaseModel):
    """Server-side time spent, in milliseconds."""

    decode_ms: float
    inference_ms: float
    total_ms: float


class IdentifyOut(BaseModel):
    """A fused answer for 1-5 photos of one plant, and each photo's own answer or error."""

    model: ModelRef
    best_match: str | None
    rank: str | None
    match_score: float | None
    hesitates_between: list[CandidateOut] | None
    unknown: bool
    reason: str | None
    reason_code: str | None
    disagreement: list[PhotoPickOut] | None
    results: list[CandidateOut]
    flora: list[str] | None
    images: list[ImagePredictionOut | ImageErrorOut]
    timing: Timing
    caveat: str


class ClassifyOut(BaseModel):
    """One answer (or error) per independent photo, in upload order."""

    model: ModelRef
    results: list[ImagePredictionOut | ImageErrorOut]
    timing: Timing
    caveat: str


class SpeciesOut(BaseModel):
    """One class the model knows, with its genus and family (null when the model has none)."""

    index: int
    slug: str
    scientific_name: str
    common_name: str
    display_name: str
    genus: str | None
    family: str | None


class ModelOut(BaseModel):
    """The loaded model's metadata."""

    name: str
    version: str
    input_size: int
    resize_size: int
    input_format: str
    interpolation: str
    num_classes: int
    threshold: float
    temperature: float
    taxon_thresholds: dict[str, float]
    training_data: dict[str, Any]
    metrics: dict[str, Any]


class ErrorBody(BaseModel):
    """The ``error`` object of an error answer."""

    code: str
    message: str


class ErrorOut(BaseModel):
    """Every error answer has this shape."""

    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in {
        400: "An image cannot be decoded (truncated, corrupt)",
        401: "API key missing or wrong (when keys are configured)",
        413: "Request body, an image file or its pixel count is over the limit",
        415: "A file is not an image type leafid can read",
        422: "Bad parameters or wrong number of images, or explain=1 asked of a model "
        "that predates it (code missing_output)",
        503: "Model not ready, or the inference queue is full (see Retry-After)",
    }.items()
}
