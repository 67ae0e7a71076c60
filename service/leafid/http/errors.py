"""Errors only the HTTP service raises (the rest come from :mod:`leafid.errors`)."""

from __future__ import annotations

from leafid.errors import LeafidError


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


class AuthError(ServiceError):
    """The API key is missing or wrong."""

    code = "unauthorized"
    http_status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, {"WWW-Authenticate": "Bearer"})
