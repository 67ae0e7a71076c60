"""A small load generator for the HTTP service (``leafid loadtest``).

N client threads, each with keep-alive connections, post the same generated JPEG to
``/v1/identify`` until a request count or a time limit is reached (whichever comes
first). Reports requests per second, latency percentiles, errors and the server's
resident memory. Needs only the standard library, numpy and Pillow.

Several service URLs (replicas) are served round-robin, one request each in turn; the
report counts requests per URL. For a soak run, ``rss_every_s`` samples the server's
resident memory during the run (start, end and highest value are reported).

Adversarial mix mode (``hostile_share`` or ``slow_clients``): a share of the requests
post hostile files (:mod:`leafid.http.hostile`) instead of the photo (each on a fresh
connection; the client waits for the answer, as for the photo), and slow clients
(:mod:`leafid.http.slowclients`) hold sockets open beside the normal clients. The normal
requests' figures are then compared with a clean phase measured first (same clients,
same limits, no hostile files, no slow clients), and the report adds the hostile
requests' statuses, the slow clients' outcome and the server's RSS before and after.
"""

from __future__ import annotations

import argparse
import http.client
import io
import ipaddress
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from leafid.console import echo
from leafid.errors import EXIT_OK, EXIT_SOME_FAILED, InvalidRequestError
from leafid.http.hostile import BIG_SIDE, hostile_payloads
from leafid.http.slowclients import SlowClients, SlowClientsReport

READY_TIMEOUT_S = 60.0
DEFAULT_URL = "http://127.0.0.1:8000"
REQUEST_TIMEOUT_S = 30.0
ADVERSARIAL_RSS_EVERY_S = 0.5  # RSS sampling in adversarial mode when not asked for
SPARE_FILES = 64  # open files kept free besides the clients' sockets


@dataclass
class Report:
    """What one load-test run measured.

    Attributes:
        url: The service's base URL (several: joined with spaces).
        clients: Client threads.
        image: The uploaded photo: ``WxH, N bytes``.
        requests: Timed requests sent with the photo (warm-up and hostile files excluded).
        errors: Timed requests with the photo that failed (not HTTP 200, or no answer).
        error_kinds: Count per failure kind (``http_503``, ``ConnectionResetError``...).
        elapsed_s: Wall time of the timed part.
        rps: Successful requests per second.
        p50_ms: Median latency of the timed requests, milliseconds.
        p95_ms: 95th percentile latency.
        p99_ms: 99th percentile latency.
        max_ms: Slowest request.
        server_rss_mb: Server resident memory after the run (process and children), if known.
        server_peak_rss_mb: Server peak resident memory (VmHWM, summed), if known.
        server_rss_before_mb: Adversarial mode: server resident memory after the warm-up
            and the clean phase, before the hostile files and slow clients, if known.
        startup_to_ready_s: With ``--spawn``: process start until ``/readyz`` answered 200.
        server_cpu_ms_per_request: Server CPU time (user + system, process and children)
            per request sent, warm-up included, if the server's pid is known.
        client_cpu_ms_per_request: This load generator's own CPU time per request sent.
        per_url_requests: Timed requests with the photo sent to each URL (shown when
            there are several).
        rss_every_s: Seconds between the RSS samples, if sampled.
        rss_samples_mb: Server RSS (MB, process and children) sampled every
            ``rss_every_s`` from before the first request until after the last one.
        clean_requests: Adversarial mode: requests of the clean phase (0: not measured).
        clean_errors: Failed requests of the clean phase.
        clean_p50_ms: Median latency of the clean phase.
        clean_p99_ms: 99th percentile latency of the clean phase.
        p99_vs_clean: ``p99_ms`` / ``clean_p99_ms`` (None without a clean phase).
        hostile_share: Share of the timed requests that posted a hostile file.
        hostile_requests: Timed requests that posted a hostile file.
        hostile_statuses: Their outcomes: count per status (``http_400``...) or failure
            kind (``TimeoutError``...).
        hostile_by_file: The same per hostile file (by :attr:`HostilePayload.name`).
        hostile_failed: Hostile requests answered with a 5xx status or not answered.
        slow_clients: What happened to the slow clients' connections, if any ran.
    """

    url: str
    clients: int
    image: str
    requests: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    server_rss_mb: float | None = None
    server_peak_rss_mb: float | None = None
    startup_to_ready_s: float | None = None
    server_cpu_ms_per_request: float | None = None
    client_cpu_ms_per_request: float | None = None
    per_url_requests: dict[str, int] = field(default_factory=dict)
    rss_every_s: float | None = None
    rss_samples_mb: list[float] = field(default_factory=list)
    server_rss_before_mb: float | None = None
    clean_requests: int = 0
    clean_errors: int = 0
    clean_p50_ms: float = 0.0
    clean_p99_ms: float = 0.0
    p99_vs_clean: float | None = None
    hostile_share: float = 0.0
    hostile_requests: int = 0
    hostile_statuses: dict[str, int] = field(default_factory=dict)
    hostile_by_file: dict[str, dict[str, int]] = field(default_factory=dict)
    hostile_failed: int = 0
    slow_clients: SlowClientsReport | None = None

    def passed(self) -> bool:
        """Every request with the photo succeeded (one at least), no hostile one failed."""
        return self.errors == 0 and self.requests > 0 and self.hostile_failed == 0

    def lines(self) -> list[str]:
        """The report as human-readable lines."""
        out = [
            f"url            {self.url}",
            f"image          {self.image}",
            f"clients        {self.clients}",
            f"requests       {self.requests} in {self.elapsed_s:.2f} s",
            f"throughput     {self.rps:.1f} req/s",
            f"latency (ms)   p50 {self.p50_ms:.1f}  p95 {self.p95_ms:.1f}  "
            f"p99 {self.p99_ms:.1f}  max {self.max_ms:.1f}",
            f"errors         {self.errors}"
            + (f" {dict(sorted(self.error_kinds.items()))}" if self.error_kinds else ""),
        ]
        if len(self.per_url_requests) > 1:
            counts = ", ".join(f"{url} {n}" for url, n in self.per_url_requests.items())
            out.append(f"per URL        {counts}")
        if self.clean_requests:
            ratio = f"; p99 now {self.p99_vs_clean:.2f}x clean" if self.p99_vs_clean else ""
            out.append(
                f"clean phase    {self.clean_requests} requests, errors {self.clean_errors}, "
                f"p50 {self.clean_p50_ms:.1f} ms, p99 {self.clean_p99_ms:.1f} ms{ratio}"
            )
        if self.hostile_share:
            out.append(
                f"hostile files  {self.hostile_requests} requests ({self.hostile_share:.0%}), "
                f"failed (5xx or no answer) {self.hostile_failed}: "
                f"{dict(sorted(self.hostile_statuses.items()))}"
            )
            for name, outcomes in self.hostile_by_file.items():
                out.append(f"  {name:<24} {dict(sorted(outcomes.items()))}")
        if self.slow_clients is not None:
            out.append(f"slow clients   {self.slow_clients.line()}")
        if self.server_rss_mb is not None:
            peak = self.server_peak_rss_mb or 0.0
            before = self.server_rss_before_mb
            out.append(
                "server RSS     "
                + (f"before {before:.1f} MB, after " if before is not None else "")
                + f"{self.server_rss_mb:.1f} MB (peak {peak:.1f} MB)"
            )
        if self.rss_samples_mb:
            rss = self.rss_samples_mb
            out.append(
                f"RSS over run   start {rss[0]:.1f} MB, end {rss[-1]:.1f} MB, "
                f"max {max(rss):.1f} MB ({len(rss)} samples, every {self.rss_every_s:g} s)"
            )
        if self.startup_to_ready_s is not None:
            out.append(f"start-up       {self.startup_to_ready_s:.2f} s to ready")
        if self.client_cpu_ms_per_request is not None:
            server = self.server_cpu_ms_per_request
            out.append(
                "CPU/request    "
                + (f"server {server:.1f} ms, " if server is not None else "")
                + f"load generator {self.client_cpu_ms_per_request:.1f} ms"
            )
        return out


def parse_image_size(text: str) -> tuple[int, int]:
    """``1MP`` / ``0.3MP`` (4:3) or ``WxH`` -> (width, height).

    Raises:
        InvalidRequestError: The text is neither form.
    """
    t = text.strip().lower()
    try:
        if t.endswith("mp"):
            pixels = float(t[:-2]) * 1_000_000
            height = round(math.sqrt(pixels * 3 / 4))
            size = (round(height * 4 / 3), height)
        else:
            w, h = t.split("x")
            size = (int(w), int(h))
    except ValueError:
        raise InvalidRequestError(
            f"image size must be like 1MP or 1152x864, got {text!r}"
        ) from None
    if min(size) < 1 or size[0] * size[1] > 50_000_000:
        raise InvalidRequestError(f"image size {size[0]}x{size[1]} is out of range")
    return size


def make_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth shapes plus sensor-like noise) of the given size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 90 + 60 * np.sin(x / (width / 7.0)) * np.cos(y / (height / 5.0))
    g = 140 + 70 * np.cos((x + y) / (width / 4.0))
    b = 60 + 40 * np.sin(y / (height / 3.0))
    arr = np.stack([r, g, b], axis=-1) + rng.normal(0, 6, (height, width, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def multipart_body(filename: str, data: bytes, file_type: str = "image/jpeg") -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one ``images`` file; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="images"; filename="{filename}"\r\n'
        f"Content-Type: {file_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


def identify_path(url: str) -> str:
    """The ``/v1/identify`` path under a base URL, with the URL's query (``?explain=1``)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + "/v1/identify"
    return f"{path}?{parts.query}" if parts.query else path


def check_url(url: str, allow_remote: bool) -> tuple[str, int]:
    """The (host, port) of an ``http://`` URL; loopback only unless ``allow_remote``.

    Raises:
        InvalidRequestError: Not an http URL, or not loopback.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise InvalidRequestError(f"need an http:// URL, got {url!r}")
    host = parts.hostname
    if not allow_remote:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise InvalidRequestError(
                f"{host} is not a loopback address; pass --allow-remote to load-test it"
            )
    return host, parts.port or 80


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def _status_value(pid: int, key: str) -> float:
    """A ``kB`` value of ``/proc/<pid>/status`` in MB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in children.read_text().split())
            except OSError:
                continue
    return out


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by a process and its children."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in _process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def server_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in MB of a process and its children, summed."""
    tree = _process_tree(pid)
    return (
        sum(_status_value(p, "VmRSS") for p in tree),
        sum(_status_value(p, "VmHWM") for p in tree),
    )


@dataclass(frozen=True)
class _Target:
    """One service URL: where its requests go."""

    url: str
    host: str
    port: int
    path: str


@dataclass(frozen=True)
class _Upload:
    """One request body to post, with its headers."""

    name: str
    body: bytes
    headers: dict[str, str]


def _api_key() -> str | None:
    """The API key the load test sends, from ``$LEAFID_LOADTEST_API_KEY`` (None: none)."""
    return os.environ.get("LEAFID_LOADTEST_API_KEY") or None


def _upload(name: str, filename: str, data: bytes, file_type: str) -> _Upload:
    """The multipart upload of one file, with the API key if one is set for the load test."""
    body, content_type = multipart_body(filename, data, file_type)
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
    api_key = _api_key()
    if api_key:
        headers["X-API-Key"] = api_key
    return _Upload(name, body, headers)


@dataclass(frozen=True)
class _Ticket:
    """One request to send: timed or warm-up, where, and a hostile file or the photo."""

    timed: bool
    target: _Target
    hostile: _Upload | None = None


class _Client(threading.Thread):
    def __init__(self, run: _Run) -> None:
        super().__init__(daemon=True)
        self.run_state = run
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()  # timed requests per URL
        self.hostile: Counter[tuple[str, str]] = Counter()  # (file, outcome)
        self.conns: dict[_Target, http.client.HTTPConnection] = {}  # one keep-alive per URL

    def _post(self, target: _Target) -> str | None:
        r = self.run_state
        conn = self.conns.get(target)
        if conn is None:
            conn = http.client.HTTPConnection(target.host, target.port, timeout=REQUEST_TIMEOUT_S)
            self.conns[target] = conn
        try:
            conn.request("POST", target.path, body=r.photo.body, headers=r.photo.headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            del self.conns[target]
            return type(exc).__name__
        if response.will_close:
            conn.close()
            del self.conns[target]
        return None if response.status == 200 else f"http_{response.status}"

    @staticmethod
    def _post_hostile(target: _Target, upload: _Upload) -> str:
        """Post a hostile file on a connection of its own, as another client would.

        Returns:
            ``http_<status>``, or the kind of failure when there was no answer.
        """
        conn = http.client.HTTPConnection(target.host, target.port, timeout=REQUEST_TIMEOUT_S)
        try:
            conn.request("POST", target.path, body=upload.body, headers=upload.headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            return type(exc).__name__
        finally:
            conn.close()
        return f"http_{response.status}"

    def run(self) -> None:
        r = self.run_state
        while True:
            ticket = r.take()
            if ticket is None:
                break
            if ticket.hostile is not None:
                outcome = self._post_hostile(ticket.target, ticket.hostile)
                self.hostile[ticket.hostile.name, outcome] += 1
                continue
            start = time.perf_counter()
            error = self._post(ticket.target)
            if ticket.timed:
                self.sent[ticket.target.url] += 1
                if error is None:
                    self.latencies.append(time.perf_counter() - start)
                else:
                    self.errors[error] += 1
        for conn in self.conns.values():
            conn.close()


class _Run:
    """Shared state of the clients: what to send, the URLs and the ticket counter."""

    def __init__(
        self,
        urls: Sequence[str],
        photo: _Upload,
        allow_remote: bool,
        hostile: Sequence[_Upload] = (),
    ) -> None:
        if not urls:
            raise InvalidRequestError("no service URL given")
        self.targets = [
            _Target(url, *check_url(url, allow_remote), identify_path(url)) for url in urls
        ]
        self._handed_out = 0
        self.photo = photo
        self.hostile = list(hostile)
        self._lock = threading.Lock()
        self._warmup_left = 0
        self._timed_left = 0
        self._timed_taken = 0
        self._hostile_taken = 0
        self._hostile_share = 0.0
        self._deadline = 0.0
        self._duration_s = 0.0
        self.timed_started = 0.0

    def start(
        self, warmup: int, requests: int, duration_s: float, hostile_share: float = 0.0
    ) -> None:
        """Set how many warm-up and timed requests to hand out, and the time limit.

        Of the timed requests, ``hostile_share`` (spread evenly, in turn over
        :attr:`hostile`) post a hostile file instead of the photo.
        """
        if hostile_share and not self.hostile:
            raise InvalidRequestError("a hostile share needs hostile files")
        self._warmup_left = warmup
        self._timed_left = requests
        self._duration_s = duration_s
        self._hostile_share = hostile_share
        self._timed_taken = 0
        self.timed_started = 0.0

    def take(self) -> _Ticket | None:
        """The next request to send (URLs round-robin), or None when done."""
        with self._lock:
            target = self.targets[self._handed_out % len(self.targets)]
            if self._warmup_left > 0:
                self._warmup_left -= 1
                self._handed_out += 1
                return _Ticket(False, target)
            if self.timed_started == 0.0:
                self.timed_started = time.perf_counter()
                self._deadline = self.timed_started + self._duration_s
            if self._timed_left <= 0 or time.perf_counter() >= self._deadline:
                return None
            self._timed_left -= 1
            self._handed_out += 1
            share, k = self._hostile_share, self._timed_taken
            self._timed_taken += 1
            if math.floor((k + 1) * share) > math.floor(k * share):
                upload = self.hostile[self._hostile_taken % len(self.hostile)]
                self._hostile_taken += 1
                return _Ticket(True, target, upload)
            return _Ticket(True, target)


class _RssSampler(threading.Thread):
    """Samples a server's RSS every ``every_s`` seconds until stopped (and once more then)."""

    def __init__(self, pid: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.every_s = every_s
        self.samples: list[float] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append(server_memory_mb(self.pid)[0])
            if self._stop_event.wait(self.every_s):
                return

    def stop(self) -> list[float]:
        """Stop sampling, take the last sample and return them all."""
        self._stop_event.set()
        self.join()
        self.samples.append(server_memory_mb(self.pid)[0])
        return self.samples


@dataclass
class _Phase:
    """What the clients measured in one phase (warm-up, clean or the measured one)."""

    latencies_ms: list[float]  # sorted, successful timed requests with the photo
    errors: Counter[str]
    sent: Counter[str]
    hostile: Counter[tuple[str, str]]
    elapsed_s: float

    @property
    def requests(self) -> int:
        """Timed requests with the photo."""
        return len(self.latencies_ms) + sum(self.errors.values())


def _run_phase(
    run: _Run,
    clients: int,
    warmup: int,
    requests: int,
    duration_s: float,
    hostile_share: float = 0.0,
) -> _Phase:
    """Send one phase's requests from ``clients`` threads and wait for them all."""
    run.start(warmup, requests, duration_s, hostile_share)
    client_threads = [_Client(run) for _ in range(clients)]
    for c in client_threads:
        c.start()
    for c in client_threads:
        c.join()
    ended = time.perf_counter()
    phase = _Phase(
        latencies_ms=sorted(x * 1000.0 for c in client_threads for x in c.latencies),
        errors=Counter(),
        sent=Counter(),
        hostile=Counter(),
        elapsed_s=ended - run.timed_started if run.timed_started else 0.0,
    )
    for c in client_threads:
        phase.errors.update(c.errors)
        phase.sent.update(c.sent)
        phase.hostile.update(c.hostile)
    return phase


def _check_open_files(sockets: int) -> None:
    """Refuse a run that would need more open files than this process may have.

    Raises:
        InvalidRequestError: Over the limit.
    """
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit != resource.RLIM_INFINITY and sockets + SPARE_FILES > limit:
        raise InvalidRequestError(
            f"{sockets} client sockets need more than this process's {limit} open files; "
            "raise the limit (ulimit -n) or use fewer clients"
        )


def _start_slow_clients(run: _Run, count: int, max_s: float) -> list[SlowClients]:
    """Start ``count`` slow clients, spread over the URLs in turn."""
    n = len(run.targets)
    api_key = _api_key()
    groups = [
        SlowClients(
            t.host, t.port, t.path, count // n + (i < count % n), max_s=max_s, api_key=api_key
        )
        for i, t in enumerate(run.targets)
    ]
    for group in groups:
        group.start()
    return groups


def _stop_slow_clients(groups: list[SlowClients]) -> SlowClientsReport:
    """Stop the slow clients; one report for them all."""
    reports = [group.stop() for group in groups]
    if len(reports) == 1:
        return reports[0]
    answered: Counter[str] = Counter()
    for r in reports:
        answered.update(r.answered)
    return SlowClientsReport(
        clients=sum(r.clients for r in reports),
        opened=sum(r.opened for r in reports),
        dropped=sum(r.dropped for r in reports),
        answered=dict(answered),
        connect_failed=sum(r.connect_failed for r in reports),
        still_open=sum(r.still_open for r in reports),
        held_p50_s=max(r.held_p50_s for r in reports),  # the slowest URL's median
        held_max_s=max(r.held_max_s for r in reports),
    )


def _failed(outcome: str) -> bool:
    """A hostile request's outcome that is a failure: a 5xx status, or no answer."""
    return not outcome.startswith("http_") or int(outcome.removeprefix("http_")) >= 500


def run_load(
    url: str | Sequence[str],
    *,
    clients: int = 8,
    requests: int = 1000,
    duration_s: float = 20.0,
    warmup: int = 16,
    image_size: tuple[int, int] = (1155, 866),
    allow_remote: bool = False,
    server_pid: int | None = None,
    rss_every_s: float | None = None,
    hostile_share: float = 0.0,
    hostile_side: int = BIG_SIDE,
    slow_clients: int = 0,
    baseline: bool = True,
) -> Report:
    """Load-test a running service, or several replicas of it round-robin.

    With ``hostile_share`` or ``slow_clients`` (adversarial mode) the clients first send
    the warm-up, then (with ``baseline``) a clean phase with the same limits, then the
    measured phase with hostile files and slow clients in the mix.

    Args:
        url: The service's base URL, e.g. ``http://127.0.0.1:8000``, or several URLs,
            sent one request each in turn.
        clients: Client threads sending at the same time.
        requests: Most timed requests (per phase).
        duration_s: Most seconds for the timed part (per phase).
        warmup: Untimed requests sent first (by the same clients).
        image_size: Size of the generated JPEG.
        allow_remote: Allow a URL that is not a loopback address.
        server_pid: The server's process id, to measure its CPU time per request.
        rss_every_s: With ``server_pid``: sample the server's RSS this often (in
            adversarial mode, every ``ADVERSARIAL_RSS_EVERY_S`` when not given).
        hostile_share: Share of the measured requests that post a hostile file.
        hostile_side: Width and height of the hostile images that decode huge.
        slow_clients: Slow clients holding sockets during the measured phase.
        baseline: In adversarial mode, measure a clean phase first.

    Returns:
        The measured report (server memory after the run is not filled in here).
    """
    urls = [url] if isinstance(url, str) else list(url)
    adversarial = hostile_share > 0 or slow_clients > 0
    if adversarial:
        _check_open_files(clients * (len(urls) + 1) + slow_clients)
    jpeg = make_jpeg(*image_size)
    hostile = [
        _upload(p.name, p.filename, p.data, p.content_type)
        for p in (hostile_payloads(jpeg, hostile_side) if hostile_share > 0 else [])
    ]
    run = _Run(urls, _upload("photo", "loadtest.jpg", jpeg, "image/jpeg"), allow_remote, hostile)
    if adversarial and server_pid and rss_every_s is None:
        rss_every_s = ADVERSARIAL_RSS_EVERY_S
    sampler = _RssSampler(server_pid, rss_every_s) if server_pid and rss_every_s else None
    if sampler is not None:
        sampler.start()
    cpu_before = server_cpu_s(server_pid) if server_pid else 0.0
    own_before = time.process_time()
    clean = None
    rss_before = None
    slow_report = None
    if not adversarial:
        measured = _run_phase(run, clients, warmup, requests, duration_s)
    else:
        _run_phase(run, clients, warmup, 0, duration_s)
        if baseline:
            clean = _run_phase(run, clients, 0, requests, duration_s)
        rss_before = server_memory_mb(server_pid)[0] if server_pid else None
        # the measured phase ends by its deadline, plus at most one request's time-out
        max_s = duration_s + 2 * REQUEST_TIMEOUT_S
        slow = _start_slow_clients(run, slow_clients, max_s) if slow_clients else []
        try:
            measured = _run_phase(run, clients, 0, requests, duration_s, hostile_share)
        finally:
            slow_report = _stop_slow_clients(slow) if slow else None
    rss_samples = sampler.stop() if sampler is not None else []
    own_cpu = time.process_time() - own_before
    server_cpu = server_cpu_s(server_pid) - cpu_before if server_pid else None
    latencies = measured.latencies_ms
    sent: Counter[str] = Counter({u: 0 for u in urls})
    sent.update(measured.sent)
    hostile_statuses: Counter[str] = Counter()
    by_file: dict[str, dict[str, int]] = {u.name: {} for u in hostile}
    for (name, outcome), n in sorted(measured.hostile.items()):
        hostile_statuses[outcome] += n
        by_file[name][outcome] = n
    n_sent = warmup + measured.requests + measured.hostile.total()
    n_sent += clean.requests if clean is not None else 0
    p99 = percentile(latencies, 99)
    clean_p99 = percentile(clean.latencies_ms, 99) if clean is not None else 0.0
    return Report(
        url=" ".join(urls),
        clients=clients,
        image=f"{image_size[0]}x{image_size[1]} JPEG, {len(jpeg)} bytes",
        requests=measured.requests,
        errors=sum(measured.errors.values()),
        error_kinds=dict(measured.errors),
        elapsed_s=measured.elapsed_s,
        rps=len(latencies) / measured.elapsed_s if measured.elapsed_s > 0 else 0.0,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=p99,
        max_ms=latencies[-1] if latencies else 0.0,
        server_cpu_ms_per_request=None if server_cpu is None else server_cpu * 1000 / n_sent,
        client_cpu_ms_per_request=own_cpu * 1000 / n_sent,
        per_url_requests=dict(sent),
        rss_every_s=rss_every_s if sampler is not None else None,
        rss_samples_mb=rss_samples,
        server_rss_before_mb=rss_before,
        clean_requests=clean.requests if clean is not None else 0,
        clean_errors=sum(clean.errors.values()) if clean is not None else 0,
        clean_p50_ms=percentile(clean.latencies_ms, 50) if clean is not None else 0.0,
        clean_p99_ms=clean_p99,
        p99_vs_clean=p99 / clean_p99 if clean_p99 > 0 and p99 > 0 else None,
        hostile_share=hostile_share,
        hostile_requests=measured.hostile.total(),
        hostile_statuses=dict(hostile_statuses),
        hostile_by_file={name: outcomes for name, outcomes in by_file.items() if outcomes},
        hostile_failed=sum(n for outcome, n in hostile_statuses.items() if _failed(outcome)),
        slow_clients=slow_report,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """Poll ``<url>/readyz`` until it answers 200 (the URL may have a path prefix).

    Raises:
        InvalidRequestError: The server exited or was not ready in time.
    """
    host, port = check_url(url, allow_remote=True)
    ready_path = urlsplit(url).path.rstrip("/") + "/readyz"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise InvalidRequestError(f"the server exited with status {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", ready_path)
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except (OSError, http.client.HTTPException):  # not up yet, or not HTTP yet
            pass
        time.sleep(0.01)
    raise InvalidRequestError(f"{url} was not ready after {timeout_s:.0f} s")


def spawn_server(model: str | None, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m leafid.http serve`` on a free loopback port; returns (process, url)."""
    port = free_port()
    cmd = [sys.executable, "-m", "leafid.http", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    if model:
        cmd += ["--model", model]
    cmd += extra
    proc = subprocess.Popen(cmd)
    return proc, f"http://127.0.0.1:{port}"


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Stop a spawned server (SIGINT, like Ctrl-C, then kill if it hangs)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_from_args(args: argparse.Namespace) -> int:
    """The ``leafid loadtest`` command.

    Exit status 1 when a request with the photo failed, none was sent, or a hostile
    request got a 5xx status or no answer.
    """
    size = parse_image_size(args.image_size)
    urls: list[str] = args.url or [DEFAULT_URL]
    if args.spawn and args.url:
        raise InvalidRequestError("--spawn starts its own server: leave out --url")
    if args.rss_every is not None and not (args.spawn or args.pid):
        raise InvalidRequestError("--rss-every needs the server's process: --spawn or --pid")
    adversarial = args.hostile_share > 0 or args.slow_clients > 0
    if args.no_baseline and not adversarial:
        raise InvalidRequestError("--no-baseline needs --hostile-share or --slow-clients")
    if args.hostile_side is not None and not args.hostile_share:
        raise InvalidRequestError("--hostile-side needs --hostile-share")
    proc = None
    startup = None
    pid = args.pid
    try:
        if args.spawn:
            started = time.perf_counter()
            proc, url = spawn_server(args.model, args.serve_arg)
            wait_ready(url, proc, READY_TIMEOUT_S)
            startup = time.perf_counter() - started
            pid = proc.pid
            urls = [url]
        else:
            for url in urls:
                check_url(url, args.allow_remote)
        report = run_load(
            urls,
            clients=args.clients,
            requests=args.requests,
            duration_s=args.duration,
            warmup=args.warmup,
            image_size=size,
            allow_remote=args.allow_remote,
            server_pid=pid,
            rss_every_s=args.rss_every,
            hostile_share=args.hostile_share,
            hostile_side=args.hostile_side or BIG_SIDE,
            slow_clients=args.slow_clients,
            baseline=not args.no_baseline,
        )
        report.startup_to_ready_s = startup
        if pid is not None:
            report.server_rss_mb, report.server_peak_rss_mb = server_memory_mb(pid)
    finally:
        if proc is not None:
            stop_server(proc)
    if args.json:
        echo(json.dumps(asdict(report), sort_keys=True))
    else:
        for line in report.lines():
            echo(line)
    return EXIT_OK if report.passed() else EXIT_SOME_FAILED
