"""Bad and unusual files through the CLI and the HTTP service (corpus: tests/fault_corpus.py).

Every bad file must give a typed error (a CLI error row, an HTTP 4xx) without stopping
the run or the service; every unusual but valid photo must be classified, and as its
colour's class where the corpus says so.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_corpus import (
    HTTP_STATUS,
    Case,
    make_bad_corpus,
    make_hostile_corpus,
    make_unusual_corpus,
    unreadable_skip_reason,
)

from leafid.cli import main
from leafid.errors import UnsupportedTypeError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case], Path, list[Case]]:
    root = tmp_path_factory.mktemp("corpus")
    bad = make_bad_corpus(root / "bad")
    unusual = make_unusual_corpus(root / "unusual")
    return root / "bad", bad, root / "unusual", unusual


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        assert row["path"] not in rows, f"duplicate row for {row['path']}"
        rows[row["path"]] = row
    return rows


def _check_rows(rows: dict[str, dict[str, Any]], bad: list[Case], unusual: list[Case]) -> None:
    assert len(rows) == len(bad) + len(unusual)
    for case in bad:
        row = rows[case.row_path]
        assert "error" in row, f"{case.name} ({case.note}) was not refused: {row}"
        assert row["error"]["type"] in case.errors, (case.name, row["error"])
        assert row["error"]["message"]
        assert "results" not in row
    for case in unusual:
        row = rows[case.row_path]
        assert "error" not in row, f"{case.name} ({case.note}) was refused: {row['error']}"
        assert len(row["results"]) == 3
        if case.slug is not None:
            assert row["best_match"] == case.slug, (case.name, row["results"])


def test_corpus_sizes(corpus: tuple[Path, list[Case], Path, list[Case]]) -> None:
    _, bad, _, unusual = corpus
    assert len(bad) >= 30
    assert len(unusual) >= 20
    assert len({c.name for c in bad + unusual}) == len(bad) + len(unusual)


def test_cli_refuses_bad_files_and_classifies_unusual_ones(
    corpus: tuple[Path, list[Case], Path, list[Case]], tiny_model: Path, tmp_path: Path
) -> None:
    bad_dir, bad, unusual_dir, unusual = corpus
    out = tmp_path / "out.jsonl"
    argv = ["classify", str(bad_dir), str(unusual_dir), "-o", str(out)]
    argv += ["--model", str(tiny_model), "--batch-size", "4", "--decode-threads", "2"]
    assert main(argv) == 1  # some failed, the rest are complete
    _check_rows(_rows(out), bad, unusual)
    # --resume finds every file done, including the non-UTF-8 names; the bad ones
    # failed in the first run, so the status stays 1
    size = out.stat().st_size
    assert main([*argv, "--resume"]) == 1
    assert out.stat().st_size == size
    assert len(_rows(out)) == len(bad) + len(unusual)


def test_cli_csv_resume_with_odd_names(
    corpus: tuple[Path, list[Case], Path, list[Case]], tiny_model: Path, tmp_path: Path
) -> None:
    _, _, unusual_dir, unusual = corpus
    out = tmp_path / "out.csv"
    argv = ["classify", str(unusual_dir), "-o", str(out), "--model", str(tiny_model)]
    assert main(argv) == 0
    before = out.read_bytes()
    assert before.count(b"\n") == len(unusual) + 1  # header + one line per file
    assert main([*argv, "--resume"]) == 0  # every file found done, none added again
    assert out.read_bytes() == before
    paths = [rec[0] for rec in csv.reader(before.decode().splitlines()[1:])]
    assert sorted(paths) == sorted(c.row_path for c in unusual)


def test_cli_subprocess_writes_odd_names_to_stdout(
    corpus: tuple[Path, list[Case], Path, list[Case]], tiny_model: Path, tmp_path: Path
) -> None:
    bad_dir, bad, unusual_dir, unusual = corpus
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "leafid", "classify", str(bad_dir), str(unusual_dir)]
        + ["--model", str(tiny_model), "--format", "jsonl"],
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr.decode(errors="replace")
    assert b"Traceback" not in proc.stderr
    out = tmp_path / "stdout.jsonl"
    out.write_bytes(proc.stdout)  # must be valid UTF-8
    _check_rows(_rows(out), bad, unusual)


def test_unreadable_file_case(tmp_path: Path) -> None:
    reason = unreadable_skip_reason()
    if reason is not None:
        pytest.skip(f"mode-000 case not made: {reason}")
    cases = {c.name: c for c in make_bad_corpus(tmp_path)}
    assert "unreadable" in cases


def test_named_fifo_does_not_block(tiny_model: Path, tmp_path: Path, capsys: Any) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    # named explicitly and as /dev/zero: neither may block or read for ever
    paths = [str(fifo)] + (["/dev/zero"] if os.path.exists("/dev/zero") else [])
    assert main(["classify", *paths, "--model", str(tiny_model), "--format", "jsonl"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["error"]["type"] for r in rows] == ["bad_image"] * len(paths)
    assert all("not a regular file" in r["error"]["message"] for r in rows)


# --- HTTP ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_model: Path) -> Iterator[Any]:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from leafid.http.app import create_app
    from leafid.http.settings import Settings

    with TestClient(create_app(Settings(model=tiny_model))) as c:
        yield c


def _upload(case: Case) -> list[tuple[str, tuple[str, bytes, str]]]:
    assert case.data is not None
    return [("images", (case.upload_name, case.data, "image/jpeg"))]


def _chunks(cases: list[Case], n: int) -> Iterator[list[Case]]:
    for i in range(0, len(cases), n):
        yield cases[i : i + n]


def test_http_bad_files_are_4xx_and_the_service_stays_healthy(
    client: Any, corpus: tuple[Path, list[Case], Path, list[Case]]
) -> None:
    _, bad, _, unusual = corpus
    uploadable = [c for c in bad if c.data is not None]
    assert len(uploadable) >= 30
    for case in uploadable:
        r = client.post("/v1/identify", files=_upload(case))
        code = r.json()["error"]["code"]
        assert code in case.errors, (case.name, r.status_code, r.text)
        assert r.status_code == HTTP_STATUS[code], (case.name, r.text)
    # /v1/classify answers 200 with an error item per bad photo, in order
    for chunk in _chunks(uploadable, 16):
        files = [f for c in chunk for f in _upload(c)]
        r = client.post("/v1/classify", files=files)
        assert r.status_code == 200, r.text
        items = r.json()["results"]
        assert [i["filename"] for i in items] == [c.upload_name for c in chunk]
        for case, item in zip(chunk, items, strict=True):
            assert item["error"]["type"] in case.errors, (case.name, item)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    good = next(c for c in unusual if c.slug == "rubra")
    r = client.post("/v1/identify", files=_upload(good))
    assert r.status_code == 200 and r.json()["best_match"] == "rubra"
    metrics = client.get("/metrics").text
    assert 'status="5' not in metrics


def test_http_unusual_files_are_classified(
    client: Any, corpus: tuple[Path, list[Case], Path, list[Case]]
) -> None:
    _, _, _, unusual = corpus
    for case in unusual:
        r = client.post("/v1/identify", files=_upload(case))
        assert r.status_code == 200, (case.name, r.text)
        if case.slug is not None:
            assert r.json()["best_match"] == case.slug, case.name
    for chunk in _chunks(unusual, 16):
        r = client.post("/v1/classify", files=[f for c in chunk for f in _upload(c)])
        assert r.status_code == 200, r.text
        for case, item in zip(chunk, r.json()["results"], strict=True):
            assert "error" not in item, (case.name, item)
            assert case.slug is None or item["best_match"] == case.slug, case.name


def test_heic_without_the_extra_names_it(
    corpus: tuple[Path, list[Case], Path, list[Case]],
    client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PIL import Image

    heic = next((c for c in corpus[3] if c.name == "heic"), None)
    if heic is None:
        pytest.skip("pillow-heif cannot encode HEIC here")
    # what an install without leafid[heic] sees: no HEIF opener registered
    monkeypatch.setattr("leafid.images.HEIF_AVAILABLE", False)
    monkeypatch.delitem(Image.OPEN, "HEIF")
    monkeypatch.setattr(Image, "ID", [i for i in Image.ID if i != "HEIF"])
    from leafid.images import ImageLimits, decode

    assert heic.data is not None
    with pytest.raises(UnsupportedTypeError, match=r"pip install 'leafid\[heic\]'"):
        decode(heic.data, ImageLimits())
    r = client.post("/v1/identify", files=_upload(heic))
    assert r.status_code == 415
    assert "leafid[heic]" in r.json()["error"]["message"]


# --- the fixes these corpora found, one by one ---------------------------------------------


def test_display_path_escapes_non_utf8_bytes_only() -> None:
    from leafid.output import display_path

    assert display_path("feuille é 葉.jpg") == "feuille é 葉.jpg"
    assert display_path(os.fsdecode(b"leaf\xff.jpg")) == "leaf\\xff.jpg"
    assert display_path("odd\ud800.jpg") == "odd\\ud800.jpg"  # not an escaped byte
    assert display_path("new\nline\t.jpg") == "new\\x0aline\\x09.jpg"
    display_path(os.fsdecode(b"a\xfe\xff")).encode("utf-8")  # always encodable


def test_read_bytes_refuses_special_files_without_reading(tmp_path: Path) -> None:
    from leafid.errors import BadImageError
    from leafid.images import ImageLimits, read_bytes

    specials = [tmp_path] + (["/dev/zero"] if os.path.exists("/dev/zero") else [])
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")
        specials.append(tmp_path / "pipe.jpg")
    for path in specials:
        with pytest.raises(BadImageError, match="cannot read file: (not a regular file|Is a)"):
            read_bytes(path, ImageLimits())
    if hasattr(os, "symlink"):
        (tmp_path / "a.jpg").symlink_to("b.jpg")
        (tmp_path / "b.jpg").symlink_to("a.jpg")
        with pytest.raises(BadImageError, match="cannot read file"):
            read_bytes(tmp_path / "a.jpg", ImageLimits())


def test_folder_scan_lists_symlink_loops_and_skips_folders(tmp_path: Path) -> None:
    from leafid.batch import find_images

    if not hasattr(os, "symlink"):
        pytest.skip("no symlinks")
    (tmp_path / "a.jpg").symlink_to("b.jpg")
    (tmp_path / "b.jpg").symlink_to("a.jpg")
    (tmp_path / "dangling.png").symlink_to("nothing.png")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    names = [Path(p).name for p in find_images([str(tmp_path)])]
    assert names == ["a.jpg", "b.jpg", "dangling.png"]


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a\x00", b"II*\x00\x00", b"RIFF\0\0\0\0WEBPVP8 "],
)
def test_damaged_header_of_a_known_format_is_bad_image(data: bytes) -> None:
    from leafid.errors import BadImageError
    from leafid.images import ImageLimits, decode

    with pytest.raises(BadImageError):
        decode(data, ImageLimits())


# --- the hostile corpus ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, make_hostile_corpus(root)


def _outcome_ok(case: Case, code: str | None) -> bool:
    """Whether an answer (``code`` None) or an error of type ``code`` fits the case."""
    if code is None:
        return not case.errors or case.answer_ok
    return code in case.errors


def test_hostile_corpus_covers_every_pillow_plugin(hostile: tuple[Path, list[Case]]) -> None:
    from PIL import Image

    from leafid.images import accepted_formats

    _, cases = hostile
    assert len(cases) >= 60
    assert len({c.name for c in cases}) == len(cases)
    Image.init()
    covered = {c.name.removeprefix("plugin_").upper() for c in cases}
    refused = set(Image.OPEN) - set(accepted_formats())
    # every plugin Pillow can open here, but those needing data no test can make
    # (BUFR, GRIB, HDF5 only have stubs; the rest are variants of a covered one)
    missing = refused - covered - {"BUFR", "GRIB", "HDF5", "CUR", "DCX", "FTEX", "IMT", "IPTC"}
    missing -= {"MPEG", "PCD", "PIXAR", "MPO", "AVIF", "HEIF"}
    assert not missing, f"no case for {sorted(missing)}"


def test_hostile_corpus_through_the_cli(
    hostile: tuple[Path, list[Case]], tiny_model: Path, tmp_path: Path
) -> None:
    root, cases = hostile
    proc = subprocess.run(
        [sys.executable, "-m", "leafid", "classify", str(root), "--format", "jsonl"]
        + ["--model", str(tiny_model), "--decode-threads", "2"],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr.decode(errors="replace")
    assert b"Traceback" not in proc.stderr
    out = tmp_path / "rows.jsonl"
    out.write_bytes(proc.stdout)
    rows = _rows(out)
    assert len(rows) == len(cases)  # one row per file
    for case in cases:
        row = rows[case.row_path]
        code = row["error"]["type"] if "error" in row else None
        assert _outcome_ok(case, code), (case.name, case.note, row)


def test_hostile_corpus_through_classify_images(
    hostile: tuple[Path, list[Case]], tiny_model: Path
) -> None:
    from leafid.classifier import Classifier
    from leafid.errors import ImageError
    from leafid.results import Prediction

    _, cases = hostile
    clf = Classifier(tiny_model)
    for start in range(0, len(cases), 16):  # requests of 16, as the service takes them
        chunk = cases[start : start + 16]
        answers = clf.classify_images([c.path for c in chunk])
        assert len(answers) == len(chunk)
        for i, (case, answer) in enumerate(zip(chunk, answers, strict=True)):
            assert isinstance(answer, Prediction | ImageError), (case.name, answer)
            code = answer.code if isinstance(answer, ImageError) else None
            if code == "too_large" and "decoding budget" in str(answer):
                # the request's budget refuses a costly file that would be tried alone;
                # it always has room for the first image
                assert i > 0, (case.name, answer)
                continue
            assert _outcome_ok(case, code), (case.name, case.note, answer)
