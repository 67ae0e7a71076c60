"""ASGI middleware of the service: the request body limit, request metrics, the catch-all."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match

from leafid.errors import TooLargeError
from leafid.http.errors import InternalError, ShuttingDownError, send_error
from leafid.http.metrics import Metrics

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413.

    The ``Content-Length`` header is checked before anything is read; bodies without
    one (chunked) are counted while they are read, and the request is answered with
    413 as soon as the count passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with the body limit applied."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await send_error(send, self._too_large(int(value)))
                return
        received = 0
        exceeded = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise self._too_large(received)
            return message

        async def guarded_send(message: Message) -> None:
            if not exceeded:  # drop whatever the app answers to the aborted read
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await send_error(send, self._too_large(received))

    def _too_large(self, size: int) -> TooLargeError:
        return TooLargeError(
            f"request body is over the limit of {self.max_bytes} bytes (got at least {size})"
        )


class CatchAllMiddleware:
    """Answers an exception nothing else handled with a 500 ``internal_error``.

    The exception is logged with its traceback; the client is told no details. When
    the answer has already started, the exception is raised on (nothing can be sent).

    A request cancelled before its answer started (uvicorn cancels those still in
    progress when the shutdown grace ends) is answered 503 ``shutting_down`` with
    ``Retry-After``, not uvicorn's plain 500: it was never served, another try may be.
    """

    def __init__(self, app: ASGIApp, retry_after_s: int) -> None:
        self.app = app
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app; answer an unhandled exception with a 500."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except asyncio.CancelledError:
            if started:
                raise
            # the task ends here: answering is all that is left to do for it
            stopping = ShuttingDownError("the service is shutting down", self.retry_after_s)
            await send_error(send, stopping)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if started:
                raise
            await send_error(send, InternalError("internal server error"))


# HTTP methods counted by name (RFC 9110 and PATCH); any other is counted as "other", so
# that made-up methods cannot add label values.
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


class MetricsMiddleware:
    """Counts and times every request, by route template, method and status.

    Labels come from fixed sets: the app's route templates ("unmatched" for a path no
    route matches), :data:`METHODS` or "other", and the statuses the service answers.
    A request whose handling raised before an answer started counts as a 500.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, router_app: FastAPI) -> None:
        self.app = app
        self.metrics = metrics
        self.router_app = router_app

    def _route(self, scope: Scope) -> str:
        """The path template of the request's route (the router leaves it in the scope).

        A request refused before routing (e.g. 413 from the body limit) is matched here.
        """
        matched = scope.get("route")
        if matched is None:
            for route in self.router_app.router.routes:
                if route.matches(scope)[0] == Match.FULL:
                    matched = route
                    break
            else:
                return "unmatched"
        return str(getattr(matched, "path", "other"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, recording the request's route, status and latency."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            labels = (self._route(scope), method, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
