"""Connection limits of the served app (leafid.http.server) on a real uvicorn, loopback only.

Slow clients are dropped after the head and body deadlines, idle keep-alive connections
after their timeout, the connection cap keeps /healthz answering while many idle sockets
are open, failed accepts are summarised in the log, and requests still queued when the
shutdown grace ends are answered 503. Timeouts are set short so that each test takes
seconds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import TINY_COLOURS, encode, noisy

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
import httpx  # noqa: E402
from http_testserver import running_uvicorn  # noqa: E402

from leafid.classifier import Classifier  # noqa: E402
from leafid.http import server as http_server  # noqa: E402
from leafid.http.app import create_app, get_classifier  # noqa: E402
from leafid.http.server import LimitedH11Protocol, uvicorn_options  # noqa: E402
from leafid.http.settings import Settings  # noqa: E402

HEADER_TIMEOUT_S = 0.6
BODY_TIMEOUT_S = 1.0


def limited_settings(model: Path, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "model": model,
        "header_timeout_s": HEADER_TIMEOUT_S,
        "body_timeout_s": BODY_TIMEOUT_S,
        "keep_alive_timeout_s": 1,
        "max_connections": 30,
    }
    return Settings(**{**values, **changes})


@pytest.fixture
def served(tiny_model: Path) -> Iterator[Any]:
    settings = limited_settings(tiny_model)
    with running_uvicorn(create_app(settings), **uvicorn_options(settings)) as server:
        yield server


def connect(server: Any) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.config.port), timeout=5)
    return sock


def closed_after(
    sock: socket.socket, trickle: list[bytes], every_s: float, limit_s: float
) -> float:
    """Send ``trickle`` one piece every ``every_s`` until the server closes; the seconds it took.

    Fails if the server has not closed the connection after ``limit_s``.
    """
    start = time.monotonic()
    sock.settimeout(every_s)
    pieces = iter(trickle)
    while time.monotonic() - start < limit_s:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - start
        piece = next(pieces, b"")
        if piece:
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
    raise AssertionError(f"the server kept the connection open for {limit_s} s")


def healthz_status(server: Any) -> int:
    url = f"http://127.0.0.1:{server.config.port}/healthz"
    return httpx.get(url, timeout=3).status_code


def test_silent_connection_is_closed_after_the_head_deadline(served: Any) -> None:
    with connect(served) as sock:
        took = closed_after(sock, [], 0.05, limit_s=5)
    assert HEADER_TIMEOUT_S * 0.8 <= took < HEADER_TIMEOUT_S + 2


def test_headers_sent_byte_by_byte_are_cut_off(served: Any) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
    with connect(served) as sock:
        took = closed_after(sock, [bytes([b]) for b in head], 0.02, limit_s=5)
    # each byte would have reset uvicorn's keep-alive timer; the head deadline holds
    assert HEADER_TIMEOUT_S * 0.8 <= took < HEADER_TIMEOUT_S + 2
    assert healthz_status(served) == 200


def test_slow_body_is_cut_off_and_not_classified(tiny_model: Path) -> None:
    settings = limited_settings(tiny_model)
    app = create_app(settings)
    counting = CountingClassifier(tiny_model)
    app.dependency_overrides[get_classifier] = lambda: counting
    head = (
        b"POST /v1/identify HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n'
    )
    with running_uvicorn(app, **uvicorn_options(settings)) as server:
        with connect(server) as sock:
            sock.sendall(head)
            took = closed_after(sock, [b"\xff"] * 1000, 0.05, limit_s=6)
        assert BODY_TIMEOUT_S * 0.8 <= took < BODY_TIMEOUT_S + 2
        deadline = time.monotonic() + 3
        metrics = ""
        while 'status="499"' not in metrics and time.monotonic() < deadline:
            metrics = httpx.get(f"http://127.0.0.1:{server.config.port}/metrics").text
            time.sleep(0.05)
    assert 'route="/v1/identify",status="499"} 1.0' in metrics  # the request saw it gone
    assert counting.decoded == 0


def test_idle_keep_alive_connection_is_closed(tiny_model: Path) -> None:
    # a head deadline far beyond the keep-alive one, so only keep-alive can close it
    settings = limited_settings(tiny_model, header_timeout_s=5)
    with running_uvicorn(create_app(settings), **uvicorn_options(settings)) as server:
        with connect(server) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(3)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            took = closed_after(sock, [], 0.05, limit_s=5)
    assert 0.8 <= took < 2


def knock(server: Any) -> socket.socket:
    """A connection that is opened and then left idle (not waited for: many pile up)."""
    sock = socket.socket()
    sock.setblocking(False)
    try:
        sock.connect(("127.0.0.1", server.config.port))
    except BlockingIOError:
        pass
    return sock


def test_healthz_answers_while_many_idle_sockets_are_open(served: Any) -> None:
    cap = 30
    idle = [knock(served) for _ in range(10 * cap)]
    try:
        time.sleep(0.3)
        assert cap // 2 <= len(served.server_state.connections) <= cap
        started = time.monotonic()
        for _ in range(5):
            assert healthz_status(served) == 200
        assert time.monotonic() - started < 3
    finally:
        for sock in idle:
            sock.close()


def test_busy_connections_are_kept_over_idle_ones(tiny_model: Path) -> None:
    settings = limited_settings(
        tiny_model, max_connections=3, header_timeout_s=5.0, body_timeout_s=10.0
    )
    with running_uvicorn(create_app(settings), **uvicorn_options(settings)) as server:
        busy = connect(server)  # head sent, body owed: not evicted for an idle one
        busy.sendall(
            b"POST /v1/identify HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        )
        time.sleep(0.1)
        idle = [knock(server) for _ in range(6)]
        try:
            time.sleep(0.2)
            protocols = [
                c for c in server.server_state.connections if isinstance(c, LimitedH11Protocol)
            ]
            assert len(protocols) == 3
            assert sum(c.waiting_for == "body" for c in protocols) == 1
        finally:
            for sock in [busy, *idle]:
                sock.close()


def test_accept_errors_are_summarised(caplog: pytest.LogCaptureFixture) -> None:
    other: list[dict[str, Any]] = []

    async def flood() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: other.append(context))
        with http_server.accept_errors_summarised():
            for _ in range(500):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    }
                )
            loop.call_exception_handler({"message": "something else"})
        assert loop.get_exception_handler() is not None  # the previous one is back

    with caplog.at_level(logging.ERROR, logger="leafid.http.server"):
        asyncio.run(flood())
    records = [r for r in caplog.records if r.name == "leafid.http.server"]
    assert len(records) == 1 and "Too many open files" in records[0].getMessage()
    assert [c["message"] for c in other] == ["something else"]


class CountingClassifier(Classifier):
    """The tiny model, counting the photos it decodes."""

    decoded = 0

    def try_load(self, image: Any, budget: Any = None) -> Any:
        self.decoded += 1
        return super().try_load(image, budget)


class SlowClassifier(CountingClassifier):
    """Every model call takes ``delay`` seconds."""

    delay = 1.5

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.delay)
        return super().probabilities(batch)


def jpeg() -> bytes:
    return encode(noisy(TINY_COLOURS["rubra"], size=(64, 48)))


def identify(url: str) -> httpx.Response:
    files = [("images", ("a.jpg", jpeg(), "image/jpeg"))]
    return httpx.post(url + "/v1/identify", files=files, timeout=10)


def test_request_of_a_client_gone_is_not_decoded(tiny_model: Path) -> None:
    settings = Settings(model=tiny_model, inference_slots=1)
    app = create_app(settings)
    slow = SlowClassifier(tiny_model)
    app.dependency_overrides[get_classifier] = lambda: slow
    data = jpeg()
    body = (
        b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n'
        + data
        + b"\r\n--b--\r\n"
    )
    head = (
        "POST /v1/identify HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with running_uvicorn(app, **uvicorn_options(settings)) as server:
        url = f"http://127.0.0.1:{server.config.port}"
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(identify, url)  # holds the only slot for delay seconds
            time.sleep(0.3)
            with connect(server) as sock:  # waits for the slot, then hangs up
                sock.sendall(head + body)
                time.sleep(0.2)
            assert first.result().status_code == 200
        time.sleep(0.3)
        metrics = httpx.get(url + "/metrics").text
    assert slow.decoded == 1  # only the first request's photo
    assert 'route="/v1/identify",status="499"} 1.0' in metrics


def test_requests_queued_when_the_grace_ends_get_503(tiny_model: Path) -> None:
    settings = Settings(model=tiny_model, inference_slots=1, retry_after_s=3)
    app = create_app(settings)
    slow = SlowClassifier(tiny_model)
    app.dependency_overrides[get_classifier] = lambda: slow
    options = {**uvicorn_options(settings), "timeout_graceful_shutdown": 0.3}
    with running_uvicorn(app, **options) as server:
        url = f"http://127.0.0.1:{server.config.port}"
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(identify, url)
            time.sleep(0.3)
            queued = pool.submit(identify, url)
            time.sleep(0.3)
            server.should_exit = True
            answers = [running.result(), queued.result()]
    statuses = [r.status_code for r in answers]
    assert 500 not in statuses, [r.text for r in answers]
    r = answers[1]
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "shutting_down"
    assert r.headers["Retry-After"] == "3"


def test_serve_passes_the_limits_to_uvicorn(tiny_model: Path) -> None:
    settings = Settings(model=tiny_model, keep_alive_timeout_s=7, max_connections=99)
    options = uvicorn_options(settings)
    assert options["http"] is LimitedH11Protocol
    assert options["timeout_keep_alive"] == 7
    assert options["backlog"] == 99
    assert options["timeout_graceful_shutdown"] == http_server.GRACEFUL_SHUTDOWN_S
