"""The serve/loadtest commands and the load generator, against real servers."""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_tiny_model

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from http_testserver import running_server  # noqa: E402

from leafid.errors import InvalidRequestError, ModelNotFoundError  # noqa: E402
from leafid.http import commands, hostile, loadtest  # noqa: E402
from leafid.http.app import create_app  # noqa: E402
from leafid.http.settings import Settings  # noqa: E402
from leafid.http.slowclients import SlowClients, SlowClientsReport  # noqa: E402


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_register_adds_serve_and_loadtest() -> None:
    args = parse("serve", "--port", "9001", "--processes", "2")
    assert args.func is commands.cmd_serve
    assert (args.host, args.port, args.processes) == ("127.0.0.1", 9001, 2)
    args = parse("loadtest", "--requests", "5", "--duration", "1")
    assert args.func is commands.cmd_loadtest
    assert args.url is None and args.clients == 8  # run_from_args: loadtest.DEFAULT_URL


def test_commands_module_imports_no_web_framework() -> None:
    code = (
        "import sys, leafid.http.commands; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'pydantic', 'starlette') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_serve_with_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    args = parse("serve", "--model", str(tmp_path / "missing.onnx"))
    with pytest.raises(ModelNotFoundError, match="missing.onnx"):
        commands.cmd_serve(args)


def test_cli_serve_missing_model_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = pytest.importorskip("leafid.cli")
    status = cli.main(["serve", "--model", str(tmp_path / "missing.onnx")])
    err = capsys.readouterr().err
    assert status != 0
    assert "missing.onnx" in err and "Traceback" not in err


def test_image_size_and_url_checks() -> None:
    w, h = loadtest.parse_image_size("1MP")
    assert abs(w * h - 1_000_000) < 5_000 and w > h
    assert loadtest.parse_image_size("640x480") == (640, 480)
    for bad in ("big", "0x10", "10x"):
        with pytest.raises(InvalidRequestError):
            loadtest.parse_image_size(bad)
    assert loadtest.check_url("http://127.0.0.1:8123", False) == ("127.0.0.1", 8123)
    assert loadtest.check_url("http://localhost:80", False) == ("localhost", 80)
    for bad in ("http://example.org:8000", "https://127.0.0.1", "ftp://127.0.0.1"):
        with pytest.raises(InvalidRequestError):
            loadtest.check_url(bad, False)
    assert loadtest.check_url("http://example.org:8000", True) == ("example.org", 8000)
    assert loadtest.identify_path("http://127.0.0.1:8000") == "/v1/identify"
    assert loadtest.identify_path("http://h:1/api/?explain=1&similar=3") == (
        "/api/v1/identify?explain=1&similar=3"
    )


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadtest.percentile(values, 50) == 50
    assert loadtest.percentile(values, 99) == 99
    assert loadtest.percentile(values, 100) == 100
    assert loadtest.percentile([], 50) == 0


def test_make_jpeg_is_a_photo_sized_jpeg() -> None:
    data = loadtest.make_jpeg(400, 300)
    assert data[:2] == b"\xff\xd8"
    assert 5_000 < len(data) < 400 * 300 * 3


def test_run_load_against_a_server(tiny_model: Path) -> None:
    with running_server(create_app(Settings(model=tiny_model))) as url:
        report = loadtest.run_load(
            url, clients=3, requests=24, duration_s=20, warmup=3, image_size=(320, 240)
        )
    assert report.errors == 0, report.error_kinds
    assert report.requests == 24
    assert report.rps > 0
    assert 0 < report.p50_ms <= report.p95_ms <= report.p99_ms <= report.max_ms


def test_run_load_counts_errors(tiny_model: Path) -> None:
    app = create_app(Settings(model=tiny_model, api_keys=["k"]))
    with running_server(app) as url:
        report = loadtest.run_load(url, clients=2, requests=6, warmup=0, image_size=(64, 48))
    assert report.errors == 6
    assert report.error_kinds == {"http_401": 6}


def test_loadtest_spawn_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_tiny_model(tmp_path / "m.onnx")
    args = parse(
        "loadtest", "--spawn", "--model", str(model), "--clients", "2",
        "--requests", "10", "--duration", "10", "--warmup", "2", "--image-size", "320x240",
        "--json",
    )  # fmt: skip
    assert commands.cmd_loadtest(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["requests"] == 10
    assert report["server_rss_mb"] > 10
    assert report["server_cpu_ms_per_request"] > 0 and report["client_cpu_ms_per_request"] > 0
    assert 0 < report["startup_to_ready_s"] < 30


def test_wait_ready_polls_readyz_under_the_url_path_prefix() -> None:
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            ready = self.path == "/leafid/readyz" and len(seen) > 2  # 503 at first
            self.send_response(200 if ready else 503 if self.path.endswith("readyz") else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/leafid/"
        loadtest.wait_ready(url, None, timeout_s=10)
        assert set(seen) == {"/leafid/readyz"} and len(seen) == 3
        with pytest.raises(InvalidRequestError, match="not ready"):
            loadtest.wait_ready(url.replace("/leafid/", "/other"), None, timeout_s=0.3)
    finally:
        server.shutdown()
        server.server_close()


# --- adversarial mix mode: hostile files, slow clients -------------------------------


def test_loadtest_defaults_leave_the_adversarial_mode_off() -> None:
    args = parse("loadtest")
    assert (args.hostile_share, args.hostile_side, args.slow_clients) == (0.0, None, 0)
    assert args.no_baseline is False


def test_adversarial_options_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidRequestError, match="--no-baseline needs"):
        commands.cmd_loadtest(parse("loadtest", "--no-baseline"))
    with pytest.raises(InvalidRequestError, match="--hostile-side needs"):
        commands.cmd_loadtest(parse("loadtest", "--hostile-side", "100", "--slow-clients", "1"))
    for bad in (["--hostile-share", "1.5"], ["--slow-clients", "-1"], ["--hostile-side", "0"]):
        with pytest.raises(SystemExit):
            parse("loadtest", *bad)
    assert "must be" in capsys.readouterr().err


def test_hostile_payloads_are_deterministic_small_and_varied() -> None:
    jpeg = loadtest.make_jpeg(64, 48)
    payloads = hostile.hostile_payloads(jpeg, big_side=64)
    again = hostile.hostile_payloads(jpeg, big_side=64)
    assert [(p.name, p.filename, p.content_type, p.data) for p in payloads] == [
        (p.name, p.filename, p.content_type, p.data) for p in again
    ]
    assert [p.data for p in hostile.hostile_payloads(jpeg, big_side=64, seed=1)] != [
        p.data for p in payloads
    ]  # the random bytes and the corruption follow the seed
    names = [p.name for p in payloads]
    assert len(set(names)) == len(names) >= 15
    assert all(len(p.data) < 20_000 for p in payloads)
    by_name = {p.name: p.data for p in payloads}
    assert by_name["empty"] == b""
    assert by_name["jpeg-truncated"] == jpeg[: len(jpeg) // 2]
    assert by_name["jpeg-corrupt"] != jpeg and len(by_name["jpeg-corrupt"]) == len(jpeg)


def test_huge_images_are_tiny_files_that_decode_to_their_size() -> None:
    jpeg = loadtest.make_jpeg(64, 48)
    big = {p.name: p.data for p in hostile.hostile_payloads(jpeg)}
    assert len(big["gray16-huge"]) < 200_000 and len(big["webp-lossless-huge"]) < 100
    for name in ("gray16-huge", "webp-lossless-huge"):
        assert Image.open(io.BytesIO(big[name])).size == (hostile.BIG_SIDE, hostile.BIG_SIDE)
    small = {p.name: p.data for p in hostile.hostile_payloads(jpeg, big_side=40)}
    gray = Image.open(io.BytesIO(small["gray16-huge"]))
    assert (gray.format, gray.mode, gray.size) == ("PNG", "I;16", (40, 40))
    assert gray.getextrema() == (0x8000, 0x8000)
    webp = Image.open(io.BytesIO(small["webp-lossless-huge"]))
    assert (webp.format, webp.size) == ("WEBP", (40, 40))
    assert webp.convert("RGB").getextrema() == ((40, 40), (160, 160), (60, 60))


@pytest.mark.parametrize("name", ["png", "jpeg", "gif", "bmp", "tiff"])
def test_header_bombs_claim_more_pixels_than_pillow_allows(name: str) -> None:
    payloads = hostile.hostile_payloads(loadtest.make_jpeg(64, 48), big_side=16)
    data = {p.name: p.data for p in payloads}[f"{name}-header-bomb"]
    assert len(data) < 20_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))


def test_jpeg_header_bomb_needs_a_frame_header() -> None:
    with pytest.raises(ValueError, match="frame header"):
        hostile.jpeg_header_bomb(b"\xff\xd8\xff\xda\x00\x02", 10, 10)


class TinyServer:
    """A loopback TCP server for the slow-client tests.

    Each connection is read until the client closes it, ``end_after_s`` passes (then the
    server sends ``answer``, if any, and closes), or 10 s pass. What each connection
    sent is kept in ``received``.
    """

    def __init__(self, end_after_s: float | None = None, answer: bytes = b"") -> None:
        self.end_after_s = end_after_s
        self.answer = answer
        self.received: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by the test
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + (self.end_after_s or 10.0)
        data = b""
        conn.settimeout(0.02)
        with conn:
            while time.monotonic() < deadline:
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
            if self.end_after_s is not None and self.answer:
                conn.sendall(self.answer)
        self.received.append(data)

    def wait_for(self, connections: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < connections and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.sock.close()


def test_slow_clients_stall_and_trickle_headers_and_body() -> None:
    server = TinyServer()
    try:
        slow = SlowClients(
            "127.0.0.1", server.port, "/v1/identify", 3, max_s=10, trickle_every_s=0.02
        )
        slow.start()
        time.sleep(0.5)
        report = slow.stop()
        server.wait_for(3)
    finally:
        server.close()
    assert (report.clients, report.opened, report.still_open) == (3, 3, 3)
    assert (report.dropped, report.answered, report.connect_failed) == (0, {}, 0)
    stall, headers, body = sorted(server.received, key=len)
    assert stall == b""
    assert headers.startswith(b"POST /v1/identify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-0: 0\r\n")
    assert b"\r\n\r\n" not in headers  # the headers never end
    head, _, sent_body = body.partition(b"\r\n\r\n")
    assert b"Content-Length: 1048576" in head
    assert 0 < len(sent_body) < 1_048_576


def test_slow_clients_reopen_when_dropped_and_count_answers() -> None:
    dropper = TinyServer(end_after_s=0.15)
    answerer = TinyServer(end_after_s=0.15, answer=b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    try:
        slow = [
            SlowClients("127.0.0.1", server.port, "/", 2, max_s=10, reopen_after_s=0.05)
            for server in (dropper, answerer)
        ]
        for s in slow:
            s.start()
        time.sleep(0.8)
        dropped, answered = (s.stop() for s in slow)
    finally:
        dropper.close()
        answerer.close()
    assert dropped.opened >= 4 and dropped.dropped >= 2 and dropped.answered == {}
    assert answered.opened >= 4 and answered.answered["http_408"] >= 2 and answered.dropped == 0
    for r in (dropped, answered):
        assert r.opened == r.dropped + sum(r.answered.values()) + r.still_open
        assert 0.1 < r.held_p50_s <= r.held_max_s < 1.0


def test_slow_clients_stop_by_themselves_after_max_s() -> None:
    server = TinyServer()
    try:
        slow = SlowClients("127.0.0.1", server.port, "/", 2, max_s=0.2)
        slow.start()
        server.wait_for(2, timeout_s=5)  # the clients close their sockets themselves
        assert len(server.received) == 2
        assert slow.stop().still_open == 2
    finally:
        server.close()


def test_slow_clients_count_refused_connections() -> None:
    port = loadtest.free_port()  # nothing listens there
    slow = SlowClients("127.0.0.1", port, "/", 2, max_s=10, reopen_after_s=0.05)
    slow.start(connect_wait_s=0.3)
    report = slow.stop()
    assert report.opened == 0 and report.connect_failed >= 2


def test_hostile_requests_are_spread_evenly_and_in_turn(tiny_model: Path) -> None:
    with running_server(create_app(Settings(model=tiny_model))) as url:
        report = loadtest.run_load(
            url, clients=1, requests=40, duration_s=20, warmup=0, image_size=(64, 48),
            hostile_share=0.25, hostile_side=32, baseline=False,
        )  # fmt: skip
    assert report.requests == 30 and report.hostile_requests == 10
    assert report.clean_requests == 0 and report.p99_vs_clean is None
    payloads = hostile.hostile_payloads(loadtest.make_jpeg(64, 48), big_side=32)
    assert list(report.hostile_by_file) == [p.name for p in payloads[:10]]  # each in turn
    assert all(sum(outcomes.values()) == 1 for outcomes in report.hostile_by_file.values())
    assert sum(report.hostile_statuses.values()) == 10


def test_adversarial_report_lines() -> None:
    report = loadtest.Report(
        url="http://a", clients=2, image="x", requests=10, p99_ms=30.0,
        clean_requests=12, clean_p50_ms=5.0, clean_p99_ms=10.0, p99_vs_clean=3.0,
        hostile_share=0.1, hostile_requests=2, hostile_statuses={"http_413": 1, "http_500": 1},
        hostile_by_file={"png-header-bomb": {"http_413": 1}, "dds": {"http_500": 1}},
        hostile_failed=1, slow_clients=SlowClientsReport(4, opened=5, dropped=1, still_open=4),
        server_rss_mb=120.0, server_peak_rss_mb=300.0, server_rss_before_mb=100.0,
    )  # fmt: skip
    lines = report.lines()
    assert (
        "clean phase    12 requests, errors 0, p50 5.0 ms, p99 10.0 ms; p99 now 3.00x clean"
    ) in lines
    assert (
        "hostile files  2 requests (10%), failed (5xx or no answer) 1: "
        "{'http_413': 1, 'http_500': 1}"
    ) in lines
    assert "  dds                      {'http_500': 1}" in lines
    assert any(
        line.startswith("slow clients   4 clients: 5 connections opened, 1 dropped")
        for line in lines
    )
    assert "server RSS     before 100.0 MB, after 120.0 MB (peak 300.0 MB)" in lines
    assert not report.passed()  # a hostile request failed


def test_loadtest_spawn_adversarial_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_tiny_model(tmp_path / "m.onnx")
    args = parse(
        "loadtest", "--spawn", "--model", str(model), "--clients", "2", "--requests", "200",
        "--duration", "2", "--warmup", "2", "--image-size", "160x120", "--json",
        "--hostile-share", "0.2", "--hostile-side", "256", "--slow-clients", "3",
    )  # fmt: skip
    status = commands.cmd_loadtest(args)
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report
    assert report["errors"] == 0 and report["requests"] > 0
    assert report["clean_requests"] > 0 and report["clean_errors"] == 0
    assert 0 < report["clean_p50_ms"] <= report["clean_p99_ms"]
    assert report["p99_vs_clean"] == pytest.approx(report["p99_ms"] / report["clean_p99_ms"])
    assert report["hostile_share"] == 0.2
    assert report["hostile_requests"] == sum(report["hostile_statuses"].values()) > 0
    assert report["hostile_failed"] == 0
    outcomes = {o for by_file in report["hostile_by_file"].values() for o in by_file}
    assert all(o.startswith("http_") and int(o[5:]) < 500 for o in outcomes), outcomes
    refused = ("png-header-bomb", "empty", "random-bytes", "text")
    for name in refused:
        if name in report["hostile_by_file"]:
            assert all(o.startswith("http_4") for o in report["hostile_by_file"][name])
    slow = report["slow_clients"]
    assert slow["clients"] == 3 and slow["opened"] >= 3 and slow["connect_failed"] == 0
    assert slow["opened"] == slow["still_open"] + slow["dropped"] + sum(slow["answered"].values())
    assert report["server_rss_before_mb"] > 10 and report["server_rss_mb"] > 10
    assert report["server_peak_rss_mb"] >= max(report["rss_samples_mb"])
    assert report["rss_every_s"] == loadtest.ADVERSARIAL_RSS_EVERY_S
