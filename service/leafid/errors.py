"""leafid's exception types.

Each error carries a stable ``code`` (used in JSON error bodies and CLI error rows) and
the HTTP status it maps to. :data:`EXIT_*` are the CLI exit codes.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2


class LeafidError(Exception):
    """Base class of every error leafid raises on purpose."""

    code = "leafid_error"
    http_status = 500


class ImageError(LeafidError):
    """An input image could not be used: the base of the kinds below, never raised itself.

    Catch this to handle every image problem; each subclass has its own ``code``.
    """

    code = "image_error"
    http_status = 400


class BadImageError(ImageError):
    """The file looks like an image but cannot be decoded (truncated, corrupt)."""

    code = "bad_image"
    http_status = 400


class ImageNotFoundError(ImageError):
    """The image file does not exist (or is a symlink to nothing)."""

    code = "not_found"
    http_status = 404  # uploads are never missing: only file paths (CLI rows) get this


class UnsupportedTypeError(ImageError):
    """The file is not an image type leafid can read."""

    code = "unsupported_type"
    http_status = 415


class TooLargeError(ImageError):
    """The file is over the byte limit or the image over the pixel limit."""

    code = "too_large"
    http_status = 413


class InvalidRequestError(LeafidError):
    """Parameters of a request or command are wrong."""

    code = "invalid_request"
    http_status = 422


class UnknownNameError(InvalidRequestError):
    """A flora filter names a species slug or genus the model does not know."""

    code = "unknown_name"


class ModelError(LeafidError):
    """The model cannot be used."""

    code = "model_not_ready"
    http_status = 503


class ModelNotFoundError(ModelError):
    """The model file does not exist."""

    code = "model_not_found"


class InvalidModelError(ModelError):
    """The model file or its leafid metadata is invalid."""

    code = "invalid_model"


class MissingOutputError(ModelError):
    """The model predates an output a feature needs (its embedding, its class maps).

    Everything else still works with such a model. Over HTTP it answers a request that
    asks for such a feature (422): no request makes the service answer 5xx.
    """

    code = "missing_output"
    http_status = 422


class InvalidReferencesError(InvalidRequestError):
    """A reference-photo index cannot be used (unreadable, or made with another model)."""

    code = "invalid_references"


class MissingExtraError(LeafidError):
    """An optional dependency group is not installed."""

    code = "missing_extra"

    def __init__(self, extra: str, module: str) -> None:
        self.extra = extra
        self.module = module
        super().__init__(f"this needs the '{module}' package: pip install 'leafid[{extra}]'")
