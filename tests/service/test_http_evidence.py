"""The service's evidence: reference photos with thumbnails, and ``explain=1`` overlays."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from test_references import SpySession, index_of, make_reference_folder

from conftest import TINY_COLOURS, encode, noisy

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from leafid.classifier import Classifier  # noqa: E402
from leafid.errors import InvalidReferencesError, MissingOutputError  # noqa: E402
from leafid.http.app import create_app  # noqa: E402
from leafid.http.settings import Settings  # noqa: E402
from leafid.references import THUMBNAIL_SIDE, ReferenceIndex  # noqa: E402


@pytest.fixture
def refs(evidence_model: Path, tmp_path: Path) -> Path:
    folder = make_reference_folder(tmp_path / "refdir")
    path = tmp_path / "refs.npz"
    index_of(Classifier(evidence_model), folder).save(path)
    return path


@pytest.fixture
def client(evidence_model: Path, refs: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model=evidence_model, references=refs))) as c:
        yield c


def photo(slug: str, seed: int = 5) -> list[tuple[str, tuple[str, bytes, str]]]:
    data = encode(noisy(TINY_COLOURS[slug], size=(90, 70), seed=seed))
    return [("images", (f"{slug}.jpg", data, "image/jpeg"))]


def test_identify_lists_reference_photos_served_as_thumbnails(client: TestClient) -> None:
    r = client.post("/v1/identify", files=photo("caerulea"))
    assert r.status_code == 200, r.text
    body = r.json()
    best = body["results"][0]
    assert best["slug"] == "caerulea" and len(best["references"]) == 3
    assert all(ref["path"].startswith("caerulea/") for ref in best["references"])
    sims = [ref["similarity"] for ref in best["references"]]
    assert sims == sorted(sims, reverse=True) and -1 <= sims[-1] <= sims[0] <= 1
    assert "explain" not in body["images"][0]  # not asked
    thumb = client.get(best["references"][0]["url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= THUMBNAIL_SIDE
    r = client.post("/v1/classify", params={"similar": 1, "top_k": 2}, files=photo("rubra"))
    result = r.json()["results"][0]
    assert [len(c["references"]) for c in result["results"]] == [1, 1]
    r = client.post("/v1/identify", params={"similar": 0}, files=photo("rubra"))
    assert "references" not in r.json()["results"][0]


@pytest.mark.parametrize(
    "path",
    [
        "../refs.npz",
        "%2e%2e/refs.npz",
        "..%2frefs.npz",
        "rubra/..%2f..%2frefs.npz",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "quercus/oak.jpg",  # in the folder, but not indexed (no class of the model)
        "rubra",
        "",
    ],
)
def test_only_listed_reference_photos_are_served(client: TestClient, path: str) -> None:
    r = client.get("/v1/references/" + path)
    assert r.status_code in (404, 405), r.text  # 405: a path that became another route
    assert r.headers["content-type"] != "image/jpeg"


def test_a_listed_photo_turned_into_a_link_out_is_not_served(
    client: TestClient, refs: Path
) -> None:
    index = ReferenceIndex.load(refs)
    secret = refs.parent / "secret.jpg"
    noisy((9, 9, 9)).save(secret)
    listed = index.folder / index.paths[0]
    listed.unlink()
    os.symlink(secret, listed)
    assert client.get("/v1/references/" + index.paths[0]).status_code == 404


def test_explain_returns_a_heat_overlay_per_photo(client: TestClient) -> None:
    files = photo("viridis") + [("images", ("bad.jpg", b"not a photo", "image/jpeg"))]
    r = client.post("/v1/identify", params={"explain": 1, "similar": 0}, files=files)
    assert r.status_code == 200, r.text
    good, bad = r.json()["images"]
    assert "explain" not in bad
    assert good["explain"]["slug"] == "viridis" == r.json()["best_match"]
    head, _, data = good["explain"]["image"].partition(",")
    assert head == "data:image/png;base64"
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    assert img.format == "PNG" and img.size == (32, 32)  # the tiny model's input
    r = client.post("/v1/classify", params={"explain": "true"}, files=photo("rubra"))
    assert r.json()["results"][0]["explain"]["slug"] == "rubra"


def test_plain_answers_fetch_only_the_logits(tiny_model: Path, evidence_model: Path) -> None:
    clf = Classifier(evidence_model)
    spy = SpySession(clf.session)
    clf.session = spy  # type: ignore[assignment]
    with TestClient(create_app(Settings(model=evidence_model), clf)) as c:
        body = c.post("/v1/identify", files=photo("rubra")).json()
        assert spy.asked == [["logits"]]
        assert "references" not in body["results"][0] and "explain" not in body["images"][0]
        c.post("/v1/identify", params={"explain": 1}, files=photo("rubra"))
        assert spy.asked[1] == ["logits", "class_maps"]  # one call for both


def test_old_models_answer_but_cannot_explain(tiny_model: Path) -> None:
    with TestClient(create_app(Settings(model=tiny_model))) as c:
        assert c.post("/v1/identify", files=photo("rubra")).json()["best_match"] == "rubra"
        r = c.post("/v1/identify", params={"explain": 1}, files=photo("rubra"))
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "missing_output"
        assert "class_maps" in r.json()["error"]["message"]
        r = c.post("/v1/classify", params={"similar": 2}, files=photo("rubra"))
        assert r.status_code == 422 and "--references" in r.text
        assert c.get("/v1/references/rubra/rubra1.jpg").status_code == 404


def test_references_of_another_or_an_old_model_fail_start_up(
    tiny_model: Path, evidence_model: Path, refs: Path, tmp_path: Path
) -> None:
    with pytest.raises(MissingOutputError):
        with TestClient(create_app(Settings(model=tiny_model, references=refs))):
            pass
    index = ReferenceIndex.load(refs)
    other = tmp_path / "other.npz"
    ReferenceIndex(
        index.vectors, index.slugs, index.paths, index.folder, "other-model", "1.0"
    ).save(other)
    with pytest.raises(InvalidReferencesError, match="other-model"):
        with TestClient(create_app(Settings(model=evidence_model, references=other))):
            pass


def test_reference_thumbnails_need_the_api_key(evidence_model: Path, refs: Path) -> None:
    settings = Settings(model=evidence_model, references=refs, api_keys=["k1"])
    with TestClient(create_app(settings)) as c:
        path = ReferenceIndex.load(refs).paths[0]
        assert c.get("/v1/references/" + path).status_code == 401
        r = c.get("/v1/references/" + path, headers={"X-API-Key": "k1"})
        assert r.status_code == 200


def test_serve_with_unusable_references_is_a_clear_error(
    evidence_model: Path, tiny_model: Path, refs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from leafid import cli

    missing = refs.parent / "missing.npz"
    assert cli.main(["serve", "--model", str(evidence_model), "--references", str(missing)]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert cli.main(["serve", "--model", str(tiny_model), "--references", str(refs)]) == 2
    err = capsys.readouterr().err
    assert "no 'embedding' output" in err and "Traceback" not in err
