"""Slow clients for ``leafid loadtest --slow-clients``: sockets held open on purpose.

Each slow client opens a connection to the service and then, by its index in turn:
stalls (sends nothing), trickles request headers (one header line per tick, never
ending them), or sends complete headers and trickles the body (one small chunk per
tick, far short of its ``Content-Length``). When the server drops the connection or
answers, the client notes it and opens a new one after a pause. All of them run in one
asyncio loop on a thread of their own, stop when told to or after ``max_s`` seconds,
and connect only where they are told to (the load test checks the URL first).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, field
from itertools import count

MODES = ("stall", "slow-headers", "slow-body")
TRICKLE_EVERY_S = 1.0
REOPEN_AFTER_S = 1.0  # after the server drops a connection; keeps reconnects a trickle too
CONNECT_TIMEOUT_S = 5.0
DECLARED_BODY_BYTES = 1024 * 1024  # under the service's upload limit, so not refused at once
BOUNDARY = "leafid-slow-client"


@dataclass
class SlowClientsReport:
    """What happened to the slow clients' connections.

    Attributes:
        clients: Slow clients that ran.
        opened: Connections opened (each client re-opens after the server ends one).
        dropped: Connections the server closed without an answer.
        answered: Connections the server ended with an HTTP answer, per status
            (``http_408``...; ``other`` when the answer was not a status line).
        connect_failed: Connection attempts refused or timed out.
        still_open: Connections still open when the slow clients were stopped.
        held_p50_s: Median seconds a connection lasted before the server ended it.
        held_max_s: Longest such time.
    """

    clients: int
    opened: int = 0
    dropped: int = 0
    answered: dict[str, int] = field(default_factory=dict)
    connect_failed: int = 0
    still_open: int = 0
    held_p50_s: float = 0.0
    held_max_s: float = 0.0

    def line(self) -> str:
        """The report as one human-readable line."""
        answered = sum(self.answered.values())
        detail = f" {dict(sorted(self.answered.items()))}" if self.answered else ""
        held = (
            f" (after median {self.held_p50_s:.1f} s, max {self.held_max_s:.1f} s)"
            if self.dropped or answered
            else ""
        )
        return (
            f"{self.clients} clients: {self.opened} connections opened, "
            f"{self.dropped} dropped and {answered} answered{detail} by the server{held}, "
            f"{self.still_open} still open at the end, {self.connect_failed} failed to connect"
        )


def _first_bytes(host: str, path: str, mode: str, api_key: str | None) -> bytes:
    """What a slow client sends at once after connecting."""
    if mode == "stall":
        return b""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
    if api_key:
        lines.append(f"X-API-Key: {api_key}")
    if mode == "slow-headers":
        return ("\r\n".join(lines) + "\r\n").encode()
    lines += [
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        f"Content-Length: {DECLARED_BODY_BYTES}",
    ]
    part = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="images"; filename="slow.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return ("\r\n".join(lines) + "\r\n\r\n" + part).encode() + b"\xff\xd8\xff\xe0"


def _tick_bytes(mode: str, tick: int) -> bytes:
    """What a slow client sends at each tick after the first bytes."""
    if mode == "slow-headers":
        return f"X-Slow-{tick}: {tick}\r\n".encode()
    if mode == "slow-body":
        return b"\x00" * 16
    return b""


class SlowClients:
    """``clients`` slow connections to ``host:port``, held until :meth:`stop`."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        clients: int,
        *,
        max_s: float,
        api_key: str | None = None,
        trickle_every_s: float = TRICKLE_EVERY_S,
        reopen_after_s: float = REOPEN_AFTER_S,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.clients = clients
        self.max_s = max_s
        self.api_key = api_key
        self.trickle_every_s = trickle_every_s
        self.reopen_after_s = reopen_after_s
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._loop_ready = threading.Event()
        self._all_connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._connected_once: set[int] = set()
        self._held: list[float] = []
        self._answered: Counter[str] = Counter()
        self.report = SlowClientsReport(clients)

    def start(self, connect_wait_s: float = CONNECT_TIMEOUT_S) -> None:
        """Start the clients; wait until each has connected once (at most ``connect_wait_s``)."""
        self._thread.start()
        self._all_connected.wait(connect_wait_s)

    def stop(self) -> SlowClientsReport:
        """Close every connection, stop the clients and return the report."""
        self._loop_ready.wait()
        if self._loop is not None and self._stopping is not None:
            try:
                self._loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:  # the loop already ended by itself, after max_s
                pass
        self._thread.join()
        held = sorted(self._held)
        self.report.answered = dict(self._answered)
        self.report.held_p50_s = held[(len(held) - 1) // 2] if held else 0.0
        self.report.held_max_s = held[-1] if held else 0.0
        return self.report

    def _main(self) -> None:
        asyncio.run(self._run_all())

    async def _run_all(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._loop_ready.set()
        if self.clients == 0:
            self._all_connected.set()
        tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        try:
            await asyncio.wait_for(self._stopping.wait(), self.max_s)
        except TimeoutError:
            self._stopping.set()
        await asyncio.gather(*tasks)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but end at once when the clients are stopped."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _client(self, index: int) -> None:
        assert self._stopping is not None and self._loop is not None
        mode = MODES[index % len(MODES)]
        while not self._stopping.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError):
                self.report.connect_failed += 1
                await self._pause(self.reopen_after_s)
                continue
            self.report.opened += 1
            self._connected_once.add(index)
            if len(self._connected_once) == self.clients:
                self._all_connected.set()
            opened_at = self._loop.time()
            ended = await self._hold(reader, writer, mode)
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:  # reset by the server
                pass
            if not ended:
                self.report.still_open += 1
                return
            self._held.append(self._loop.time() - opened_at)
            await self._pause(self.reopen_after_s)

    async def _hold(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str
    ) -> bool:
        """Keep one connection slow until the server ends it (True) or the stop (False)."""
        assert self._stopping is not None
        trickle = asyncio.create_task(self._trickle(writer, mode))
        answer = asyncio.create_task(reader.read(64))
        stop = asyncio.create_task(self._stopping.wait())
        done, pending = await asyncio.wait(
            {trickle, answer, stop}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if answer in done and answer.exception() is None and answer.result():
            status = answer.result().split(b" ", 2)
            ok = len(status) > 1 and status[0].startswith(b"HTTP/") and status[1].isdigit()
            self._answered["http_" + status[1].decode() if ok else "other"] += 1
            return True
        if stop in done:
            return False
        self.report.dropped += 1  # EOF, reset, or a write that failed
        return True

    async def _trickle(self, writer: asyncio.StreamWriter, mode: str) -> None:
        """Send the first bytes, then a few bytes per tick, without end."""
        writer.write(_first_bytes(self.host, self.path, mode, self.api_key))
        await writer.drain()
        for tick in count():
            await asyncio.sleep(self.trickle_every_s)
            writer.write(_tick_bytes(mode, tick))
            await writer.drain()
