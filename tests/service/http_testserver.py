"""A real uvicorn server in a thread, for the HTTP tests that need a socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

if TYPE_CHECKING:
    import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_uvicorn(app: FastAPI, **options: Any) -> Iterator[uvicorn.Server]:
    """Serve ``app`` on a free loopback port with these ``uvicorn.Config`` options."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextmanager
def running_server(app: FastAPI, **options: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yields the base URL."""
    with running_uvicorn(app, **options) as server:
        yield f"http://127.0.0.1:{server.config.port}"
