"""The FastAPI application: identification API, health, metrics and the upload page.

Build it with :func:`create_app`. The classifier is loaded once in the app's lifespan
and reached through the :func:`get_classifier` dependency (tests may override it).
Every error answer is ``{"error": {"code": ..., "message": ...}}``, built by
:func:`leafid.http.errors.error_response` from the :class:`~leafid.errors.LeafidError`
hierarchy; middleware, the inference gate, the response schemas, the streamed reading
of uploaded photos (``uploads``) and the connection limits under uvicorn (``server``)
have their own modules beside this one.
"""

from __future__ import annotations

import base64
import functools
import hmac
import html
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from leafid import __version__, evidence
from leafid.classifier import Classifier, Loaded
from leafid.errors import (
    ImageError,
    ImageNotFoundError,
    InvalidReferencesError,
    InvalidRequestError,
    LeafidError,
    ModelError,
)
from leafid.evidence import Backing, Evidence
from leafid.flora import flora_of_names, read_only, resolve_flora, split_names
from leafid.http.errors import (
    AuthError,
    ClientDisconnectedError,
    on_http_error,
    on_leafid_error,
    on_validation_error,
)
from leafid.http.gate import InferenceGate
from leafid.http.metrics import Metrics
from leafid.http.middleware import BodyLimitMiddleware, CatchAllMiddleware, MetricsMiddleware
from leafid.http.schemas import (
    ERROR_RESPONSES,
    ClassifyOut,
    ErrorOut,
    IdentifyOut,
    ModelOut,
    SpeciesOut,
)
from leafid.http.server import STATE_KEY, ConnectionLimits, accept_errors_summarised
from leafid.http.settings import MAX_SIMILAR, Settings
from leafid.http.uploads import FIELD, Upload, Uploads, read_uploads
from leafid.images import ImageLimits
from leafid.references import ReferenceIndex, ReferenceMatch, thumbnail_jpeg
from leafid.results import CAVEAT, Identification, Prediction, error_item

log = logging.getLogger(__name__)
T = TypeVar("T")

THUMBNAIL_CACHE = 512  # reference thumbnails kept in memory (~15 kB each)
STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_TEMPLATE = Path(__file__).resolve().parent / "index.html"  # filled in by render_index

# --- dependencies --------------------------------------------------------------------


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


def get_classifier(request: Request) -> Classifier:
    """The classifier loaded at start-up.

    Raises:
        ModelError: The model is not loaded (start-up has not run).
    """
    classifier: Classifier | None = request.app.state.classifier
    if classifier is None:
        raise ModelError("the model is not loaded yet")
    return classifier


def get_gate(request: Request) -> InferenceGate:
    """The app's inference gate (created at start-up)."""
    gate: InferenceGate | None = request.app.state.gate
    if gate is None:
        raise ModelError("the service has not started yet")
    return gate


def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Check ``X-API-Key`` or ``Authorization: Bearer`` when API keys are configured.

    Raises:
        AuthError: Keys are configured and the request has no valid one.
    """
    if not settings.api_keys:
        return
    given = api_key if api_key is not None else (bearer.credentials if bearer else None)
    if given is None:
        raise AuthError("an API key is needed: send it in the X-API-Key header")
    ok = False
    for key in settings.api_keys:  # compare with every key, in constant time
        ok |= hmac.compare_digest(given.encode(), key.encode())
    if not ok:
        raise AuthError("the API key is not valid")


ClassifierDep = Annotated[Classifier, Depends(get_classifier)]


def get_answering_classifier(
    classifier: ClassifierDep,
    species: Annotated[
        list[str] | None,
        Query(description="Answer among these class slugs only (comma-separated or repeated)"),
    ] = None,
    genus: Annotated[
        list[str] | None,
        Query(description="Answer among these genera's classes only (with species=: both)"),
    ] = None,
) -> Classifier:
    """The classifier with the request's flora filter, else the service's.

    Raises:
        UnknownNameError: A slug or genus is not the model's.
    """
    flora = resolve_flora(classifier.spec, split_names(species or ()), split_names(genus or ()))
    return classifier if flora is None else classifier.with_flora(flora)


AnsweringDep = Annotated[Classifier, Depends(get_answering_classifier)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
GateDep = Annotated[InferenceGate, Depends(get_gate)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
TopK = Annotated[int | None, Query(description="Candidates to return, 1 to the number of classes")]
Explain = Annotated[
    bool,
    Query(
        description="Add where the model looked for the top answer: a heat overlay on the "
        "part of each photo it saw, as a PNG data URL (models with class maps only)"
    ),
]
Similar = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_SIMILAR,
        description="Reference photos per candidate species (default: the service's "
        "setting; 0: none). Needs a service started with reference photos",
    ),
]
REFERENCES_ROUTE = "/v1/references/"

# The photos are read by leafid.http.uploads as the body streams in (after the API key
# and the queue are checked), not by FastAPI, so their form is declared here for the docs.
PHOTOS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "array",
                            "title": "Images",
                            "description": "Photos (JPEG, PNG, WebP, HEIC with leafid[heic], ...)",
                            "items": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                            },
                        }
                    },
                }
            }
        },
    }
}


async def _work_on_photos(
    request: Request,
    gate: InferenceGate,
    work: Callable[[Uploads], T],
    max_files: int,
    max_image_bytes: int,
    what: str,
) -> tuple[list[Upload], T, float]:
    """Back-pressure first, then the photos, then the work in a worker thread.

    The queue is checked before the body is read (the API key was checked before, as
    a dependency); the photos are read as they stream in; ``work`` runs in a worker
    thread in an inference slot, unless the client has hung up while it waited.

    Args:
        request: The upload request.
        gate: The inference gate.
        work: Decodes and classifies the photos (blocking).
        max_files: Most photos accepted.
        max_image_bytes: Largest photo kept (a larger one gets its own error).
        what: What the photos are, for the message on their number.

    Returns:
        The photos, what ``work`` returned, and when the body was in (perf_counter).
    """
    gate.check()
    with await read_uploads(
        request, max_files=max_files, max_image_bytes=max_image_bytes, what=what
    ) as uploads:
        start = time.perf_counter()
        async with gate.slot():
            if await request.is_disconnected():
                raise ClientDisconnectedError("the client closed the connection while waiting")
            result = await anyio.to_thread.run_sync(work, uploads)
    return uploads.items, result, start


# --- the work done off the event loop ------------------------------------------------


def _load_all(classifier: Classifier, uploads: Uploads) -> list[Loaded]:
    """Decode every photo, with one decode budget; one over the byte limit keeps its error."""
    budget = classifier.request_budget()
    return [
        upload.error
        if upload.error is not None
        else classifier.try_load(uploads.read(upload), budget)
        for upload in uploads.items
    ]


DEFAULT_TOP_K = 5


def _top_k(top_k: int | None, classifier: Classifier) -> int:
    """The asked top_k, checked; when not given, 5 (or every class if there are fewer)."""
    n = len(classifier.spec.classes)
    if top_k is None:
        return min(DEFAULT_TOP_K, n)
    if not 1 <= top_k <= n:
        raise InvalidRequestError(f"top_k must be between 1 and {n}, got {top_k}")
    return top_k


def _model_ref(classifier: Classifier) -> dict[str, str]:
    return {"name": classifier.spec.model_name, "version": classifier.model_version}


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


Identified = tuple[Identification, Backing | None, list[Backing | None]]
Classified = tuple[list[Prediction | ImageError], list[Backing | None]]


def _identify_work(
    classifier: Classifier, uploads: Uploads, top_k: int, shown: Evidence | None
) -> tuple[Identified, float, float]:
    start = time.perf_counter()
    loaded = _load_all(classifier, uploads)
    decoded = time.perf_counter()
    names = [upload.filename for upload in uploads.items]
    result: Identified
    if shown is None:  # the plain answer: only the logits are fetched
        result = classifier.identify_loaded(loaded, names, top_k), None, [None] * len(loaded)
    else:
        result = evidence.identify(classifier, shown, loaded, names, top_k)
    return result, decoded - start, time.perf_counter() - decoded


def _classify_work(
    classifier: Classifier, uploads: Uploads, top_k: int, shown: Evidence | None
) -> tuple[Classified, float, float]:
    start = time.perf_counter()
    loaded = _load_all(classifier, uploads)
    decoded = time.perf_counter()
    result: Classified
    if shown is None:  # the plain answer: only the logits are fetched
        result = classifier.classify_loaded(loaded, top_k), [None] * len(loaded)
    else:
        result = evidence.classify(classifier, shown, loaded, top_k)
    return result, decoded - start, time.perf_counter() - decoded


def _reference_link(match: ReferenceMatch) -> dict[str, Any]:
    """A reference photo in an answer: its path, similarity and thumbnail URL."""
    return {**match.to_dict(), "url": REFERENCES_ROUTE + urllib.parse.quote(match.path)}


def _with_references(answer: dict[str, Any], backing: Backing | None) -> dict[str, Any]:
    """An answer's dict with each candidate's reference photos, when they were asked."""
    return answer if backing is None else backing.add_references(answer, _reference_link)


def _image_item(
    upload: Upload,
    answer: Prediction | ImageError,
    model_version: str,
    backing: Backing | None = None,
) -> dict[str, Any]:
    """One photo's item of an answer: its own prediction, or why it could not be used."""
    if isinstance(answer, ImageError):
        return {"filename": upload.filename, **error_item(answer, model_version)}
    item = {"filename": upload.filename, **answer.to_dict()}
    if backing is not None and backing.heatmap is not None:
        # inline: the service keeps nothing between requests, and any replica can answer
        png = base64.b64encode(backing.heatmap).decode("ascii")
        item["explain"] = {"slug": backing.heatmap_slug, "image": "data:image/png;base64," + png}
    return item


def _evidence(
    classifier: Classifier,
    references: ReferenceIndex | None,
    settings: Settings,
    explain: bool,
    similar: int | None,
) -> Evidence | None:
    """The evidence a request asks for, or None for a plain answer.

    Raises:
        InvalidRequestError: Reference photos are asked of a service that has none.
        MissingOutputError: The model predates an output the evidence needs.
    """
    if similar and references is None:
        raise InvalidRequestError(
            "this service has no reference photos (start it with --references FILE)"
        )
    k = settings.similar if similar is None else similar
    if not explain and (references is None or k == 0):
        return None
    shown = Evidence(references if k > 0 else None, k, explain)
    shown.check(classifier)
    return shown


# --- the app -------------------------------------------------------------------------


def render_index(settings: Settings) -> str:
    """The upload page with this service's image limit and the caveat filled in."""
    template = PAGE_TEMPLATE.read_text(encoding="utf-8")
    values = {"max_images": str(settings.max_images), "caveat": html.escape(CAVEAT)}
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", value)
    return template


def load_classifier(settings: Settings) -> Classifier:
    """Load the model named by the settings, with the settings' image limits.

    Raises:
        ModelNotFoundError: The model file does not exist.
        InvalidModelError: The file is not a usable leafid model.
        UnknownNameError: The flora filter (``only``) names a class the model lacks.
    """
    limits = ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_pixels,
        max_decode_bytes=settings.max_decode_bytes,
        max_request_decode_bytes=settings.max_request_decode_bytes,
    )
    classifier = Classifier(settings.model, threads=settings.threads, limits=limits)
    if not settings.only.strip():
        return classifier
    return classifier.with_flora(flora_of_names(classifier.spec, read_only(settings.only)))


def load_references(settings: Settings, classifier: Classifier) -> ReferenceIndex | None:
    """Load the reference photos named by the settings, checked against the model.

    Raises:
        InvalidReferencesError: The index cannot be read, was made with another model,
            or its reference folder is missing.
        MissingOutputError: The model has no embedding output.
    """
    if settings.references is None:
        return None
    references = ReferenceIndex.load(settings.references)
    references.check_model(classifier)
    if not references.folder.is_dir():
        raise InvalidReferencesError(
            f"the reference folder {references.folder} of {settings.references} is missing"
        )
    return references


def create_app(
    settings: Settings | None = None,
    classifier: Classifier | None = None,
    references: ReferenceIndex | None = None,
) -> FastAPI:
    """Build the service.

    Args:
        settings: Service settings; read from ``LEAFID_*`` environment variables if None.
        classifier: An already loaded classifier to use instead of loading
            ``settings.model`` at start-up.
        references: Already loaded reference photos to use instead of loading
            ``settings.references`` at start-up.

    Returns:
        The FastAPI app. The model is loaded when its lifespan starts; a missing or
        invalid model makes start-up fail with ModelNotFoundError / InvalidModelError.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        if app.state.classifier is None and get_classifier not in app.dependency_overrides:
            started = time.perf_counter()
            app.state.classifier = await anyio.to_thread.run_sync(load_classifier, settings)
            log.info(
                "loaded model %s in %.0f ms",
                settings.model,
                (time.perf_counter() - started) * 1000,
            )
        if app.state.references is None and app.state.classifier is not None:
            app.state.references = await anyio.to_thread.run_sync(
                load_references, settings, app.state.classifier
            )
        app.state.gate = InferenceGate(
            settings.inference_slots,
            settings.queue_size,
            settings.retry_after_s,
            app.state.metrics.rejected,
        )
        with accept_errors_summarised():
            # the state reaches uvicorn's connections (leafid.http.server)
            yield {STATE_KEY: ConnectionLimits.from_settings(settings)}

    # FastAPIOffline: /docs and /redoc load their scripts from this server, not a CDN
    app = FastAPIOffline(
        title="leafid",
        version=__version__,
        summary="Leaf-photo plant identification with honest confidence.",
        description=CAVEAT,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.classifier = classifier
    app.state.references = references
    app.state.thumbnails = functools.lru_cache(maxsize=THUMBNAIL_CACHE)(
        functools.partial(thumbnail_jpeg, limits=ImageLimits(max_pixels=settings.max_pixels))
    )
    app.state.gate = None
    app.state.metrics = Metrics()

    app.add_exception_handler(LeafidError, on_leafid_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization"],
        )
    # added last = outermost: metrics see every answer, the catch-all's 500 included
    app.add_middleware(CatchAllMiddleware, retry_after_s=settings.retry_after_s)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, router_app=app)
    _add_routes(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _add_routes(app: FastAPI) -> None:
    auth = [Depends(require_api_key)]

    @app.post(
        "/v1/identify",
        response_model=IdentifyOut,
        response_model_exclude_unset=True,  # no references or explain fields unless asked
        responses=ERROR_RESPONSES,
        dependencies=auth,
        tags=["identify"],
        openapi_extra=PHOTOS_BODY,
    )
    async def identify(
        request: Request,
        classifier: AnsweringDep,
        settings: SettingsDep,
        gate: GateDep,
        metrics: MetricsDep,
        top_k: TopK = None,
        explain: Explain = False,
        similar: Similar = None,
    ) -> dict[str, Any]:
        """Identify one plant from 1 to ``max_images`` photos of it; their answers are fused.

        The answer is fused from the photos that could be used; a photo that could not
        be used gets an error item ``{filename, error: {type, message}}`` in its place
        in ``images`` (as in ``/v1/classify``) and the status is 200. When none of the
        photos could be used, the request fails with the first photo's error (4xx).

        With reference photos, each candidate lists those most like the photos
        (``references``); with ``explain=1`` each photo's item has the heat overlay of
        where the model looked for the top answer (``explain``).
        """
        k = _top_k(top_k, classifier)
        shown = _evidence(classifier, request.app.state.references, settings, explain, similar)
        photos, (found, decode_s, infer_s), start = await _work_on_photos(
            request,
            gate,
            lambda uploads: _identify_work(classifier, uploads, k, shown),
            settings.max_images,
            settings.max_image_bytes,
            "images of the same plant",
        )
        identified, backing, per_photo = found
        metrics.inference.observe(infer_s)
        metrics.images.inc(sum(isinstance(a, Prediction) for a in identified.images))
        if identified.fused.unknown:
            metrics.unknown.inc()
        answer = _with_references(identified.to_dict(), backing)
        return {
            "model": _model_ref(classifier),
            **{
                key: answer[key]
                for key in ("best_match", "rank", "match_score", "hesitates_between", "unknown")
            },
            "reason": answer["reason"],
            "reason_code": answer["reason_code"],
            "disagreement": answer["disagreement"],
            "results": answer["results"],
            "flora": answer["flora"],
            "images": [
                _image_item(u, a, classifier.model_version, b)
                for u, a, b in zip(photos, identified.images, per_photo, strict=True)
            ],
            "timing": {
                "decode_ms": _ms(decode_s),
                "inference_ms": _ms(infer_s),
                "total_ms": _ms(time.perf_counter() - start),
            },
            "caveat": CAVEAT,
        }

    @app.post(
        "/v1/classify",
        response_model=ClassifyOut,
        response_model_exclude_unset=True,  # no references or explain fields unless asked
        responses=ERROR_RESPONSES,
        dependencies=auth,
        tags=["identify"],
        openapi_extra=PHOTOS_BODY,
    )
    async def classify(
        request: Request,
        classifier: AnsweringDep,
        settings: SettingsDep,
        gate: GateDep,
        metrics: MetricsDep,
        top_k: TopK = None,
        explain: Explain = False,
        similar: Similar = None,
    ) -> dict[str, Any]:
        """Classify independent photos, one answer each, in one model call.

        A photo that cannot be used gets an error item ``{filename, error: {type,
        message}}`` in its place (like the CLI's error rows); the others are answered
        and the status is 200. Errors of the request itself (count, size of the whole
        body, parameters, API key) answer the whole request with 4xx.

        With reference photos, each candidate lists those most like the photo
        (``references``); with ``explain=1`` each item has the heat overlay of where the
        model looked for its top answer (``explain``).
        """
        k = _top_k(top_k, classifier)
        shown = _evidence(classifier, request.app.state.references, settings, explain, similar)
        photos, ((items, backings), decode_s, infer_s), start = await _work_on_photos(
            request,
            gate,
            lambda uploads: _classify_work(classifier, uploads, k, shown),
            settings.max_batch,
            settings.max_image_bytes,
            "images",
        )
        metrics.inference.observe(infer_s)
        for item in items:
            if isinstance(item, Prediction):
                metrics.images.inc()
                if item.unknown:
                    metrics.unknown.inc()
        return {
            "model": _model_ref(classifier),
            "results": [
                _with_references(_image_item(u, a, classifier.model_version, b), b)
                if isinstance(a, Prediction)
                else _image_item(u, a, classifier.model_version)
                for u, a, b in zip(photos, items, backings, strict=True)
            ],
            "timing": {
                "decode_ms": _ms(decode_s),
                "inference_ms": _ms(infer_s),
                "total_ms": _ms(time.perf_counter() - start),
            },
            "caveat": CAVEAT,
        }

    @app.get(
        REFERENCES_ROUTE + "{path:path}",
        dependencies=auth,
        tags=["identify"],
        response_class=Response,
        responses={
            200: {"content": {"image/jpeg": {}}},
            404: {"model": ErrorOut, "description": "Not a reference photo of this service"},
        },
    )
    def reference_photo(path: str, request: Request) -> Response:
        """A thumbnail (JPEG) of a reference photo listed in an answer's ``references``.

        Only the photos of the service's reference index are served, from its reference
        folder: any other path is 404.
        """
        references: ReferenceIndex | None = request.app.state.references
        if references is None:
            raise ImageNotFoundError("this service has no reference photos")
        jpeg = request.app.state.thumbnails(references.file(path))
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/v1/species", response_model=list[SpeciesOut], dependencies=auth, tags=["model"])
    def species(classifier: ClassifierDep) -> list[dict[str, Any]]:
        """The classes the model knows, in output order."""
        return [
            {
                "index": i,
                "slug": c.slug,
                "scientific_name": c.scientific_name,
                "common_name": c.common_name,
                "display_name": c.display_name,
                "genus": c.genus,
                "family": c.family,
            }
            for i, c in enumerate(classifier.spec.classes)
        ]

    @app.get("/v1/model", response_model=ModelOut, dependencies=auth, tags=["model"])
    def model(classifier: ClassifierDep) -> dict[str, Any]:
        """The loaded model's metadata."""
        spec = classifier.spec
        return {
            "name": spec.model_name,
            "version": spec.model_version,
            "input_size": spec.input_size,
            "resize_size": spec.resize_size,
            "input_format": spec.input_format,
            "interpolation": spec.interpolation,
            "num_classes": len(spec.classes),
            "threshold": classifier.threshold,
            "temperature": spec.temperature,
            "taxon_thresholds": spec.taxon_thresholds,
            "training_data": spec.training_data,
            "metrics": spec.metrics,
        }

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: ERROR_RESPONSES[503]})
    def readyz(classifier: ClassifierDep) -> dict[str, str]:
        """The model is loaded and requests can be answered (503 otherwise)."""
        return {"status": "ready", "model_version": classifier.model_version}

    # load balancers check health with HEAD too (not a separate operation in the docs)
    for path, check in (("/healthz", healthz), ("/readyz", readyz)):
        app.head(path, include_in_schema=False)(check)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus(metrics: MetricsDep) -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    page = render_index(app.state.settings)

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        """The upload page."""
        return HTMLResponse(page)
