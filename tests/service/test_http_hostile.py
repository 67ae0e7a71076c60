"""A hostile client against the service: bad files, bodies it should not read, made-up methods.

* every file of the fault corpora (tests/fault_corpus.py) through ``/v1/classify`` in
  batches and ``/v1/identify`` one by one: no 5xx, one item per photo, each bad photo
  its own 4xx-class error (of the kinds its case accepts), each valid one an answer;
* a request with a wrong API key, or arriving when the inference queue is full, is
  refused without its body being read (the bytes the app received are counted);
* made-up HTTP methods do not add metric series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fault_corpus
import numpy as np
import pytest
from fault_corpus import HTTP_STATUS, Case, make_bad_corpus

from conftest import TINY_COLOURS, encode, noisy

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from leafid.classifier import Classifier  # noqa: E402
from leafid.http.app import create_app, get_classifier  # noqa: E402
from leafid.http.settings import Settings  # noqa: E402

BATCH = 16


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    root = tmp_path_factory.mktemp("hostile")
    found = make_bad_corpus(root / "bad")
    # the hostile corpus of issue #15, where tests/fault_corpus.py has it
    make_hostile = getattr(fault_corpus, "make_hostile_corpus", None)
    if make_hostile is not None:
        found += make_hostile(root / "hostile")
    return [c for c in found if c.data is not None]


@pytest.fixture(scope="module")
def client(tiny_model: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model=tiny_model)), raise_server_exceptions=False) as c:
        yield c


def upload(case: Case) -> tuple[str, tuple[str, bytes, str]]:
    assert case.data is not None
    return ("images", (case.upload_name, case.data, "image/jpeg"))


def answer_allowed(case: Case) -> bool:
    """Whether the case may be answered: a valid file, or a mutated one that still decodes."""
    return not case.errors or bool(getattr(case, "answer_ok", False))


def check_item(case: Case, item: dict[str, Any]) -> None:
    assert item["filename"] == case.upload_name
    if "error" not in item:
        assert answer_allowed(case), f"{case.name} ({case.note}) was answered: {item}"
        return
    code = item["error"]["type"]
    assert code in case.errors, (case.name, item)
    assert 400 <= HTTP_STATUS[code] < 500, (case.name, code)


def test_corpus_through_classify_in_batches(client: TestClient, cases: list[Case]) -> None:
    assert len(cases) >= 30
    for start in range(0, len(cases), BATCH):
        batch = cases[start : start + BATCH]
        r = client.post("/v1/classify", files=[upload(c) for c in batch])
        assert r.status_code == 200, (r.status_code, r.text[:500])
        items = r.json()["results"]
        assert len(items) == len(batch)
        for case, item in zip(batch, items, strict=True):
            check_item(case, item)
    assert 'status="5' not in client.get("/metrics").text


def test_corpus_through_identify_one_by_one(client: TestClient, cases: list[Case]) -> None:
    for case in cases:
        r = client.post("/v1/identify", files=[upload(case)])
        assert r.status_code < 500, (case.name, r.text[:500])
        if r.status_code == 200:
            assert answer_allowed(case), (case.name, case.note)
            assert len(r.json()["images"]) == 1
            continue
        code = r.json()["error"]["code"]
        assert code in case.errors, (case.name, r.text)
        assert r.status_code == HTTP_STATUS[code]
    assert client.get("/healthz").status_code == 200


# --- bodies the service must not read -----------------------------------------------


class ReceivedBytes:
    """ASGI wrapper: the request body bytes the app took, per ``X-Probe`` header."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.taken: dict[str, int] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        probe = dict(scope.get("headers", [])).get(b"x-probe", b"").decode()
        self.taken.setdefault(probe, 0)

        async def counting() -> Any:
            message = await receive()
            self.taken[probe] += len(message.get("body", b""))
            return message

        await self.app(scope, counting, send)


def big_body() -> Iterator[bytes]:
    """A 20 MB multipart upload, sent in chunks (no Content-Length to refuse it by)."""
    yield b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n'
    for _ in range(20):
        yield b"\xff" * (1024 * 1024)
    yield b"\r\n--b--\r\n"


MULTIPART = {"Content-Type": "multipart/form-data; boundary=b"}


def test_wrong_api_key_is_refused_before_the_body_is_read(tiny_model: Path) -> None:
    app = create_app(Settings(model=tiny_model, api_keys=["right"]))
    wrapper = ReceivedBytes(app)
    with TestClient(wrapper) as c:
        for key in ("wrong", None):
            headers = {**MULTIPART, "X-Probe": f"key-{key}"}
            if key:
                headers["X-API-Key"] = key
            r = c.post("/v1/identify", content=big_body(), headers=headers)
            assert r.status_code == 401, r.text
            assert wrapper.taken[f"key-{key}"] == 0
        good = encode(noisy(TINY_COLOURS["rubra"]))
        r = c.post(
            "/v1/identify",
            files=[("images", ("a.jpg", good, "image/jpeg"))],
            headers={"X-API-Key": "right", "X-Probe": "good"},
        )
        assert r.status_code == 200
        assert wrapper.taken["good"] > len(good)


class HeldClassifier(Classifier):
    """The tiny model; a model call waits until ``release`` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.running = threading.Event()
        self.release = threading.Event()

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        self.running.set()
        self.release.wait(10)
        return super().probabilities(batch)


def test_full_queue_refuses_before_the_body_is_read(tiny_model: Path) -> None:
    app = create_app(Settings(model=tiny_model, inference_slots=1, queue_size=0))
    held = HeldClassifier(tiny_model)
    app.dependency_overrides[get_classifier] = lambda: held
    wrapper = ReceivedBytes(app)
    good = encode(noisy(TINY_COLOURS["rubra"]))
    with TestClient(wrapper) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            c.post, "/v1/identify", files=[("images", ("a.jpg", good, "image/jpeg"))]
        )
        assert held.running.wait(10)  # the only slot is taken, nobody may wait
        r = c.post("/v1/identify", content=big_body(), headers={**MULTIPART, "X-Probe": "late"})
        held.release.set()
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        assert "Retry-After" in r.headers
        assert wrapper.taken["late"] == 0
        assert first.result().status_code == 200


def test_made_up_methods_add_no_metric_series(client: TestClient) -> None:
    def series() -> set[str]:
        text = client.get("/metrics").text
        return {
            line.rsplit(" ", 1)[0]
            for line in text.splitlines()
            if line.startswith("leafid_http_requests_total{")
        }

    client.request("BREW", "/healthz")
    before = series()
    started = time.monotonic()
    for i in range(300):
        assert client.request(f"M{i}X", "/healthz").status_code == 405
        assert client.request(f"M{i}Y", f"/no/such/{i}").status_code == 404
    after = series()
    assert time.monotonic() - started < 30
    assert 'method="other"' in " ".join(after)
    assert not any(f'"M{i}X"' in s or f"/no/such/{i}" in s for s in after for i in range(300))
    assert len(after - before) <= 1  # at most the "other" 404 line
