"""Similar reference photos: the index, its search, and ``leafid index``/``--references``."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_COLOURS, noisy
from leafid import cli
from leafid.classifier import EMBEDDING_OUTPUT, Classifier
from leafid.errors import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    ImageNotFoundError,
    InvalidReferencesError,
    MissingOutputError,
)
from leafid.evidence import Evidence, classify
from leafid.images import ImageLimits
from leafid.references import (
    THUMBNAIL_SIDE,
    ReferenceIndex,
    build_index,
    normalised,
    thumbnail_jpeg,
)


def make_reference_folder(root: Path, per_class: int = 3) -> Path:
    """An ImageFolder of the tiny classes, a bad photo and a folder of no class."""
    for slug, colour in TINY_COLOURS.items():
        (root / slug / "sub").mkdir(parents=True)
        for i in range(per_class):
            where = root / slug / ("sub" if i == 0 else "")
            noisy(colour, size=(80, 60), seed=i).save(where / f"{slug}{i}.jpg")
    (root / "rubra" / "broken.jpg").write_bytes(b"not a photo")
    (root / "quercus").mkdir()
    noisy((100, 100, 100)).save(root / "quercus" / "oak.jpg")
    return root


@pytest.fixture
def ref_dir(tmp_path: Path) -> Path:
    return make_reference_folder(tmp_path / "refs")


@pytest.fixture
def evidence_clf(evidence_model: Path) -> Classifier:
    return Classifier(evidence_model)


def index_of(clf: Classifier, folder: Path) -> ReferenceIndex:
    index, _ = build_index(clf, folder, decode_threads=2, batch_size=4)
    return index


def test_build_index_embeds_each_class_photo_and_reports_the_rest(
    evidence_clf: Classifier, ref_dir: Path
) -> None:
    index, report = build_index(evidence_clf, ref_dir, decode_threads=2, batch_size=4)
    assert len(index) == 9
    assert index.classes == ["caerulea", "rubra", "viridis"]
    assert "rubra/sub/rubra0.jpg" in index.paths and "rubra/rubra1.jpg" in index.paths
    assert all(p.split("/")[0] == s for p, s in zip(index.paths, index.slugs, strict=True))
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    assert [Path(p).name for p, _ in report.failed] == ["broken.jpg"]
    assert report.other_folders == ["quercus"]
    assert index.folder == ref_dir.resolve()
    assert (index.model_name, index.model_version) == ("tiny-test", "0.0.1-test")


def test_a_link_out_of_the_reference_folder_is_left_out(
    evidence_clf: Classifier, ref_dir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.jpg"
    noisy(TINY_COLOURS["rubra"]).save(elsewhere)
    (ref_dir / "rubra" / "linked.jpg").symlink_to(elsewhere)
    (ref_dir / "rubra" / "inside.jpg").symlink_to(ref_dir / "rubra" / "rubra1.jpg")
    index, report = build_index(evidence_clf, ref_dir, decode_threads=2, batch_size=4)
    assert "rubra/linked.jpg" not in index.paths and "rubra/inside.jpg" in index.paths
    failed = {Path(p).name: e for p, e in report.failed}
    assert failed["linked.jpg"].code == "not_found"


def test_a_model_without_embedding_cannot_index(tiny_model: Path, ref_dir: Path) -> None:
    with pytest.raises(MissingOutputError, match="predates"):
        build_index(Classifier(tiny_model), ref_dir, decode_threads=1, batch_size=4)


def test_index_round_trip_and_model_check(
    evidence_clf: Classifier, ref_dir: Path, tmp_path: Path
) -> None:
    index = index_of(evidence_clf, ref_dir)
    index.save(tmp_path / "refs.npz")
    again = ReferenceIndex.load(tmp_path / "refs.npz")
    assert again.paths == index.paths and again.slugs == index.slugs
    assert np.array_equal(again.vectors, index.vectors)
    again.check_model(evidence_clf)  # the model that made it
    other = ReferenceIndex(
        index.vectors, index.slugs, index.paths, index.folder, "tiny-test", "9.9.9"
    )
    with pytest.raises(InvalidReferencesError, match="index the reference folder again"):
        other.check_model(evidence_clf)
    (tmp_path / "junk.npz").write_bytes(b"nope")
    with pytest.raises(InvalidReferencesError, match="leafid index"):
        ReferenceIndex.load(tmp_path / "junk.npz")
    with pytest.raises(InvalidReferencesError):
        ReferenceIndex.load(tmp_path / "missing.npz")


def synthetic_index(n: int, dim: int, n_classes: int, seed: int = 0) -> ReferenceIndex:
    rng = np.random.default_rng(seed)
    slugs = tuple(f"c{i % n_classes:03d}" for i in range(n))
    paths = tuple(f"{s}/{i}.jpg" for i, s in enumerate(slugs))
    vectors = normalised(rng.standard_normal((n, dim), dtype=np.float32))
    return ReferenceIndex(vectors, slugs, paths, Path("/refs"), "m", "1")


def test_nearest_is_the_brute_force_answer_within_each_class() -> None:
    index = synthetic_index(500, 16, 7)
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    asked = [["c000", "c003"], ["c003"], ["c006", "nope"], []]
    found = index.nearest(queries, asked, 5)
    for q, slugs, got in zip(queries, asked, found, strict=True):
        assert set(got) == {s for s in slugs if s != "nope"}
        for slug, matches in got.items():
            rows = [i for i, s in enumerate(index.slugs) if s == slug]
            sims = index.vectors[rows] @ (q / np.linalg.norm(q))
            best = [index.paths[rows[i]] for i in np.argsort(-sims)[:5]]
            assert [m.path for m in matches] == best
            assert [m.similarity for m in matches] == pytest.approx(sorted(sims)[::-1][:5])
            assert all(m.slug == slug for m in matches)


def test_nearest_gives_all_of_a_small_class() -> None:
    index = synthetic_index(6, 8, 3)
    (found,) = index.nearest(np.ones((1, 8), np.float32), [["c001"]], 10)
    assert len(found["c001"]) == 2


def test_only_listed_files_inside_the_folder_are_served(
    evidence_clf: Classifier, ref_dir: Path, tmp_path: Path
) -> None:
    index = index_of(evidence_clf, ref_dir)
    assert index.file("rubra/rubra1.jpg") == (ref_dir / "rubra" / "rubra1.jpg").resolve()
    secret = tmp_path / "secret.jpg"
    noisy((1, 2, 3)).save(secret)
    for path in (
        "../secret.jpg",
        "rubra/../../secret.jpg",
        str(secret),
        "rubra",
        "quercus/oak.jpg",
    ):
        with pytest.raises(ImageNotFoundError):
            index.file(path)
    # a listed photo replaced by a link out of the folder is not served either
    listed = ref_dir / "viridis" / "viridis1.jpg"
    listed.unlink()
    os.symlink(secret, listed)
    with pytest.raises(ImageNotFoundError):
        index.file("viridis/viridis1.jpg")


def test_thumbnail_is_a_small_jpeg(tmp_path: Path) -> None:
    photo = tmp_path / "big.jpg"
    noisy((10, 200, 10), size=(1200, 800)).save(photo)
    img = Image.open(io.BytesIO(thumbnail_jpeg(photo, ImageLimits())))
    assert img.format == "JPEG" and max(img.size) == THUMBNAIL_SIDE


class SpySession:
    """Records the outputs each session.run asks for."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.asked: list[list[str]] = []

    def run(self, names: list[str], feeds: dict[str, Any]) -> Any:
        self.asked.append(list(names))
        return self.session.run(names, feeds)


def test_plain_answers_fetch_only_the_logits_and_evidence_one_call(
    evidence_clf: Classifier, ref_dir: Path
) -> None:
    index = index_of(evidence_clf, ref_dir)
    spy = SpySession(evidence_clf.session)
    evidence_clf.session = spy  # type: ignore[assignment]
    loaded = [evidence_clf.try_load(p) for p in sorted(ref_dir.glob("*/*.jpg"))]
    evidence_clf.classify_loaded(loaded)
    assert spy.asked == [["logits"]]
    spy.asked.clear()
    answers, backings = classify(evidence_clf, Evidence(index, similar=2), loaded, 3)
    assert spy.asked == [["logits", EMBEDDING_OUTPUT]]
    plain = evidence_clf.classify_loaded(loaded, 3)
    assert answers == plain  # the evidence changes nothing in the answers
    for answer, backing in zip(answers, backings, strict=True):
        if backing is None:
            continue
        assert backing.references is not None and backing.heatmap is None
        best = answer.results[0].slug  # type: ignore[union-attr]
        assert len(backing.references[best]) == 2
        assert all(m.path.startswith(best + "/") for m in backing.references[best])


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_index_and_classify_with_references_on_the_command_line(
    evidence_model: Path, ref_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refs = tmp_path / "refs.npz"
    code, _, err = run_cli(
        ["index", str(ref_dir), "-o", str(refs), "--model", str(evidence_model)], capsys
    )
    assert code == EXIT_SOME_FAILED  # one photo could not be used: named, not fatal
    assert "broken.jpg" in err and "quercus: not a class of the model" in err
    assert "9 reference photos of 3 classes" in err
    photo = tmp_path / "leaf.jpg"
    noisy(TINY_COLOURS["viridis"], seed=9).save(photo)
    with_refs = ["classify", str(photo), "--model", str(evidence_model), "--references", str(refs)]
    code, out, _ = run_cli([*with_refs, "--similar", "2", "--format", "jsonl"], capsys)
    assert code == EXIT_OK
    row = json.loads(out)
    best = row["results"][0]
    assert best["slug"] == "viridis"
    assert [r["path"].split("/")[0] for r in best["references"]] == ["viridis", "viridis"]
    assert best["references"][0]["similarity"] >= best["references"][1]["similarity"]
    assert Path(best["references"][0]["file"]).is_file()
    code, out, _ = run_cli([*with_refs, "--format", "table"], capsys)
    assert code == EXIT_OK and "similar: " in out and "viridis" in out


def test_references_refused_with_another_or_an_old_model(
    evidence_clf: Classifier,
    tiny_model: Path,
    ref_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    refs = tmp_path / "refs.npz"
    index_of(evidence_clf, ref_dir).save(refs)
    photo = tmp_path / "leaf.jpg"
    noisy(TINY_COLOURS["rubra"]).save(photo)
    code, _, err = run_cli(
        ["classify", str(photo), "--model", str(tiny_model), "--references", str(refs)], capsys
    )
    assert code == EXIT_USAGE and "no 'embedding' output" in err
    code, _, err = run_cli(
        [
            "classify",
            str(photo),
            "--model",
            str(evidence_clf.path),
            "--references",
            str(refs),
            "--format",
            "csv",
        ],
        capsys,
    )
    assert code == EXIT_USAGE and "use jsonl" in err
    code, _, err = run_cli(
        ["index", str(ref_dir), "-o", str(tmp_path / "refs"), "--model", str(tiny_model)], capsys
    )
    assert code == EXIT_USAGE and ".npz" in err


def test_old_models_still_answer_without_references(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "leaf.jpg"
    noisy(TINY_COLOURS["rubra"]).save(photo)
    code, out, _ = run_cli(
        ["classify", str(photo), "--model", str(tiny_model), "--format", "jsonl"], capsys
    )
    row = json.loads(out)
    assert code == EXIT_OK and row["best_match"] == "rubra"
    assert "references" not in row["results"][0] and "explain" not in row


@pytest.mark.slow
def test_search_latency_at_100k_references() -> None:
    """p99 of one answer's search (5 candidate species) among 100k 1280-d references."""
    index = synthetic_index(100_000, 1280, 60)
    query = normalised(np.random.default_rng(2).standard_normal((1, 1280), dtype=np.float32))
    asked = [[f"c{i:03d}" for i in range(5)]]
    times = []
    for _ in range(300):
        start = time.perf_counter()
        index.nearest(query, asked, 3)
        times.append(time.perf_counter() - start)
    p99 = float(np.percentile(times, 99)) * 1000
    print(f"search p50 {np.percentile(times, 50) * 1000:.2f} ms, p99 {p99:.2f} ms")
    assert p99 <= 20.0
