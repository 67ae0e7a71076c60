"""Every error the HTTP service answers: one JSON shape, the right status, no 500s."""

from __future__ import annotations

import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import TINY_COLOURS, encode, noisy

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from leafid.classifier import Classifier  # noqa: E402
from leafid.errors import InvalidModelError, ModelNotFoundError  # noqa: E402
from leafid.http.app import create_app, get_classifier  # noqa: E402
from leafid.http.settings import Settings  # noqa: E402


def jpeg(slug: str = "rubra", size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(noisy(TINY_COLOURS[slug], size=size))


def files(*datas: bytes, name: str = "x.jpg") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"{i}-{name}", d, "image/jpeg")) for i, d in enumerate(datas)]


def assert_error(r: Any, status: int, code: str) -> dict[str, str]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in r.text
    return dict(body["error"])


@pytest.fixture
def client(tiny_model: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model=tiny_model))) as c:
        yield c


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR is patched to claim ``width`` x ``height``."""
    data = bytearray(encode(noisy((10, 200, 10), size=(8, 8)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_body_over_the_limit_by_content_length(client: TestClient) -> None:
    body = b"\0" * (30 * 1024 * 1024)
    r = client.post(
        "/v1/identify",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=abc"},
    )
    assert_error(r, 413, "too_large")


def test_chunked_body_is_counted(tiny_model: Path) -> None:
    app = create_app(Settings(model=tiny_model, max_upload_bytes=100_000))
    read = []

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            read.append(1)
            yield b"\0" * 10_000

    with TestClient(app) as c:
        r = c.post(
            "/v1/identify",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=abc"},
        )
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert_error(r, 413, "too_large")
        # still answering afterwards
        assert c.post("/v1/identify", files=files(jpeg())).status_code == 200


def test_image_over_the_file_limit(tiny_model: Path) -> None:
    big = jpeg(size=(600, 400))
    app = create_app(Settings(model=tiny_model, max_image_bytes=len(big) - 1))
    with TestClient(app) as c:
        err = assert_error(c.post("/v1/identify", files=files(big)), 413, "too_large")
        assert "0-x.jpg" in err["message"]
        r = c.post("/v1/classify", files=files(jpeg(), big))
        assert r.status_code == 200
        items = r.json()["results"]
        assert "best_match" in items[0]
        assert items[1]["error"]["type"] == "too_large"


def test_decompression_bomb(client: TestClient) -> None:
    bomb = png_claiming(20000, 20000)
    assert len(bomb) < 1000
    assert_error(client.post("/v1/identify", files=files(bomb, name="bomb.png")), 413, "too_large")


def test_pixel_limit_from_settings(tiny_model: Path) -> None:
    app = create_app(Settings(model=tiny_model, max_pixels=1000))
    with TestClient(app) as c:
        assert_error(c.post("/v1/identify", files=files(jpeg())), 413, "too_large")


def test_truncated_jpeg(client: TestClient) -> None:
    data = jpeg(size=(400, 300))
    err = assert_error(
        client.post("/v1/identify", files=files(data[: len(data) // 2])), 400, "bad_image"
    )
    assert "0-x.jpg" in err["message"]


def test_text_file_named_jpg(client: TestClient) -> None:
    r = client.post("/v1/identify", files=files(b"hello, I am text\n" * 50))
    assert_error(r, 415, "unsupported_type")


def test_empty_file(client: TestClient) -> None:
    assert_error(client.post("/v1/identify", files=files(b"")), 400, "bad_image")


def test_image_count(client: TestClient) -> None:
    assert_error(client.post("/v1/identify", files=files(*[jpeg()] * 6)), 422, "invalid_request")
    assert_error(client.post("/v1/identify"), 422, "invalid_request")
    assert_error(client.post("/v1/identify", data={"images": "not a file"}), 422, "invalid_request")
    assert client.post("/v1/identify", files=files(*[jpeg()] * 5)).status_code == 200


def test_bad_top_k(client: TestClient) -> None:
    for value in ("0", "4", "-1", "abc"):
        r = client.post("/v1/identify", params={"top_k": value}, files=files(jpeg()))
        assert_error(r, 422, "invalid_request")
    r = client.post("/v1/classify", params={"top_k": "9"}, files=files(jpeg()))
    assert_error(r, 422, "invalid_request")


def test_not_found_and_wrong_method(client: TestClient) -> None:
    assert_error(client.get("/v2/nothing"), 404, "not_found")
    assert_error(client.get("/v1/identify"), 405, "method_not_allowed")


def test_malformed_multipart(client: TestClient) -> None:
    r = client.post(
        "/v1/identify",
        content=b"--abc\r\nnot a header\r\n\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=abc"},
    )
    assert 400 <= r.status_code < 500
    assert "error" in r.json()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-API-Key": "wrong"}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"X-API-Key": "key-two"}, 200),
        ({"Authorization": "Bearer key-one"}, 200),
    ],
)
def test_api_keys(tiny_model: Path, headers: dict[str, str], status: int) -> None:
    app = create_app(Settings(model=tiny_model, api_keys=["key-one", "key-two"]))
    with TestClient(app) as c:
        r = c.post("/v1/identify", files=files(jpeg()), headers=headers)
        if status == 401:
            assert_error(r, 401, "unauthorized")
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert_error(c.get("/v1/species", headers=headers), 401, "unauthorized")
        else:
            assert r.status_code == 200, r.text
        # health, readiness, metrics and the page stay open
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            assert c.get(path).status_code == 200


class SlowClassifier(Classifier):
    """The tiny model, with every model call taking ``delay`` seconds."""

    delay = 0.3
    calls = 0

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        time.sleep(self.delay)
        return super().probabilities(batch)


def test_queue_full_answers_503_with_retry_after(tiny_model: Path) -> None:
    app = create_app(Settings(model=tiny_model, inference_slots=1, queue_size=1, retry_after_s=2))
    slow = SlowClassifier(tiny_model)
    app.dependency_overrides[get_classifier] = lambda: slow
    data = jpeg()
    with TestClient(app) as c:
        barrier = threading.Barrier(6)

        def post(_: int) -> Any:
            barrier.wait()
            return c.post("/v1/identify", files=files(data))

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(post, range(6)))
        statuses = sorted(r.status_code for r in answers)
        assert slow.calls == statuses.count(200)  # the delay was really in the request path
        assert 200 in statuses and 503 in statuses, statuses
        assert set(statuses) <= {200, 503}
        assert statuses.count(200) <= 3  # at most 1 running + 1 waiting, plus timing slack
        for r in answers:
            if r.status_code == 503:
                assert_error(r, 503, "overloaded")
                assert r.headers["Retry-After"] == "2"
        slow.delay = 0.0
        assert c.post("/v1/identify", files=files(data)).status_code == 200
        rejected = re.search(r"^leafid_queue_rejections_total (\S+)$", c.get("/metrics").text, re.M)
        assert rejected and float(rejected.group(1)) == statuses.count(503)


def test_unexpected_exception_is_a_plain_500(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Classifier):
        def probabilities(self, batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("secret internal detail")

    app = create_app(Settings(model=tiny_model))
    broken = Broken(tiny_model)
    app.dependency_overrides[get_classifier] = lambda: broken
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/identify", files=files(jpeg()))
        err = assert_error(r, 500, "internal_error")
        assert "secret" not in r.text and "RuntimeError" not in r.text
        assert err["message"] == "internal server error"
        r = c.post("/v1/classify", files=files(jpeg()))
        assert_error(r, 500, "internal_error")
        assert "secret" not in r.text
        assert c.get("/healthz").status_code == 200
        metrics = c.get("/metrics").text
    assert "secret internal detail" in caplog.text  # logged for the operator
    for route in ("/v1/identify", "/v1/classify"):  # the catch-all's 500s are counted
        line = f'leafid_http_requests_total{{method="POST",route="{route}",status="500"}} 1.0'
        assert line in metrics.splitlines()


def test_missing_model_stops_start_up(tmp_path: Path) -> None:
    app = create_app(Settings(model=tmp_path / "nope.onnx"))
    with pytest.raises(ModelNotFoundError, match="nope.onnx"):
        with TestClient(app):
            pass


def test_invalid_model_stops_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    with pytest.raises(InvalidModelError, match="bad.onnx"):
        with TestClient(create_app(Settings(model=bad))):
            pass


def test_not_ready_without_start_up(tiny_model: Path) -> None:
    # Without the lifespan (start-up not run) the model is not loaded: 503.
    c = TestClient(create_app(Settings(model=tiny_model)))
    assert c.get("/healthz").status_code == 200
    assert_error(c.get("/readyz"), 503, "model_not_ready")
    assert_error(c.post("/v1/identify", files=files(jpeg())), 503, "model_not_ready")
