"""HTTP errors: the service's own types, and where every error becomes an answer.

This is the one place a :class:`~leafid.errors.LeafidError` becomes an HTTP answer.

Every error answer is ``{"error": {"code": ..., "message": ...}}`` with the status of
the error's ``http_status`` (see :func:`error_response`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from leafid.errors import InvalidRequestError, LeafidError

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


class ServiceError(LeafidError):
    """A service-level refusal that carries extra HTTP response headers.

    Attributes:
        headers: Headers to send with the error response.
    """

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})


class ServiceBusyError(ServiceError):
    """Too many requests are already waiting for inference; try again shortly."""

    code = "overloaded"
    http_status = 503

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, {"Retry-After": str(retry_after_s)})


class ShuttingDownError(ServiceBusyError):
    """The server stopped before the request was answered (its shutdown grace ended)."""

    code = "shutting_down"


class AuthError(ServiceError):
    """The API key is missing or wrong."""

    code = "unauthorized"
    http_status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, {"WWW-Authenticate": "Bearer"})


# --- errors -> HTTP answers ----------------------------------------------------------


def error_response(exc: LeafidError) -> JSONResponse:
    """The JSON error answer for a leafid error (status from ``exc.http_status``)."""
    headers = exc.headers if isinstance(exc, ServiceError) else None
    return JSONResponse(
        {"error": {"code": exc.code, "message": str(exc)}},
        status_code=exc.http_status,
        headers=headers,
    )


class MalformedBodyError(LeafidError):
    """The request body is not the multipart form it says it is."""

    code = "bad_request"
    http_status = 400


class ClientDisconnectedError(LeafidError):
    """The client closed the connection before its request was answered.

    Nobody reads the answer; its status (nginx's 499) is for the metrics.
    """

    code = "client_disconnected"
    http_status = 499


class HttpError(LeafidError):
    """A plain HTTP error raised by the framework (404, 405, malformed body)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code


class InternalError(LeafidError):
    """An unexpected failure; the client is told no details."""

    code = "internal_error"
    http_status = 500


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


async def on_leafid_error(request: Request, exc: Exception) -> Response:
    """Exception handler: a leafid error as its JSON answer."""
    assert isinstance(exc, LeafidError)
    return error_response(exc)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    """Exception handler: FastAPI's parameter validation errors as one 422 answer."""
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return error_response(InvalidRequestError("; ".join(parts) or "invalid request"))


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Exception handler: the framework's HTTP errors (404, 405, ...) in leafid's shape."""
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    response = error_response(HttpError(exc.status_code, code, str(exc.detail)))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def send_error(send: Send, exc: LeafidError) -> None:
    """Send a leafid error's answer straight over ASGI (for middleware)."""
    response = error_response(exc)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})
