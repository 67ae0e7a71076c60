import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import encode, noisy
from leafid.batch import classify_paths, find_images, is_image_name
from leafid.classifier import Classifier, ImageInput, Loaded
from leafid.output import Row


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_is_image_name_is_case_insensitive() -> None:
    assert is_image_name("a.JPG") and is_image_name("b.HeIc") and is_image_name("c.tiff")
    assert not is_image_name("notes.txt") and not is_image_name("jpg")


def test_find_images_folder_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.txt", ".hidden.jpg", "sub/d.jpeg"]:
        _touch(tmp_path / name)
    assert find_images([str(tmp_path)]) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.PNG")]


def test_find_images_recursive(tmp_path: Path) -> None:
    for name in ["z.jpg", "sub/b/x.webp", "sub/a/y.gif", ".git/q.jpg", "sub/a/n.md"]:
        _touch(tmp_path / name)
    found = find_images([str(tmp_path)], recursive=True)
    rel = [os.path.relpath(p, tmp_path) for p in found]
    assert rel == ["z.jpg", "sub/a/y.gif", "sub/b/x.webp"]


def test_find_images_keeps_named_files_and_missing_paths(tmp_path: Path) -> None:
    odd = _touch(tmp_path / "photo.data")
    missing = str(tmp_path / "missing.jpg")
    assert find_images([str(odd), missing, str(odd)]) == [str(odd), missing]


def test_find_images_symlink_loop_does_not_hang(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "p.jpg")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    found = find_images([str(tmp_path)], recursive=True)
    assert found == [str(tmp_path / "a" / "p.jpg")]


@pytest.mark.parametrize("recursive", [False, True])
def test_unreadable_folder_is_reported_not_a_crash(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    recursive: bool,
) -> None:
    top = tmp_path / "top"
    ok = _touch(top / "a.jpg")
    locked = top / "locked"
    _touch(locked / "b.jpg")
    real = os.scandir

    def scandir(path: str = ".") -> object:  # as for a folder without read permission
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    expected = [str(ok)] if recursive else []
    assert find_images([str(top) if recursive else str(locked)], recursive) == expected
    assert f"cannot read folder {locked}: Permission denied" in capsys.readouterr().err


def test_empty_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert find_images([str(tmp_path)]) == []
    assert "no image files" in capsys.readouterr().err


def test_classify_paths_keeps_order_and_batches(tiny_model: Path, photo_dir: Path) -> None:
    paths = find_images([str(photo_dir)])
    paths.insert(2, str(photo_dir / "missing.jpg"))
    batches: list[list[Row]] = []
    summary = classify_paths(
        Classifier(tiny_model), paths, batches.append, top_k=2, decode_threads=2, batch_size=2
    )
    rows = [r for b in batches for r in b]
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [r["path"] for r in rows] == paths
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["rubra.jpg"]["best_match"] == "rubra"
    assert by_name["grey.png"]["unknown"] is True
    assert by_name["missing.jpg"]["error"]["type"] == "not_found"
    assert (summary.total, summary.ok, summary.unknown, summary.failed) == (5, 4, 1, 1)


def test_classify_paths_writes_an_error_row_for_an_unplanned_pillow_exception(
    tiny_model: Path, photo_dir: Path, odd_image: bytes
) -> None:
    paths = find_images([str(photo_dir)])
    paths.insert(1, str(_touch(photo_dir / "odd.png", odd_image)))
    rows: list[Row] = []
    summary = classify_paths(
        Classifier(tiny_model), paths, rows.extend, decode_threads=2, batch_size=2
    )
    assert [r["path"] for r in rows] == paths
    assert rows[1]["error"]["type"] == "bad_image" and "IndexError" in rows[1]["error"]["message"]
    assert (summary.ok, summary.failed) == (4, 1)


def test_classify_paths_reads_ahead_boundedly(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img = encode(noisy((30, 200, 40)))
    paths = [str(_touch(tmp_path / f"{i:03d}.jpg", img)) for i in range(40)]
    started: list[str] = []
    real = Classifier.try_load

    def counting(clf: Classifier, image: ImageInput) -> Loaded:
        started.append(str(image))
        return real(clf, image)

    monkeypatch.setattr(Classifier, "try_load", counting)
    seen_at_first_emit: list[int] = []

    def emit(rows: list[Row]) -> None:
        if not seen_at_first_emit:
            seen_at_first_emit.append(len(started))

    summary = classify_paths(Classifier(tiny_model), paths, emit, decode_threads=1, batch_size=2)
    assert summary.ok == 40
    assert seen_at_first_emit[0] <= 2 * 2 + 1  # read-ahead: two batches + one per worker


@pytest.mark.parametrize("have_tqdm", [True, False])
def test_progress_bar_optional(
    tiny_model: Path,
    photo_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    have_tqdm: bool,
) -> None:
    if not have_tqdm:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails as if not installed
    rows: list[Row] = []
    paths = find_images([str(photo_dir)])
    summary = classify_paths(Classifier(tiny_model), paths, rows.extend, progress=True)
    assert summary.ok == 4 and len(rows) == 4
    assert ("img" in capsys.readouterr().err) is have_tqdm


def test_last_batch_runs_in_parallel_parts_with_the_same_answers(
    tiny_model: Path, photo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clf = Classifier(tiny_model)
    paths = find_images([str(photo_dir)])
    sizes: list[int] = []
    real = Classifier.probabilities

    def counting(self: Classifier, batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(Classifier, "probabilities", counting)
    rows: list[Row] = []
    classify_paths(clf, paths * 3, rows.extend, decode_threads=2, batch_size=4)  # 12 photos
    # batches 1-2 while decoding may go on; the last one, decoded, as 2 parts of 2
    assert sorted(sizes[-2:]) == [2, 2] and sum(sizes) == 12
    assert [r["path"] for r in rows] == paths * 3
    whole: list[Row] = []
    classify_paths(clf, paths * 3, whole.extend, decode_threads=1, batch_size=12)  # one call
    assert [r["best_match"] for r in rows] == [r["best_match"] for r in whole]
