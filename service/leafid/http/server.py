"""How the service runs in uvicorn: connection timeouts, the connection cap, quiet logs.

uvicorn's h11 protocol closes idle keep-alive connections but has no deadline for a
request's head or body: a client that never sends a byte, or sends its headers one
byte at a time, holds its connection for ever. :class:`LimitedH11Protocol` adds, from
the ``LEAFID_*`` settings (:class:`ConnectionLimits`):

* a head deadline: from when a connection opens, or its previous answer has been sent,
  the client has ``header_timeout_s`` to send a complete request head (request line
  and headers), however it trickles them; then the connection is closed. The head's
  size is bounded by h11 (16 KiB by default: more is answered with 400);
* a body deadline: once the head is in, the client has ``body_timeout_s`` to send the
  whole body; then the connection is closed and the request in progress sees the
  client gone (the app reads a body as it arrives, so only the client's pace counts);
* a connection cap: a connection opened when ``max_connections`` are already open
  closes the one that has waited longest for a request head (idle, or slow to send
  one); when every connection is busy with a request, the new one is closed. File
  descriptors then stay under the cap, and a health check still gets in while
  thousands of idle sockets knock.

The limits reach the protocol through the ASGI lifespan state (the app's lifespan puts
them under :data:`STATE_KEY`, in every server process); without them the protocol is
uvicorn's own. :func:`uvicorn_options` is what ``leafid serve`` passes to uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from leafid.http.settings import Settings

log = logging.getLogger(__name__)

STATE_KEY = "leafid_connection_limits"
GRACEFUL_SHUTDOWN_S = 30  # requests in flight at SIGTERM get this long to finish
ACCEPT_ERROR_EVERY_S = 60.0


@dataclass(frozen=True)
class ConnectionLimits:
    """Deadlines and the cap of :class:`LimitedH11Protocol` (see the module docstring)."""

    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The limits the settings give."""
        return cls(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections)


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with head and body deadlines and a connection cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits | None = app_state.get(STATE_KEY)
        self.waiting_for: str | None = None  # "head" or "body": what the client owes
        self.waiting_since = 0.0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the head deadline; make room if the cap is passed."""
        super().connection_made(transport)
        self._follow()
        if self.limits is not None and len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._cancel_deadline()
        self.waiting_for = None
        super().connection_lost(exc)

    def handle_events(self) -> None:
        """Handle what arrived, then follow the client's state (head, body, done)."""
        super().handle_events()
        self._follow()

    def on_response_complete(self) -> None:
        """After an answer, the next request's head is owed."""
        super().on_response_complete()
        self._follow()

    def _follow(self) -> None:
        """Arm the deadline of what the client owes now, if it changed."""
        owed: str | None = None
        if self.limits is not None and not self.transport.is_closing():
            state = self.conn.their_state
            owed = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if owed == self.waiting_for:
            return
        self._cancel_deadline()
        self.waiting_for = owed
        if owed is not None and self.limits is not None:
            seconds = self.limits.header_timeout_s if owed == "head" else self.limits.body_timeout_s
            self.waiting_since = self.loop.time()
            self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        log.debug("closing a connection: its request %s took too long", self.waiting_for)
        self.transport.close()

    def _make_room(self) -> None:
        """Close the connection that has waited longest for a head (else this new one)."""
        assert self.limits is not None
        open_ = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_) <= self.limits.max_connections:
            return  # the ones over the cap are closing already
        idle = [
            c
            for c in open_
            if isinstance(c, LimitedH11Protocol) and c is not self and c.waiting_for == "head"
        ]
        victim = min(idle, key=lambda c: c.waiting_since) if idle else self
        log.debug("over %d connections: closing one", self.limits.max_connections)
        victim.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` for these settings."""
    return {
        "http": LimitedH11Protocol,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        # asyncio accepts up to `backlog` waiting connections in one go, before the cap
        # can close any: the cap's size keeps open sockets under twice the cap
        "backlog": settings.max_connections,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
    }


@contextmanager
def accept_errors_summarised() -> Iterator[None]:
    """Report failed ``accept()`` calls (out of file descriptors) once a minute.

    asyncio logs each failure with its traceback, as many times a second as there are
    connections waiting, which can fill a disk; every other report of the running loop
    goes where it went before.
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    next_at = 0.0
    hidden = 0

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal next_at, hidden
        if not str(context.get("message", "")).startswith("socket.accept() out of"):
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        if loop.time() < next_at:
            hidden += 1
            return
        next_at = loop.time() + ACCEPT_ERROR_EVERY_S
        log.error(
            "cannot accept connections: %s (%d more such errors in the last minute not shown)",
            context.get("exception"),
            hidden,
        )
        hidden = 0

    loop.set_exception_handler(handler)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)
