"""A small load generator for the HTTP service (``leafid loadtest``).

N client threads, each with keep-alive connections, post the same generated JPEG to
``/v1/identify`` until a request count or a time limit is reached (whichever comes
first). Reports requests per second, latency percentiles, errors and the server's
resident memory. Needs only the standard library, numpy and Pillow.

Several service URLs (replicas) are served round-robin, one request each in turn; the
report counts requests per URL. For a soak run, ``rss_every_s`` samples the server's
resident memory during the run (start, end and highest value are reported).
"""

from __future__ import annotations

import argparse
import http.client
import io
import ipaddress
import json
import math
import os
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

READY_TIMEOUT_S = 60.0
DEFAULT_URL = "http://127.0.0.1:8000"
REQUEST_TIMEOUT_S = 30.0


@dataclass
class Report:
    """What one load-test run measured.

    Attributes:
        url: The service's base URL (several: joined with spaces).
        clients: Client threads.
        image: The uploaded photo: ``WxH, N bytes``.
        requests: Timed requests sent (warm-up excluded).
        errors: Timed requests that failed (not HTTP 200, or no answer).
        error_kinds: Count per failure kind (``http_503``, ``ConnectionResetError``...).
        elapsed_s: Wall time of the timed part.
        rps: Successful requests per second.
        p50_ms: Median latency of the timed requests, milliseconds.
        p95_ms: 95th percentile latency.
        p99_ms: 99th percentile latency.
        max_ms: Slowest request.
        server_rss_mb: Server resident memory after the run (process and children), if known.
        server_peak_rss_mb: Server peak resident memory (VmHWM, summed), if known.
        startup_to_ready_s: With ``--spawn``: process start until ``/readyz`` answered 200.
        server_cpu_ms_per_request: Server CPU time (user + system, process and children)
            per request sent, warm-up included, if the server's pid is known.
        client_cpu_ms_per_request: This load generator's own CPU time per request sent.
        per_url_requests: Timed requests sent to each URL (shown when there are several).
        rss_every_s: Seconds between the RSS samples, if sampled.
        rss_samples_mb: Server RSS (MB, process and children) sampled every
            ``rss_every_s`` from before the first request until after the last one.
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
        if self.server_rss_mb is not None:
            peak = self.server_peak_rss_mb or 0.0
            out.append(f"server RSS     {self.server_rss_mb:.1f} MB (peak {peak:.1f} MB)")
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


def multipart_body(filename: str, data: bytes) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one ``images`` file; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="images"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={boundary}"


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


class _Client(threading.Thread):
    def __init__(self, run: _Run) -> None:
        super().__init__(daemon=True)
        self.run_state = run
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()  # timed requests per URL
        self.conns: dict[_Target, http.client.HTTPConnection] = {}  # one keep-alive per URL

    def _post(self, target: _Target) -> str | None:
        r = self.run_state
        conn = self.conns.get(target)
        if conn is None:
            conn = http.client.HTTPConnection(target.host, target.port, timeout=REQUEST_TIMEOUT_S)
            self.conns[target] = conn
        try:
            conn.request("POST", target.path, body=r.body, headers=r.headers)
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

    def run(self) -> None:
        r = self.run_state
        while True:
            ticket = r.take()
            if ticket is None:
                break
            timed, target = ticket
            start = time.perf_counter()
            error = self._post(target)
            if timed:
                self.sent[target.url] += 1
                if error is None:
                    self.latencies.append(time.perf_counter() - start)
                else:
                    self.errors[error] += 1
        for conn in self.conns.values():
            conn.close()


class _Run:
    """Shared state of the clients: the request to send, the URLs and the ticket counter."""

    def __init__(
        self, urls: Sequence[str], body: bytes, content_type: str, allow_remote: bool
    ) -> None:
        if not urls:
            raise InvalidRequestError("no service URL given")
        self.targets = [
            _Target(
                url, *check_url(url, allow_remote), urlsplit(url).path.rstrip("/") + "/v1/identify"
            )
            for url in urls
        ]
        self._handed_out = 0
        self.body = body
        self.headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        api_key = os.environ.get("LEAFID_LOADTEST_API_KEY")
        if api_key:
            self.headers["X-API-Key"] = api_key
        self._lock = threading.Lock()
        self._warmup_left = 0
        self._timed_left = 0
        self._deadline = 0.0
        self._duration_s = 0.0
        self.timed_started = 0.0

    def start(self, warmup: int, requests: int, duration_s: float) -> None:
        """Set how many warm-up and timed requests to hand out, and the time limit."""
        self._warmup_left = warmup
        self._timed_left = requests
        self._duration_s = duration_s

    def take(self) -> tuple[bool, _Target] | None:
        """The next request to send: (timed?, URL, round-robin), or None when done."""
        with self._lock:
            target = self.targets[self._handed_out % len(self.targets)]
            if self._warmup_left > 0:
                self._warmup_left -= 1
                self._handed_out += 1
                return False, target
            if self.timed_started == 0.0:
                self.timed_started = time.perf_counter()
                self._deadline = self.timed_started + self._duration_s
            if self._timed_left <= 0 or time.perf_counter() >= self._deadline:
                return None
            self._timed_left -= 1
            self._handed_out += 1
            return True, target


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
) -> Report:
    """Load-test a running service, or several replicas of it round-robin.

    Args:
        url: The service's base URL, e.g. ``http://127.0.0.1:8000``, or several URLs,
            sent one request each in turn.
        clients: Client threads sending at the same time.
        requests: Most timed requests.
        duration_s: Most seconds for the timed part.
        warmup: Untimed requests sent first (by the same clients).
        image_size: Size of the generated JPEG.
        allow_remote: Allow a URL that is not a loopback address.
        server_pid: The server's process id, to measure its CPU time per request.
        rss_every_s: With ``server_pid``: sample the server's RSS this often.

    Returns:
        The measured report (server memory after the run is not filled in here).
    """
    urls = [url] if isinstance(url, str) else list(url)
    jpeg = make_jpeg(*image_size)
    body, content_type = multipart_body("loadtest.jpg", jpeg)
    run = _Run(urls, body, content_type, allow_remote)
    run.start(warmup, requests, duration_s)
    client_threads = [_Client(run) for _ in range(clients)]
    sampler = _RssSampler(server_pid, rss_every_s) if server_pid and rss_every_s else None
    if sampler is not None:
        sampler.start()
    cpu_before = server_cpu_s(server_pid) if server_pid else 0.0
    own_before = time.process_time()
    for c in client_threads:
        c.start()
    for c in client_threads:
        c.join()
    ended = time.perf_counter()
    rss_samples = sampler.stop() if sampler is not None else []
    own_cpu = time.process_time() - own_before
    server_cpu = server_cpu_s(server_pid) - cpu_before if server_pid else None
    latencies = sorted(x * 1000.0 for c in client_threads for x in c.latencies)
    errors: Counter[str] = Counter()
    sent: Counter[str] = Counter({u: 0 for u in urls})
    for c in client_threads:
        errors.update(c.errors)
        sent.update(c.sent)
    elapsed = ended - run.timed_started if run.timed_started else 0.0
    n_sent = len(latencies) + sum(errors.values()) + warmup
    return Report(
        url=" ".join(urls),
        clients=clients,
        image=f"{image_size[0]}x{image_size[1]} JPEG, {len(jpeg)} bytes",
        requests=len(latencies) + sum(errors.values()),
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        elapsed_s=elapsed,
        rps=len(latencies) / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        max_ms=latencies[-1] if latencies else 0.0,
        server_cpu_ms_per_request=None if server_cpu is None else server_cpu * 1000 / n_sent,
        client_cpu_ms_per_request=own_cpu * 1000 / n_sent,
        per_url_requests=dict(sent),
        rss_every_s=rss_every_s if sampler is not None else None,
        rss_samples_mb=rss_samples,
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
    """The ``leafid loadtest`` command; exit status 1 when any request failed."""
    size = parse_image_size(args.image_size)
    urls: list[str] = args.url or [DEFAULT_URL]
    if args.spawn and args.url:
        raise InvalidRequestError("--spawn starts its own server: leave out --url")
    if args.rss_every is not None and not (args.spawn or args.pid):
        raise InvalidRequestError("--rss-every needs the server's process: --spawn or --pid")
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
    return EXIT_OK if report.errors == 0 and report.requests > 0 else EXIT_SOME_FAILED
