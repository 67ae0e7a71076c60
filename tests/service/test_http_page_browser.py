"""The upload page in a real headless browser (Debian chromium driven by playwright).

Skipped when playwright or a chromium binary is not installed. Install for CI with
``apt-get install chromium`` and ``pip install playwright`` (no ``playwright install``:
the system chromium is used).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_COLOURS, encode, noisy, solid

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
from http_testserver import running_server  # noqa: E402

from leafid.http.app import create_app  # noqa: E402
from leafid.http.settings import Settings  # noqa: E402
from leafid.results import CAVEAT  # noqa: E402

CHROMIUM = os.environ.get("LEAFID_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"
)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


MAX_IMAGES = 3  # not the default (5), so the page must take the server's setting


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from conftest import make_tiny_model

    model = make_tiny_model(tmp_path_factory.mktemp("browser") / "tiny.onnx")
    with running_server(create_app(Settings(model=model, max_images=MAX_IMAGES))) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 375, "height": 740})  # a phone
    pg = context.new_page()
    external: list[str] = []
    pg.on(
        "request",
        lambda r: (
            external.append(r.url)
            if not r.url.startswith(("http://127.0.0.1", "blob:", "data:"))
            else None
        ),
    )
    yield pg
    context.close()
    assert external == [], f"the page fetched outside resources: {external}"


def caveat_shown(pg: Any) -> str:
    return " ".join(pg.locator("#caveat").inner_text().split())


def test_identify_in_the_browser(server: str, page: Any, tmp_path: Path) -> None:
    page.goto(server + "/")
    assert caveat_shown(page) == CAVEAT  # visible before any upload
    assert page.locator("#caveat").is_visible()
    photo = tmp_path / "leaf.jpg"
    photo.write_bytes(encode(noisy(TINY_COLOURS["caerulea"], size=(160, 120))))
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#previews img")
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=10_000)
    assert page.locator("#result-title").inner_text() == "Planta caerulea"
    assert "blue plant" in page.locator("#result-names").inner_text()
    assert "likely (calibrated)" in page.locator("#result-score").inner_text()
    assert page.locator("#per-photo-box").is_hidden()  # one photo: its answer is the answer
    width = page.eval_on_selector("#result-bar", "e => parseFloat(e.style.width)")
    assert 50 <= width <= 100
    assert page.locator("#candidates li").count() == 2
    assert caveat_shown(page) == CAVEAT
    # fits a phone screen: no horizontal scrolling
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_unknown_and_errors_in_the_browser(server: str, page: Any, tmp_path: Path) -> None:
    page.goto(server + "/")
    grey = tmp_path / "grey.png"
    grey.write_bytes(encode(solid((128, 128, 128)), "PNG"))
    page.set_input_files("#file-input", str(grey))
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=10_000)
    assert "Unknown" in page.locator("#result-title").inner_text()
    reason = page.locator("#result-reason").inner_text()
    assert "No species is likely enough to name" in reason and "likely (calibrated)" in reason
    assert "retake it closer, on a plain background" in reason
    assert "threshold" not in reason
    # the species list is one click away (loaded from /v1/species)
    page.click("#species-box summary")
    page.wait_for_selector("#species li")
    assert "Planta rubra (red plant)" in page.locator("#species").inner_text()

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"I am text, not a photo")
    page.set_input_files(
        "#file-input",
        {"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": broken.read_bytes()},
    )
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    error = page.locator("#error").inner_text()
    assert "not a recognised image file" in error and "415" in error
    assert page.locator("#result").is_hidden()
    assert caveat_shown(page) == CAVEAT


def test_page_takes_the_image_limit_from_the_server(server: str, page: Any, tmp_path: Path) -> None:
    page.goto(server + "/")
    assert f"1 to {MAX_IMAGES} photos" in page.locator("#drop-zone").inner_text()
    photos = []
    for i in range(MAX_IMAGES + 1):
        photos.append(tmp_path / f"leaf{i}.jpg")
        photos[-1].write_bytes(encode(noisy(TINY_COLOURS["caerulea"], size=(64, 48))))
    page.set_input_files("#file-input", [str(p) for p in photos])
    page.wait_for_selector("#previews img")
    assert page.locator("#previews img").count() == MAX_IMAGES
    assert f"at most {MAX_IMAGES} photos" in page.locator("#error").inner_text()
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=10_000)
    assert page.locator("#result-title").inner_text() == "Planta caerulea"


def test_a_photo_that_cannot_be_used_is_named_beside_the_answer(
    server: str, page: Any, tmp_path: Path
) -> None:
    page.goto(server + "/")
    good = tmp_path / "leaf.jpg"
    good.write_bytes(encode(noisy(TINY_COLOURS["caerulea"], size=(160, 120))))
    page.set_input_files(
        "#file-input",
        [
            {"name": "leaf.jpg", "mimeType": "image/jpeg", "buffer": good.read_bytes()},
            {"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"I am text, not a photo"},
        ],
    )
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=10_000)
    meta = page.locator("#result-meta").inner_text()
    assert "1 photo(s) used" in meta
    assert "skipped broken.jpg: not a recognised image file" in meta
    assert page.locator("#error").is_hidden()


def test_each_photos_answer_is_shown_and_disagreement_named(
    server: str, page: Any, tmp_path: Path
) -> None:
    page.goto(server + "/")
    photos = []
    for slug in ("rubra", "caerulea"):
        photos.append(tmp_path / f"{slug}.jpg")
        photos[-1].write_bytes(encode(noisy(TINY_COLOURS[slug], size=(160, 120))))
    page.set_input_files("#file-input", [str(p) for p in photos])
    page.wait_for_selector("#previews img")
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=10_000)
    assert "different plants" in page.locator("#result-title").inner_text()
    reason = page.locator("#result-reason").inner_text()
    assert "rubra.jpg: Planta rubra (red plant)" in reason
    assert "caerulea.jpg: Planta caerulea (blue plant)" in reason
    assert "one plant at a time" in reason
    assert page.locator("#per-photo-box").is_visible()
    per_photo = page.locator("#per-photo li").all_inner_texts()
    assert len(per_photo) == 2
    assert per_photo[0].startswith("rubra.jpg: Planta rubra (red plant), ")
    assert "likely (calibrated)" in per_photo[1]
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.fixture(scope="module")
def evidence_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from test_references import index_of, make_reference_folder

    from conftest import make_tiny_model, tiny_taxonomy_spec
    from leafid.classifier import Classifier

    root = tmp_path_factory.mktemp("evidence")
    # with genera and families: a grey photo is answered "genus Planta" (rubra or viridis)
    model = make_tiny_model(root / "evidence.onnx", tiny_taxonomy_spec(), embedding=True)
    refs = root / "refs.npz"
    index_of(Classifier(model), make_reference_folder(root / "refdir")).save(refs)
    with running_server(create_app(Settings(model=model, references=refs))) as url:
        yield url


def all_images_shown(selector: str) -> str:
    return (
        f"[...document.querySelectorAll('{selector}')].every(i => i.complete && i.naturalWidth > 0)"
    )


def identify(page: Any, tmp_path: Path, image: Any) -> None:
    """Send one photo; wait for the answer or an error."""
    photo = tmp_path / "leaf.png"
    photo.write_bytes(encode(image, "PNG"))
    page.set_input_files("#file-input", str(photo))
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden]), #error:not([hidden])", timeout=10_000)


def identify_explained(page: Any, tmp_path: Path, slug: str) -> None:
    """Send one photo of the class with "Show where it looked" ticked; wait for the answer."""
    page.get_by_label("Show where it looked").check()
    identify(page, tmp_path, noisy(TINY_COLOURS[slug], size=(160, 120)))


def test_reference_photos_and_where_it_looked(
    evidence_server: str, page: Any, tmp_path: Path
) -> None:
    page.goto(evidence_server + "/")
    assert page.locator("#compare-box").is_hidden() and page.locator("#explain-box").is_hidden()
    identify_explained(page, tmp_path, "caerulea")
    # the user's photo beside the best match's most similar reference photos
    assert page.locator("#compare-box").is_visible()
    assert page.locator("#compare-title").inner_text().endswith("Planta caerulea (blue plant)")
    items = page.locator("#compare li")
    assert items.count() == 4
    assert items.nth(0).inner_text() == "Your photo"
    assert all(
        re.fullmatch(r"similarity -?[01]\.\d\d", items.nth(i).inner_text()) for i in (1, 2, 3)
    )
    page.wait_for_function(all_images_shown("#compare img"), timeout=10_000)
    first, second = items.nth(0).bounding_box(), items.nth(1).bounding_box()
    assert abs(first["y"] - second["y"]) < 1  # side by side, even on a phone
    # the heat overlay of where it looked
    assert page.locator("#explain-box").is_visible()
    assert "Planta caerulea" in page.locator("#explain-note").inner_text()
    assert page.get_attribute("#heatmaps img", "src").startswith("data:image/png;base64,")
    page.wait_for_function(all_images_shown("#heatmaps img"), timeout=10_000)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # unticked: no overlay asked, none shown
    page.get_by_label("Show where it looked").uncheck()
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])", timeout=10_000)
    assert page.locator("#explain-box").is_hidden()
    assert page.locator("#compare-box").is_visible()


def test_an_old_model_answers_without_where_it_looked(
    server: str, page: Any, tmp_path: Path
) -> None:
    page.goto(server + "/")
    identify_explained(page, tmp_path, "rubra")
    assert page.locator("#result-title").inner_text() == "Planta rubra"
    assert "cannot show where it looked" in page.locator("#explain-note").inner_text()
    assert page.locator("#heatmaps li").count() == 0
    assert page.locator("#compare-box").is_hidden()  # this service has no reference photos
    assert page.locator("#error").is_hidden()


def test_a_genus_answer_names_its_rank_and_hesitation(
    evidence_server: str, page: Any, tmp_path: Path
) -> None:
    page.goto(evidence_server + "/")
    identify(page, tmp_path, solid((128, 128, 128)))  # no species sure; genus Planta is 2/3
    assert page.locator("#result-title").inner_text() == "Genus Planta"
    assert page.eval_on_selector("#result-title .rank", "e => getComputedStyle(e).fontStyle") == (
        "normal"
    )
    names = page.locator("#result-names").inner_text()
    assert names.startswith("No species sure; between Planta ")
    assert "Planta rubra (red plant)" in names and "Planta viridis (green plant)" in names
    assert "caerulea" not in names
    score = page.locator("#result-score").inner_text()
    assert (
        score == "This genus is about 67% likely (calibrated): the chances of its species added up."
    )
    width = page.eval_on_selector("#result-bar", "e => parseFloat(e.style.width)")
    assert width == 67
    assert page.locator("#result-reason").is_hidden()
    # no species is the answer: all of them are candidates
    assert page.locator("#candidates-title").inner_text() == "Species candidates"
    assert page.locator("#candidates li").count() == 3
    assert page.locator("#result-flora").is_hidden()
    assert caveat_shown(page) == CAVEAT
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_flora_filter_round_trip(evidence_server: str, page: Any, tmp_path: Path) -> None:
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/v1/identify" in r.url else None)
    page.goto(evidence_server + "/")
    blue = noisy(TINY_COLOURS["caerulea"], size=(160, 120))
    # a genus: only its species can be the answer, and the answer says so
    page.get_by_label("Only these species or genera").fill("Planta")
    identify(page, tmp_path, blue)
    assert sent[-1].endswith("/v1/identify?genus=Planta")
    assert "caerulea" not in page.locator("#result-title").inner_text()
    assert page.locator("#result-flora").inner_text() == (
        "Answered among these only (flora filter): Planta rubra (red plant), "
        "Planta viridis (green plant)."
    )
    assert "blue plant" not in page.locator("#result").inner_text()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # a species by scientific name and a genus the model lacks: the service's 422, clearly
    page.get_by_label("Only these species or genera").fill("planta caerulea, Quercus")
    identify(page, tmp_path, blue)
    assert sent[-1].endswith("/v1/identify?species=caerulea&genus=Quercus")
    error = page.locator("#error").inner_text()
    assert error.startswith("Check \u201cOnly these species or genera\u201d: ")
    assert "Quercus" in error and "unknown_name" in error and "422" in error
    assert page.locator("#result").is_hidden()
    assert page.get_attribute("#flora", "aria-invalid") == "true"
    page.wait_for_selector("#species li")  # the names it takes, opened under the field
    assert "Planta rubra (red plant) \u00b7 genus Planta" in page.locator("#species").inner_text()
    # the species by its slug
    page.get_by_label("Only these species or genera").fill("caerulea")
    identify(page, tmp_path, blue)
    assert sent[-1].endswith("/v1/identify?species=caerulea")
    assert (
        page.locator("#error").is_hidden() and page.get_attribute("#flora", "aria-invalid") is None
    )
    assert page.locator("#result-title").inner_text() == "Planta caerulea"
    assert page.locator("#result-flora").inner_text().endswith(": Planta caerulea (blue plant).")
    # no filter: all species, no filter line
    page.get_by_label("Only these species or genera").fill("")
    identify(page, tmp_path, blue)
    assert sent[-1].endswith("/v1/identify")
    assert page.locator("#result-flora").is_hidden()
