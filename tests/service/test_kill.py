"""Killing leafid mid-work: batch classification resumes, the server shuts down gracefully.

Real subprocesses (``python -m leafid ...``) with the tiny test model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_COLOURS, encode, noisy

posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")


def _leafid(log: Path, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``python -m leafid ARGS``; stdout and stderr go to ``log``."""
    with log.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "leafid", *args], stdout=f, stderr=subprocess.STDOUT, **kwargs
        )


def _wait_for(condition: Any, timeout: float, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


# --- batch classify: SIGKILL, then --resume -----------------------------------------------


@posix_only
def test_sigkill_batch_then_resume_gives_every_file_once(tiny_model: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    slugs = list(TINY_COLOURS)
    # PNGs big enough that the run takes a second or two: there is time to kill it
    for i in range(200):
        img = noisy(TINY_COLOURS[slugs[i % 3]], (400, 300), seed=i)
        img.save(photos / f"leaf_{i:03d}.png", compress_level=1)
    inputs = {str(photos / f"leaf_{i:03d}.png") for i in range(200)}
    out = tmp_path / "out.jsonl"
    argv = ["classify", str(photos), "-o", str(out), "--model", str(tiny_model)]
    argv += ["--batch-size", "4", "--decode-threads", "1"]

    proc = _leafid(tmp_path / "log.txt", *argv)
    _wait_for(lambda: _line_count(out) >= 20, 60, proc, "20 rows")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed_at = _line_count(out)
    assert 20 <= killed_at < 200, f"not killed mid-run ({killed_at} rows)"
    # a kill can land in the middle of a write: leave a torn row like it would
    with out.open("ab") as f:
        f.write(b'{"path": "' + str(photos).encode() + b"/leaf_1")

    done = subprocess.run(
        [sys.executable, "-m", "leafid", *argv, "--resume"], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    assert f"resuming: {killed_at} of 200".encode() in done.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 200  # no duplicates, nothing lost
    assert set(paths) == inputs
    for r in rows:
        assert "error" not in r and r["best_match"] in slugs


# --- serve: SIGTERM under load -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


@posix_only
def test_sigterm_server_finishes_requests_in_flight_and_exits_0(
    tiny_model: Path, tmp_path: Path
) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    port = _free_port()
    env = {
        **os.environ,
        "LEAFID_MAX_UPLOAD_BYTES": str(200 * 1024 * 1024),
        "LEAFID_MAX_IMAGE_BYTES": str(20 * 1024 * 1024),
    }
    log = tmp_path / "serve.log"
    proc = _leafid(
        log,
        "serve",
        "--model",
        str(tiny_model),
        "--port",
        str(port),
        "--inference-slots",
        "1",
        "--threads",
        "1",
        "--log-level",
        "warning",
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: not _refused(port), 60, proc, "the server to listen")
        # one request = 12 photos that take a while to decode; 6 requests queue behind
        # one inference slot, so most are waiting or running when SIGTERM comes
        arr = np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8)
        arr[..., 0] = np.maximum(arr[..., 0], 200)
        photo = encode(Image.fromarray(arr, "RGB"), "PNG", compress_level=1)
        files = [("images", (f"p{i}.png", photo, "image/png")) for i in range(12)]
        results: list[Any] = []

        def post() -> None:
            try:
                with httpx.Client(timeout=120) as client:
                    results.append(client.post(f"{base}/v1/classify", files=files))
            except Exception as exc:  # recorded and reported below
                results.append(exc)

        threads = [threading.Thread(target=post) for _ in range(6)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        _wait_for(lambda: len(results) >= 1, 60, proc, "the first answer")
        first_s = time.perf_counter() - started
        assert len(results) < 6, "all requests done before SIGTERM: workload too light"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert _refused(port), "a new connection was accepted after SIGTERM"
        assert proc.poll() is None or len(results) == 6
        for t in threads:
            t.join(timeout=120)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(results) == 6
    for r in results:
        assert not isinstance(r, Exception), repr(r)
        assert r.status_code == 200, r.text
        items = r.json()["results"]
        assert len(items) == 12 and all(i["best_match"] == "rubra" for i in items)
    stderr = log.read_text(errors="replace")
    assert rc == 0, f"exit status {rc}; first answer after {first_s:.2f} s\n{stderr}"
    assert "Traceback" not in stderr
