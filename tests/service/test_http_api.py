"""The HTTP service's routes, answered with the tiny test model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_COLOURS, encode, make_tiny_model, noisy, solid, tiny_taxonomy_spec

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from leafid.classifier import Classifier  # noqa: E402
from leafid.errors import UnknownNameError  # noqa: E402
from leafid.http.app import (  # noqa: E402
    PAGE_TEMPLATE,
    STATIC_DIR,
    create_app,
    get_classifier,
    load_classifier,
)
from leafid.http.settings import Settings  # noqa: E402
from leafid.results import CAVEAT  # noqa: E402


@pytest.fixture
def client(tiny_model: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model=tiny_model))) as c:
        yield c


@pytest.fixture
def clf(tiny_model: Path) -> Classifier:
    return Classifier(tiny_model)


def jpeg(slug: str, seed: int = 0) -> bytes:
    return encode(noisy(TINY_COLOURS[slug], seed=seed))


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "image/jpeg")) for name, data in items]


def test_identify_one_photo(client: TestClient, clf: Classifier) -> None:
    data = jpeg("viridis")
    r = client.post("/v1/identify", files=files(("leaf.jpg", data)))
    assert r.status_code == 200, r.text
    body = r.json()
    want = clf.identify_arrays(np.stack([clf.load(data)]), 3).to_dict()
    assert body["best_match"] == "viridis" == want["best_match"]
    assert body["unknown"] is False and body["reason"] is None
    assert [c["slug"] for c in body["results"]] == [c["slug"] for c in want["results"]]
    for got, exp in zip(body["results"], want["results"], strict=True):
        assert got["score"] == pytest.approx(exp["score"], abs=1e-6)
        assert 0.0 <= got["score"] <= 1.0
    assert body["model"] == {"name": "tiny-test", "version": "0.0.1-test"}
    assert body["caveat"] == CAVEAT
    assert len(body["images"]) == 1
    assert body["images"][0]["filename"] == "leaf.jpg"
    assert body["images"][0]["best_match"] == "viridis"
    assert set(body["timing"]) == {"decode_ms", "inference_ms", "total_ms"}
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] >= 0


def test_identify_fuses_several_photos(client: TestClient, clf: Classifier) -> None:
    datas = [jpeg("rubra", 1), jpeg("rubra", 2), encode(solid((128, 128, 128)), "PNG")]
    r = client.post(
        "/v1/identify",
        params={"top_k": 2},
        files=files(("a.jpg", datas[0]), ("b.jpg", datas[1]), ("grey.png", datas[2])),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    batch = np.stack([clf.load(d) for d in datas])
    fused = clf.identify_arrays(batch, 2).to_dict()
    own = [p.to_dict() for p in clf.classify_arrays(batch, 2)]
    assert len(body["results"]) == 2
    assert body["best_match"] == fused["best_match"] == "rubra"
    assert [c["score"] for c in body["results"]] == pytest.approx(
        [c["score"] for c in fused["results"]], abs=1e-6
    )
    assert [i["filename"] for i in body["images"]] == ["a.jpg", "b.jpg", "grey.png"]
    for got, exp in zip(body["images"], own, strict=True):
        assert got["best_match"] == exp["best_match"]
        assert got["unknown"] == exp["unknown"]
        assert [c["score"] for c in got["results"]] == pytest.approx(
            [c["score"] for c in exp["results"]], abs=1e-6
        )
    assert body["images"][2]["unknown"] is True  # the grey photo alone is unknown


def test_identify_unknown_has_reason(client: TestClient) -> None:
    grey = encode(solid((128, 128, 128)), "PNG")
    body = client.post("/v1/identify", files=files(("grey.png", grey))).json()
    assert body["unknown"] is True
    assert body["best_match"] is None
    assert "threshold" in body["reason"]
    assert len(body["results"]) == 3  # default 5, capped at the number of classes


def test_identify_answers_from_the_good_photos_and_flags_the_bad_one(client: TestClient) -> None:
    a, bad, b = (
        ("a.jpg", jpeg("rubra", 1)),
        ("bad.jpg", b"not an image"),
        ("b.jpg", jpeg("rubra", 2)),
    )
    r = client.post("/v1/identify", params={"top_k": 2}, files=files(a, bad, b))
    assert r.status_code == 200, r.text
    body = r.json()
    alone = client.post("/v1/identify", params={"top_k": 2}, files=files(a, b)).json()
    for key in ("best_match", "unknown", "reason", "results", "model", "caveat"):
        assert body[key] == alone[key], key
    assert body["best_match"] == "rubra"
    assert [i["filename"] for i in body["images"]] == ["a.jpg", "bad.jpg", "b.jpg"]
    assert body["images"][1] == {
        "filename": "bad.jpg",
        "error": {"type": "unsupported_type", "message": "not a recognised image file"},
        "caveat": CAVEAT,
        "model_version": body["model"]["version"],
    }
    assert [body["images"][0], body["images"][2]] == alone["images"]
    assert "leafid_images_classified_total 4.0" in client.get("/metrics").text  # 2 + 2 used


def test_identify_says_when_the_photos_look_like_different_plants(client: TestClient) -> None:
    r = client.post(
        "/v1/identify", files=files(("r.jpg", jpeg("rubra")), ("v.jpg", jpeg("viridis")))
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unknown"] is True and body["best_match"] is None
    assert body["reason_code"] == "photos_disagree"
    assert [(p["index"], p["photo"], p["slug"]) for p in body["disagreement"]] == [
        (0, "r.jpg", "rubra"),
        (1, "v.jpg", "viridis"),
    ]
    # each photo's own answer is still there
    assert [i["best_match"] for i in body["images"]] == ["rubra", "viridis"]
    same = client.post("/v1/identify", files=files(("a.jpg", jpeg("rubra")))).json()
    assert same["disagreement"] is None and same["reason_code"] is None


def test_identify_with_no_usable_photo_is_the_first_photos_error(client: TestClient) -> None:
    r = client.post("/v1/identify", files=files(("t.jpg", b"text"), ("e.jpg", b"")))
    assert r.status_code == 415
    assert r.json() == {
        "error": {"code": "unsupported_type", "message": "t.jpg: not a recognised image file"}
    }


def test_unplanned_pillow_exception_is_a_bad_image_not_a_500(
    client: TestClient, odd_image: bytes
) -> None:
    r = client.post("/v1/identify", files=files(("odd.png", odd_image)))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_image"
    r = client.post("/v1/classify", files=files(("odd.png", odd_image), ("v.jpg", jpeg("viridis"))))
    assert r.status_code == 200, r.text
    odd, good = r.json()["results"]
    assert odd["error"]["type"] == "bad_image" and "IndexError" in odd["error"]["message"]
    assert good["best_match"] == "viridis"


def test_classify_batch_with_a_bad_item(client: TestClient, clf: Classifier) -> None:
    datas = [jpeg("rubra"), b"this is not an image", jpeg("caerulea")]
    r = client.post(
        "/v1/classify", files=files(("r.jpg", datas[0]), ("bad.jpg", datas[1]), ("c.jpg", datas[2]))
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [item["filename"] for item in body["results"]] == ["r.jpg", "bad.jpg", "c.jpg"]
    bad = body["results"][1]
    assert bad["error"]["type"] == "unsupported_type" and bad["error"]["message"]
    want = clf.classify_arrays(np.stack([clf.load(datas[0]), clf.load(datas[2])]), 3)
    for got, exp in zip([body["results"][0], body["results"][2]], want, strict=True):
        assert got["best_match"] == exp.best_match
        assert [c["score"] for c in got["results"]] == pytest.approx(
            [c.score for c in exp.results], abs=1e-6
        )
    assert body["caveat"] == CAVEAT


def test_species_and_model(client: TestClient, clf: Classifier) -> None:
    species = client.get("/v1/species").json()
    assert [s["slug"] for s in species] == clf.spec.labels
    assert species[0] == {
        "index": 0,
        "slug": clf.spec.classes[0].slug,
        "scientific_name": clf.spec.classes[0].scientific_name,
        "common_name": clf.spec.classes[0].common_name,
        "display_name": "Planta rubra (red plant)",
        "genus": None,
        "family": None,
    }
    model = client.get("/v1/model").json()
    assert model["name"] == clf.spec.model_name
    assert model["version"] == clf.model_version
    assert model["input_size"] == clf.spec.input_size
    assert model["threshold"] == clf.threshold
    assert model["temperature"] == clf.spec.temperature
    assert model["num_classes"] == len(clf.spec.classes)
    assert "training_data" in model and "metrics" in model


def test_health_ready_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    schema = client.get("/openapi.json").json()
    assert {"/v1/identify", "/v1/classify", "/v1/species", "/v1/model"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


@pytest.fixture(scope="module")
def taxonomy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("taxa") / "taxa.onnx", tiny_taxonomy_spec())


def test_species_carry_genus_and_family(taxonomy_model: Path) -> None:
    with TestClient(create_app(Settings(model=taxonomy_model))) as c:
        species = c.get("/v1/species").json()
        model = c.get("/v1/model").json()
    assert [(s["genus"], s["family"]) for s in species] == [
        ("Planta", "Plantaceae"),
        ("Planta", "Plantaceae"),
        ("Caerula", "Plantaceae"),
    ]
    assert model["taxon_thresholds"] == {"genus": 0.6, "family": 0.9}


def test_identify_backs_off_to_genus(taxonomy_model: Path) -> None:
    grey = encode(solid((128, 128, 128)), "PNG")
    with TestClient(create_app(Settings(model=taxonomy_model))) as c:
        body = c.post("/v1/identify", files=files(("g.png", grey))).json()
        rows = c.post("/v1/classify", files=files(("g.png", grey))).json()["results"]
    assert (body["best_match"], body["rank"], body["unknown"]) == ("Planta", "genus", False)
    assert {h["slug"] for h in body["hesitates_between"]} == {"rubra", "viridis"}
    assert body["images"][0]["rank"] == "genus" and body["flora"] is None
    assert rows[0]["best_match"] == "Planta" and rows[0]["match_score"] > 0.6


def test_species_and_genus_parameters_filter_the_answers(taxonomy_model: Path) -> None:
    photo = files(("b.jpg", jpeg("caerulea")))
    with TestClient(create_app(Settings(model=taxonomy_model))) as c:
        only = c.post("/v1/identify?species=rubra&species=viridis", files=photo).json()
        genus = c.post("/v1/classify?genus=planta", files=photo).json()["results"][0]
        both = c.post("/v1/identify?species=caerulea&genus=Planta", files=photo).json()
        wrong = c.post("/v1/identify?species=rubra,alba", files=photo)
        plain = c.post("/v1/identify", files=photo).json()
    assert only["flora"] == ["rubra", "viridis"] and only["best_match"] != "caerulea"
    assert {r["slug"] for r in only["results"]} == {"rubra", "viridis"}
    assert genus["flora"] == ["rubra", "viridis"]
    assert both["flora"] == ["rubra", "viridis", "caerulea"] and both["best_match"] == "caerulea"
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "unknown_name"
    assert "alba" in wrong.json()["error"]["message"]
    assert plain["flora"] is None and plain["best_match"] == "caerulea"


def test_service_wide_flora_and_a_request_that_replaces_it(taxonomy_model: Path) -> None:
    photo = files(("b.jpg", jpeg("caerulea")))
    with TestClient(create_app(Settings(model=taxonomy_model, only="rubra, viridis"))) as c:
        default = c.post("/v1/identify", files=photo).json()
        asked = c.post("/v1/identify?species=caerulea", files=photo).json()
    assert default["flora"] == ["rubra", "viridis"]
    assert asked["flora"] == ["caerulea"] and asked["best_match"] == "caerulea"
    with pytest.raises(UnknownNameError, match="alba"):
        load_classifier(Settings(model=taxonomy_model, only="alba"))


def test_metrics_count_requests_images_and_unknowns(client: TestClient) -> None:
    client.post("/v1/identify", files=files(("a.jpg", jpeg("rubra"))))
    client.post("/v1/identify", files=files(("g.png", encode(solid((128, 128, 128)), "PNG"))))
    client.post("/v1/classify", files=files(("a.jpg", jpeg("rubra")), ("b.jpg", jpeg("viridis"))))
    client.post("/v1/identify", files=files(("t.jpg", b"text")))
    text = client.get("/metrics").text

    def value(pattern: str) -> float:
        match = re.search(pattern + r" ([0-9.e+]+)", text)
        assert match, f"{pattern} not in metrics"
        return float(match.group(1))

    ok = r'leafid_http_requests_total\{method="POST",route="/v1/identify",status="200"\}'
    assert value(ok) == 2
    bad = r'leafid_http_requests_total\{method="POST",route="/v1/identify",status="415"\}'
    assert value(bad) == 1
    assert value("leafid_images_classified_total") == 4
    assert value("leafid_unknown_answers_total") == 1
    assert value("leafid_inference_duration_seconds_count") == 3
    assert (
        value(
            r'leafid_http_request_duration_seconds_count\{method="POST",'
            r'route="/v1/classify",status="200"\}'
        )
        == 1
    )


def test_metrics_label_requests_refused_before_routing(tiny_model: Path) -> None:
    app = create_app(Settings(model=tiny_model, max_upload_bytes=1000))
    with TestClient(app) as c:
        assert c.post("/v1/identify", files=files(("a.jpg", jpeg("rubra")))).status_code == 413
        assert c.get("/no/such/page").status_code == 404
        text = c.get("/metrics").text
    assert 'route="/v1/identify",status="413"} 1.0' in text  # body limit, before routing
    assert 'route="unmatched",status="404"} 1.0' in text
    assert 'route="/metrics"' not in text  # counted when it finishes, after this answer


def test_each_app_has_its_own_registry(tiny_model: Path) -> None:
    a = create_app(Settings(model=tiny_model))
    b = create_app(Settings(model=tiny_model))
    assert a.state.metrics.registry is not b.state.metrics.registry


def test_dependency_override(tiny_model: Path, clf: Classifier) -> None:
    # The settings name a missing model: start-up must not load it when overridden.
    app = create_app(Settings(model=tiny_model.parent / "missing.onnx"))
    app.dependency_overrides[get_classifier] = lambda: clf
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/identify", files=files(("a.jpg", jpeg("caerulea"))))
        assert r.json()["best_match"] == "caerulea"


def test_upload_page_is_served_without_cdn(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'name="viewport"' in html
    assert " ".join(CAVEAT.split()) in " ".join(html.split())
    for asset in ("/static/app.js", "/static/app.css"):
        assert asset in html
        assert client.get(asset).status_code == 200
    for path in [PAGE_TEMPLATE, *STATIC_DIR.iterdir()]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), path.name
        assert "https://" not in text and "http://" not in text, path.name


def test_upload_page_names_the_configured_image_limit(tiny_model: Path) -> None:
    with TestClient(create_app(Settings(model=tiny_model, max_images=2))) as c:
        html = c.get("/").text
    assert 'data-max-images="2"' in html
    assert "1 to 2 photos" in html
    assert "{{" not in html


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEAFID_MODEL", str(tmp_path / "m.onnx"))
    monkeypatch.setenv("LEAFID_API_KEYS", "one, two")
    monkeypatch.setenv("LEAFID_CORS_ORIGINS", "https://example.org")
    monkeypatch.setenv("LEAFID_MAX_IMAGES", "3")
    s = Settings()
    assert s.model == tmp_path / "m.onnx"
    assert s.api_keys == ["one", "two"]
    assert s.cors_origins == ["https://example.org"]
    assert s.max_images == 3
    assert "'one'" not in repr(s) and "'two'" not in repr(s)  # ('None' holds 'one')


def test_image_limit_settings_reach_the_classifier(
    monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    monkeypatch.setenv("LEAFID_MAX_DECODE_BYTES", str(64 * 2**20))
    monkeypatch.setenv("LEAFID_MAX_REQUEST_DECODE_BYTES", str(128 * 2**20))
    limits = load_classifier(Settings(model=tiny_model, max_pixels=1000)).limits
    assert (limits.max_pixels, limits.max_decode_bytes, limits.max_request_decode_bytes) == (
        1000,
        64 * 2**20,
        128 * 2**20,
    )


def test_inference_slots_setting_and_its_former_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().inference_slots == 2
    assert Settings(inference_slots=4).inference_slots == 4
    monkeypatch.setenv("LEAFID_INFERENCE_CONCURRENCY", "3")  # its former name
    assert Settings().inference_slots == 3
    monkeypatch.setenv("LEAFID_INFERENCE_SLOTS", "5")
    assert Settings().inference_slots == 5
    monkeypatch.setenv("INFERENCE_SLOTS", "7")  # without the prefix: not leafid's
    monkeypatch.delenv("LEAFID_INFERENCE_SLOTS")
    assert Settings().inference_slots == 3


def test_cors_when_configured(tiny_model: Path) -> None:
    app = create_app(Settings(model=tiny_model, cors_origins=["https://leaf.example"]))
    with TestClient(app) as c:
        r = c.get("/v1/species", headers={"Origin": "https://leaf.example"})
        assert r.headers["access-control-allow-origin"] == "https://leaf.example"
        r = c.get("/v1/species", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_health_checks_answer_head(client: TestClient) -> None:
    for path in ("/healthz", "/readyz"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b""
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]["/healthz"]) == {"get"}  # not a second operation in the docs


@pytest.mark.parametrize("value", [" , ", ",", " ", ",,,"])
def test_api_keys_that_name_no_key_are_refused(
    value: str,
    monkeypatch: pytest.MonkeyPatch,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pydantic import ValidationError

    from leafid.cli import main

    with pytest.raises(ValidationError, match="names no key"):
        Settings(api_keys=value)
    monkeypatch.setenv("LEAFID_API_KEYS", value)
    assert main(["serve", "--model", str(tiny_model), "--port", "0"]) == 2  # before serving
    assert "LEAFID_API_KEYS is set but names no key" in capsys.readouterr().err


def test_empty_api_keys_mean_no_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAFID_API_KEYS", "")
    assert Settings().api_keys == []
    assert Settings(api_keys=" a , ,b ").api_keys == ["a", "b"]


def test_docs_load_nothing_from_a_cdn(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200
        assert "cdn" not in r.text.lower()
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text)
        scripts = [a for a in assets if a.endswith(".js")]
        assert scripts, page
        for asset in assets:
            assert not re.match(r"(https?:)?//", asset), (page, asset)
            assert client.get(asset).status_code == 200, asset
