"""loadtest against several replicas (round-robin) and RSS sampling for soak runs."""

from __future__ import annotations

import argparse
import json
import os
import re
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from http_testserver import running_server  # noqa: E402

from leafid.http import commands, loadtest  # noqa: E402
from leafid.http.app import create_app  # noqa: E402
from leafid.http.settings import Settings  # noqa: E402

Capsys = pytest.CaptureFixture[str]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def identify_requests_served(url: str) -> int:
    """The server's own count of answered POST /v1/identify (Prometheus metrics)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("leafid_http_requests_total{") and 'route="/v1/identify"' in line:
            if 'method="POST"' in line and 'status="200"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


def test_loadtest_round_robins_over_two_replicas(tiny_model: Path, capsys: Capsys) -> None:
    with (
        running_server(create_app(Settings(model=tiny_model))) as url_a,
        running_server(create_app(Settings(model=tiny_model))) as url_b,
    ):
        args = parse(
            "loadtest", "--url", url_a, "--url", url_b, "--clients", "3",
            "--requests", "12", "--warmup", "2", "--image-size", "160x120", "--json",
        )  # fmt: skip
        assert commands.cmd_loadtest(args) == 0
        served = {url_a: identify_requests_served(url_a), url_b: identify_requests_served(url_b)}
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["requests"] == 12
    assert report["per_url_requests"] == {url_a: 6, url_b: 6}  # strict turns, warm-up even
    assert served == {url_a: 7, url_b: 7}  # each also got one warm-up request
    assert report["url"] == f"{url_a} {url_b}"


def test_report_lines_show_per_url_counts_and_rss() -> None:
    report = loadtest.Report(
        url="http://a http://b",
        clients=2,
        image="x",
        per_url_requests={"http://a": 3, "http://b": 2},
        rss_every_s=10.0,
        rss_samples_mb=[100.0, 130.5, 120.25],
    )
    lines = report.lines()
    assert "per URL        http://a 3, http://b 2" in lines
    assert "RSS over run   start 100.0 MB, end 120.2 MB, max 130.5 MB (3 samples, every 10 s)" in (
        lines
    )


def test_rss_is_sampled_during_the_run(tiny_model: Path) -> None:
    with running_server(create_app(Settings(model=tiny_model))) as url:
        report = loadtest.run_load(
            url, clients=2, requests=10_000, duration_s=0.6, warmup=1,
            image_size=(64, 48), server_pid=os.getpid(), rss_every_s=0.1,
        )  # fmt: skip
    assert report.errors == 0 and report.requests > 0
    assert report.rss_every_s == 0.1
    assert len(report.rss_samples_mb) >= 4  # ~0.6 s every 0.1 s, plus the last one
    assert all(mb > 10 for mb in report.rss_samples_mb)
    assert report.per_url_requests == {url: report.requests}


def test_rss_every_needs_a_process_and_spawn_excludes_url(capsys: Capsys) -> None:
    with pytest.raises(loadtest.InvalidRequestError, match="--rss-every"):
        commands.cmd_loadtest(parse("loadtest", "--rss-every", "5"))
    with pytest.raises(loadtest.InvalidRequestError, match="--spawn"):
        commands.cmd_loadtest(parse("loadtest", "--spawn", "--url", "http://127.0.0.1:1"))
    with pytest.raises(SystemExit):
        parse("loadtest", "--rss-every", "0")
    assert re.search(r"must be > 0", capsys.readouterr().err)
