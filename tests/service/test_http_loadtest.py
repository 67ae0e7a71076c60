"""The serve/loadtest commands and the load generator, against real servers."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_tiny_model

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from http_testserver import running_server  # noqa: E402

from leafid.errors import InvalidRequestError, ModelNotFoundError  # noqa: E402
from leafid.http import commands, loadtest  # noqa: E402
from leafid.http.app import create_app  # noqa: E402
from leafid.http.settings import Settings  # noqa: E402


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
