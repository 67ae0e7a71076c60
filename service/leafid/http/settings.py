"""Service settings, read from ``LEAFID_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from leafid.images import ImageLimits
from leafid.options import DEFAULT_SIMILAR
from leafid.paths import default_model_path

MiB = 1024 * 1024
MAX_SIMILAR = 20
"""Most reference photos per candidate species one answer may list."""


class Settings(BaseSettings):
    """Settings of the HTTP service.

    Every field can be set from the environment with the ``LEAFID_`` prefix, e.g.
    ``LEAFID_MODEL=/srv/leafid.onnx`` or ``LEAFID_API_KEYS=key1,key2``.

    Attributes:
        model: The ONNX model file (``$LEAFID_MODEL``, else the shipped model).
        only: The service-wide flora filter (``$LEAFID_ONLY``): comma-separated class
            slugs or genus names, or a file with one per line, as ``leafid classify
            --only``; empty: all classes. A request's ``species=``/``genus=`` replace it.
        max_upload_bytes: Largest accepted request body, in bytes.
        max_image_bytes: Largest accepted single image file, in bytes.
        max_pixels: Largest accepted image width * height.
        max_decode_bytes: Largest memory one image may take to decode (judged from its
            header, before decoding; a larger one is refused with 413).
        max_request_decode_bytes: Largest decode memory of all the photos of one request
            together; each photo past it gets its own 413.
        max_images: Most photos in one ``/v1/identify`` request.
        max_batch: Most photos in one ``/v1/classify`` request.
        inference_slots: Requests decoded and classified at the same time
            (``$LEAFID_INFERENCE_SLOTS``; the former ``$LEAFID_INFERENCE_CONCURRENCY``
            is still read).
        queue_size: Requests allowed to wait for a free slot; more are refused with 503.
        retry_after_s: Seconds sent in ``Retry-After`` when the queue is full.
        threads: onnxruntime intra-op threads per inference (0 lets onnxruntime choose).
        api_keys: Accepted API keys; empty means no authentication. A value that
            names no key but is not empty (``" , "``) is refused.
        cors_origins: Origins allowed to call the API from a browser; empty means none.
        header_timeout_s: Seconds a connection has to send a request's head (request
            line and headers), from when it opens or its previous answer was sent;
            then it is closed.
        body_timeout_s: Seconds a request has to send its whole body once its head is
            in; then the connection is closed.
        keep_alive_timeout_s: Seconds an idle keep-alive connection is kept open.
        max_connections: Open connections per server process; a new one over the cap
            closes the connection that has waited longest for a request head.
        references: A reference-photo index made with ``leafid index`` and the same
            model: answers list each candidate's most similar reference photos, served
            as thumbnails (None: no reference photos).
        similar: Reference photos per candidate species, unless a request asks otherwise.
    """

    model_config = SettingsConfigDict(env_prefix="LEAFID_", extra="ignore", populate_by_name=True)

    model: Path = Field(default_factory=default_model_path)
    only: str = ""
    max_upload_bytes: int = Field(default=25 * MiB, gt=0)
    max_image_bytes: int = Field(default=12 * MiB, gt=0)
    max_pixels: int = Field(default=50_000_000, gt=0)
    max_decode_bytes: int = Field(default=ImageLimits.max_decode_bytes, gt=0)
    max_request_decode_bytes: int = Field(default=ImageLimits.max_request_decode_bytes, gt=0)
    max_images: int = Field(default=5, ge=1)
    max_batch: int = Field(default=16, ge=1)
    inference_slots: int = Field(
        default=2,
        ge=1,
        # the prefix is not added to aliases; the first one set wins
        validation_alias=AliasChoices("LEAFID_INFERENCE_SLOTS", "LEAFID_INFERENCE_CONCURRENCY"),
    )
    queue_size: int = Field(default=32, ge=0)
    retry_after_s: int = Field(default=1, ge=0)
    threads: int = Field(default=1, ge=0)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    keep_alive_timeout_s: int = Field(default=5, ge=1)
    max_connections: int = Field(default=256, ge=1)
    references: Path | None = None
    similar: int = Field(default=DEFAULT_SIMILAR, ge=0, le=MAX_SIMILAR)

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        """Accept a comma-separated string (as environment variables give) or a list."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _some_key_if_any(cls, value: object) -> object:
        """Refuse keys that are all blank: that would silently turn authentication off."""
        given = value.split(",") if isinstance(value, str) else value
        if isinstance(given, list) and value and not any(str(key).strip() for key in given):
            raise ValueError(
                "LEAFID_API_KEYS is set but names no key (only commas or spaces): give the "
                "keys, or leave it unset (or empty) to turn authentication off"
            )
        return value
