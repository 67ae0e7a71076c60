import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import numpy as np
import pytest

import leafid.cli as cli
from conftest import encode, make_tiny_model, noisy, tiny_spec, tiny_taxonomy_spec
from leafid.classifier import Classifier
from leafid.cli import main
from leafid.errors import MissingExtraError
from leafid.options import MODEL_HELP
from leafid.results import CAVEAT

Capsys = pytest.CaptureFixture[str]


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {Path(r["path"]).name: r.get("best_match", "ERROR") for r in rows}


EXPECTED = {
    "rubra.jpg": "rubra",
    "viridis.jpg": "viridis",
    "caerulea.jpg": "caerulea",
    "grey.png": None,
}


def _add_bad_files(folder: Path) -> None:
    (folder / "truncated.jpg").write_bytes(encode(noisy((200, 30, 30)))[:300])
    (folder / "text.jpg").write_text("this is not a photo")
    (folder / "empty.jpg").write_bytes(b"")


# --- classify: formats ------------------------------------------------------------------


def test_photo_with_a_corrupt_exif_block_is_classified_quietly(
    tiny_model: Path, tmp_path: Path, capsys: Capsys
) -> None:
    # The TIFF header points at an IFD that is not there: Pillow warns. Under this suite's
    # filterwarnings=error the warning would raise and the file would fail, so exit 0
    # shows that main() filters it; outside pytest it would print on stderr.
    photo = tmp_path / "damaged_exif.jpg"
    noisy((30, 160, 40)).save(photo, "JPEG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00")
    assert main(["classify", str(photo), "--model", str(tiny_model), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    assert _best(_jsonl(captured.out)) == {"damaged_exif.jpg": "viridis"}
    assert "EXIF" not in captured.err


def test_classify_only_answers_among_the_flora(
    tiny_model: Path, photo_dir: Path, capsys: Capsys
) -> None:
    args = ["classify", str(photo_dir / "rubra.jpg"), "--model", str(tiny_model)]
    assert main([*args, "--format", "jsonl", "--only", "viridis,caerulea"]) == 0
    (row,) = _jsonl(capsys.readouterr().out)
    assert row["flora"] == ["viridis", "caerulea"]
    assert {c["slug"] for c in row["results"]} == {"viridis", "caerulea"}


def test_identify_only_reads_a_file_and_unknown_names_are_usage_errors(
    tmp_path: Path, photo_dir: Path, capsys: Capsys
) -> None:
    model = make_tiny_model(tmp_path / "m.onnx", tiny_taxonomy_spec())
    flora = tmp_path / "flora.txt"
    flora.write_text("Planta\n")
    photo = str(photo_dir / "caerulea.jpg")
    assert (
        main(["identify", photo, "--model", str(model), "--format", "json", "--only", str(flora)])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["flora"] == ["rubra", "viridis"]
    assert main(["identify", photo, "--model", str(model), "--only", "Quercus"]) == 2
    assert "Quercus" in capsys.readouterr().err
    args = ["classify", photo, "--model", str(model), "--only", "rubra,alba"]
    assert main(args) == 2


def test_classify_jsonl(tiny_model: Path, photo_dir: Path, capsys: Capsys) -> None:
    assert main(["classify", str(photo_dir), "--model", str(tiny_model), "--format", "jsonl"]) == 0
    rows = _jsonl(capsys.readouterr().out)
    assert _best(rows) == EXPECTED
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert all(r["caveat"] == CAVEAT and r["model_version"] == "0.0.1-test" for r in rows)


def test_classify_defaults_to_jsonl_when_not_a_terminal(
    tiny_model: Path, photo_dir: Path, capsys: Capsys
) -> None:
    assert main(["classify", str(photo_dir), "--model", str(tiny_model)]) == 0
    assert _best(_jsonl(capsys.readouterr().out)) == EXPECTED


def test_classify_json(tiny_model: Path, photo_dir: Path, capsys: Capsys) -> None:
    assert (
        main(
            [
                "classify",
                str(photo_dir),
                "--model",
                str(tiny_model),
                "--format",
                "json",
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert _best(rows) == EXPECTED
    assert all(len(r["results"]) == 2 for r in rows)


def test_classify_csv(tiny_model: Path, photo_dir: Path, capsys: Capsys) -> None:
    assert (
        main(
            [
                "classify",
                str(photo_dir),
                "--model",
                str(tiny_model),
                "--format",
                "csv",
                "--top-k",
                "3",
            ]
        )
        == 0
    )
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    got = {Path(r["path"]).name: (r["best_match"] or None) for r in records}
    assert got == EXPECTED
    assert {r["top1_slug"] for r in records} >= {"rubra", "viridis", "caerulea"}
    assert all(r["caveat"] == CAVEAT and r["model_version"] == "0.0.1-test" for r in records)
    assert "top3_score" in records[0]


def test_top_k_over_the_number_of_classes_is_capped(
    tiny_model: Path, photo_dir: Path, capsys: Capsys
) -> None:
    args = ["classify", str(photo_dir), "--model", str(tiny_model), "--format", "csv"]
    assert main([*args, "--top-k", "100"]) == 0
    captured = capsys.readouterr()
    header = next(csv.reader(io.StringIO(captured.out)))
    assert "top3_score" in header and "top4_slug" not in header  # no empty column groups
    assert "--top-k 100 is more than the model's 3 classes; using 3" in captured.err
    photo = str(photo_dir / "rubra.jpg")
    assert (
        main(["identify", photo, "--model", str(tiny_model), "--top-k", "9", "--format", "json"])
        == 0
    )
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["results"]) == 3 and "using 3" in captured.err


def test_classify_table_has_caveat(tiny_model: Path, photo_dir: Path, capsys: Capsys) -> None:
    assert main(["classify", str(photo_dir), "--model", str(tiny_model), "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert CAVEAT in out
    assert "Planta rubra (red plant)" in out
    assert "unknown" in [line for line in out.splitlines() if "grey.png" in line][0]


def test_classify_output_file_format_from_suffix(
    tiny_model: Path, photo_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rows.csv"
    assert main(["classify", str(photo_dir), "--model", str(tiny_model), "-o", str(out)]) == 0
    records = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(records) == 4


def test_threshold_option_changes_unknown(
    tiny_model: Path, photo_dir: Path, capsys: Capsys
) -> None:
    assert (
        main(
            [
                "classify",
                str(photo_dir / "grey.png"),
                "--model",
                str(tiny_model),
                "--threshold",
                "0.2",
            ]
        )
        == 0
    )
    assert _jsonl(capsys.readouterr().out)[0]["best_match"] is not None


# --- classify: errors and exit codes ----------------------------------------------------


def test_bad_files_become_error_rows_and_exit_1(
    tiny_model: Path, photo_dir: Path, capsys: Capsys
) -> None:
    _add_bad_files(photo_dir)
    missing = str(photo_dir / "nope.jpg")
    assert main(["classify", str(photo_dir), missing, "--model", str(tiny_model)]) == 1
    captured = capsys.readouterr()
    rows = _jsonl(captured.out)
    errors = {Path(r["path"]).name: r["error"]["type"] for r in rows if "error" in r}
    assert errors == {
        "truncated.jpg": "bad_image",
        "text.jpg": "unsupported_type",
        "empty.jpg": "bad_image",
        "nope.jpg": "not_found",
    }
    good = {k: v for k, v in _best(rows).items() if k not in errors}
    assert good == EXPECTED
    # error rows carry the caveat and model version like every other row
    assert all(r["caveat"] == CAVEAT and r["model_version"] == "0.0.1-test" for r in rows)
    assert "3 failed" not in captured.err and "4 failed" in captured.err


def test_recursive(tiny_model: Path, photo_dir: Path, capsys: Capsys) -> None:
    sub = photo_dir / "deeper" / "still"
    sub.mkdir(parents=True)
    noisy((30, 200, 40)).save(sub / "leaf.JPEG", quality=90)
    assert main(["classify", str(photo_dir), "--model", str(tiny_model)]) == 0
    assert len(_jsonl(capsys.readouterr().out)) == 4
    assert main(["classify", str(photo_dir), "-r", "--model", str(tiny_model)]) == 0
    rows = _jsonl(capsys.readouterr().out)
    assert _best(rows)["leaf.JPEG"] == "viridis"
    assert len(rows) == 5


@pytest.mark.parametrize(
    "extra",
    [
        ["--top-k", "0"],
        ["--top-k", "two"],
        ["--format", "json", "--resume", "-o", "OUT"],
        ["--format", "table", "--resume", "-o", "OUT"],
        ["--resume"],
        ["--threshold", "1.5"],
        ["--workers", "0"],
    ],
)
def test_usage_errors_exit_2(
    tiny_model: Path, photo_dir: Path, tmp_path: Path, capsys: Capsys, extra: list[str]
) -> None:
    extra = [str(tmp_path / "out") if a == "OUT" else a for a in extra]
    assert main(["classify", str(photo_dir), "--model", str(tiny_model), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err and captured.err


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("where", ["missing-folder", "a-folder"])
def test_unwritable_output_exits_2(
    tiny_model: Path, photo_dir: Path, tmp_path: Path, capsys: Capsys, where: str, resume: bool
) -> None:
    out = tmp_path / "missing" / "out.jsonl" if where == "missing-folder" else tmp_path
    extra = ["--format", "jsonl", "--resume"] if resume else []
    assert (
        main(["classify", str(photo_dir), "--model", str(tiny_model), "-o", str(out), *extra]) == 2
    )
    captured = capsys.readouterr()
    assert captured.out == "" and "leafid: error: cannot " in captured.err


def test_output_named_like_an_image_is_refused_not_overwritten(
    tiny_model: Path, photo_dir: Path, capsys: Capsys
) -> None:
    photo = photo_dir / "rubra.jpg"
    before = photo.read_bytes()
    # what "-o photos/*.jpg" expands to
    argv = ["classify", "--model", str(tiny_model), "-o", str(photo), str(photo_dir / "grey.png")]
    assert main(argv) == 2
    assert photo.read_bytes() == before
    assert "named like an image" in capsys.readouterr().err


def test_no_images_found_exits_2(tiny_model: Path, tmp_path: Path, capsys: Capsys) -> None:
    (tmp_path / "notes.txt").write_text("x")
    assert main(["classify", str(tmp_path), "--model", str(tiny_model)]) == 2
    assert "no images found" in capsys.readouterr().err


def test_a_folder_with_images_only_in_sub_folders_suggests_r(
    tiny_model: Path, photo_dir: Path, tmp_path: Path, capsys: Capsys
) -> None:
    top = tmp_path / "top"
    (top / "oak").mkdir(parents=True)
    (photo_dir / "rubra.jpg").rename(top / "oak" / "rubra.jpg")
    assert main(["classify", str(top), "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err
    assert "its sub-folders have some: add -r (--recursive)" in err and "no images found" in err
    assert main(["classify", "-r", str(top), "--model", str(tiny_model), "--format", "jsonl"]) == 0
    assert _best(_jsonl(capsys.readouterr().out)) == {"rubra.jpg": "rubra"}


def test_no_command_exits_2(capsys: Capsys) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_help_exits_0_and_documents_exit_codes(capsys: Capsys) -> None:
    assert main(["classify", "--help"]) == 0
    out = capsys.readouterr().out
    assert "exit status" in out and "--resume" in out


@pytest.mark.parametrize("command", ["classify", "identify", "info"])
def test_missing_model_is_a_clear_error(
    tmp_path: Path, photo_dir: Path, capsys: Capsys, command: str
) -> None:
    args = [command] + ([] if command == "info" else [str(photo_dir / "rubra.jpg")])
    assert main([*args, "--model", str(tmp_path / "nope.onnx")]) == 2
    err = capsys.readouterr().err
    assert "model file not found" in err and "--model" in err
    assert "Traceback" not in err


def test_invalid_model_is_a_clear_error(tmp_path: Path, photo_dir: Path, capsys: Capsys) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    assert main(["classify", str(photo_dir), "--model", str(bad)]) == 2
    assert "cannot load ONNX model" in capsys.readouterr().err


# --- resume -----------------------------------------------------------------------------


def _many_photos(folder: Path, n: int) -> None:
    folder.mkdir()
    colours = [(220, 30, 30), (30, 200, 40), (30, 40, 210)]
    for i in range(n):
        noisy(colours[i % 3], seed=i).save(folder / f"p{i:02d}.jpg", quality=90)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_after_a_crash_every_path_once(tiny_model: Path, tmp_path: Path, fmt: str) -> None:
    photos = tmp_path / "photos"
    _many_photos(photos, 9)
    full = tmp_path / f"full.{fmt}"
    base = ["classify", str(photos), "--model", str(tiny_model), "--format", fmt]
    assert main([*base, "-o", str(full)]) == 0
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    head = 1 if fmt == "csv" else 0
    # a crash: four complete rows, then half of the fifth
    out = tmp_path / f"out.{fmt}"
    out.write_text("".join(lines[: head + 4]) + lines[head + 4][:25], encoding="utf-8")
    assert main([*base, "-o", str(out), "--resume"]) == 0
    text = out.read_text(encoding="utf-8")
    if fmt == "jsonl":
        paths = [r["path"] for r in _jsonl(text)]
    else:
        records = list(csv.reader(io.StringIO(text)))
        assert records[0][0] == "path" and records.count(records[0]) == 1
        paths = [r[0] for r in records[1:]]
    assert sorted(paths) == sorted(str(p) for p in photos.glob("*.jpg"))
    assert len(paths) == len(set(paths)) == 9
    assert text == full.read_text(encoding="utf-8")  # same rows, same order
    # resuming a finished file does nothing
    assert main([*base, "-o", str(out), "--resume"]) == 0
    assert out.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_keeps_exit_1_for_files_that_failed_before(
    tiny_model: Path, photo_dir: Path, tmp_path: Path, fmt: str
) -> None:
    _add_bad_files(photo_dir)
    out = tmp_path / f"out.{fmt}"
    base = ["classify", str(photo_dir), "--model", str(tiny_model), "-o", str(out)]
    assert main(base) == 1
    text = out.read_text(encoding="utf-8")
    assert main([*base, "--resume"]) == 1  # nothing left to do, but 3 files failed
    assert out.read_text(encoding="utf-8") == text
    good = ["classify", *(str(photo_dir / n) for n in EXPECTED), "--model", str(tiny_model)]
    assert main([*good, "-o", str(out), "--resume", "--format", fmt]) == 0


def test_resume_of_missing_file_starts_fresh(
    tiny_model: Path, photo_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "new.csv"
    assert (
        main(["classify", str(photo_dir), "--model", str(tiny_model), "-o", str(out), "--resume"])
        == 0
    )
    assert len(list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))) == 4


def test_interrupt_keeps_finished_rows_then_resume_completes(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capsys
) -> None:
    photos = tmp_path / "photos"
    _many_photos(photos, 6)
    out = tmp_path / "out.jsonl"
    base = [
        "classify",
        str(photos),
        "--model",
        str(tiny_model),
        "-o",
        str(out),
        "--batch-size",
        "2",
    ]
    real = Classifier.probabilities
    calls: list[int] = []

    def interrupted(self: Classifier, batch: np.ndarray) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(Classifier, "probabilities", interrupted)
    assert main(base) == 130
    assert len(_jsonl(out.read_text(encoding="utf-8"))) == 2
    assert "interrupted" in capsys.readouterr().err
    monkeypatch.setattr(Classifier, "probabilities", real)
    assert main([*base, "--resume"]) == 0
    paths = [r["path"] for r in _jsonl(out.read_text(encoding="utf-8"))]
    assert paths == sorted(str(p) for p in photos.glob("*.jpg"))


# --- identify ---------------------------------------------------------------------------


def test_identify_fuses_photos(tiny_model: Path, photo_dir: Path, capsys: Capsys) -> None:
    extra = photo_dir / "rubra2.jpg"
    noisy((150, 60, 60), seed=3).save(extra, quality=90)
    files = [str(photo_dir / "rubra.jpg"), str(extra)]
    assert main(["identify", *files, "--model", str(tiny_model), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["best_match"] == "rubra"
    assert result["paths"] == files and result["errors"] == []
    assert result["caveat"] == CAVEAT
    clf = Classifier(tiny_model)
    arrays = np.stack([clf.load(Path(f).read_bytes()) for f in files])
    fused = clf.identify_arrays(arrays).to_dict()
    single = clf.classify_arrays(arrays[:1])[0].to_dict()
    assert result["results"] == fused["results"] != single["results"]


def test_identify_takes_a_folders_photos(tiny_model: Path, tmp_path: Path, capsys: Capsys) -> None:
    plant = tmp_path / "plant"
    plant.mkdir()
    for seed in (1, 2):
        noisy((150, 60, 60), seed=seed).save(plant / f"leaf{seed}.jpg", quality=90)
    (plant / "notes.txt").write_text("not a photo")
    assert main(["identify", str(plant), "--model", str(tiny_model), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["best_match"] == "rubra"
    assert result["paths"] == [str(plant / "leaf1.jpg"), str(plant / "leaf2.jpg")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["identify", str(empty), "--model", str(tiny_model)]) == 2
    assert "no images found" in capsys.readouterr().err


def test_identify_names_a_missing_photo_not_found(
    tiny_model: Path, photo_dir: Path, capsys: Capsys
) -> None:
    files = [str(photo_dir / "rubra.jpg"), str(photo_dir / "nope.jpg")]
    assert main(["identify", *files, "--model", str(tiny_model), "--format", "json"]) == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert [e["error"]["type"] for e in result["errors"]] == ["not_found"]
    assert f"{files[1]}: file not found" in captured.err


def test_identify_reports_bad_images_and_uses_the_rest(
    tiny_model: Path, photo_dir: Path, capsys: Capsys
) -> None:
    _add_bad_files(photo_dir)
    files = [str(photo_dir / "viridis.jpg"), str(photo_dir / "text.jpg")]
    assert main(["identify", *files, "--model", str(tiny_model), "--format", "jsonl"]) == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["best_match"] == "viridis"
    assert result["paths"] == files[:1]
    assert result["errors"][0]["path"] == files[1]
    assert "text.jpg" in captured.err


def test_identify_answers_from_the_good_photos_and_flags_the_bad_one(
    tiny_model: Path, photo_dir: Path, capsys: Capsys
) -> None:
    _add_bad_files(photo_dir)
    extra = photo_dir / "rubra2.jpg"
    noisy((150, 60, 60), seed=3).save(extra, quality=90)
    good = [str(photo_dir / "rubra.jpg"), str(extra)]
    files = [good[0], str(photo_dir / "truncated.jpg"), good[1]]
    assert main(["identify", *files, "--model", str(tiny_model), "--format", "json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert main(["identify", *good, "--model", str(tiny_model), "--format", "json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert result["errors"] == [
        {
            "path": files[1],
            "error": {"type": "bad_image", "message": ANY},
            "caveat": CAVEAT,
            "model_version": "0.0.1-test",
        }
    ]
    assert {k: v for k, v in result.items() if k != "errors"} == {
        k: v for k, v in alone.items() if k != "errors"
    }


def test_identify_all_bad_exits_1(tiny_model: Path, photo_dir: Path, capsys: Capsys) -> None:
    _add_bad_files(photo_dir)
    files = [str(photo_dir / n) for n in ("text.jpg", "empty.jpg")]
    assert main(["identify", *files, "--model", str(tiny_model), "--format", "table"]) == 1
    captured = capsys.readouterr()
    assert "none of the images could be used" in captured.err and captured.out == ""
    assert main(["identify", *files, "--model", str(tiny_model), "--format", "json"]) == 1
    result = json.loads(capsys.readouterr().out)
    # the first photo's error, named, and each photo's own error
    assert result["error"] == {
        "type": "unsupported_type",
        "message": f"{files[0]}: not a recognised image file",
    }
    assert result["paths"] == [] and "best_match" not in result
    assert result["caveat"] == CAVEAT and result["model_version"] == "0.0.1-test"
    assert [e["error"]["type"] for e in result["errors"]] == ["unsupported_type", "bad_image"]


def test_identify_table(tiny_model: Path, photo_dir: Path, capsys: Capsys) -> None:
    assert (
        main(
            [
                "identify",
                str(photo_dir / "caerulea.jpg"),
                "--model",
                str(tiny_model),
                "--format",
                "table",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Best match: Planta caerulea (blue plant)" in out and CAVEAT in out
    assert "likely (calibrated)" in out


def test_identify_table_names_photos_that_disagree_and_what_to_do(
    tiny_model: Path, photo_dir: Path, capsys: Capsys
) -> None:
    files = [str(photo_dir / "rubra.jpg"), str(photo_dir / "viridis.jpg")]
    args = ["identify", *files, "--model", str(tiny_model)]
    assert main([*args, "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "Unknown: these photos look like different plants." in out
    assert f"  {files[0]}: Planta rubra (red plant), " in out
    assert f"  {files[1]}: Planta viridis (green plant), " in out
    assert "one plant at a time" in out
    assert main([*args, "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reason_code"] == "photos_disagree"
    assert [p["photo"] for p in result["disagreement"]] == files


def test_identify_table_explains_unknown_without_machine_terms(
    tiny_model: Path, photo_dir: Path, capsys: Capsys
) -> None:
    grey = str(photo_dir / "grey.png")
    assert main(["identify", grey, "--model", str(tiny_model), "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "Unknown: no species is likely enough to name" in out
    assert "retake it closer" in out and "leafid info lists them" in out
    assert "threshold" not in out


# --- info -------------------------------------------------------------------------------


def test_info_text(tiny_model: Path, capsys: Capsys) -> None:
    assert main(["info", "--model", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    for text in (
        "tiny-test",
        "0.0.1-test",
        "Planta viridis",
        "green plant",
        "0.5",
        CAVEAT,
        str(tiny_model),
    ):
        assert text in out


def test_info_lists_genus_and_family_when_the_model_has_them(
    tmp_path: Path, capsys: Capsys
) -> None:
    model = make_tiny_model(tmp_path / "m.onnx", tiny_taxonomy_spec())
    assert main(["info", "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "with [genus, family]" in out
    assert re.search(r"caerulea +Planta caerulea +blue plant +\[Caerula, Plantaceae\]", out)


def test_info_summarises_metrics_in_a_table(tmp_path: Path, capsys: Capsys) -> None:
    test = {
        "images": 20,
        "top1": 0.95,
        "top5": 1.0,
        "unknown_rate": 0.1,
        "ece": 0.021,
        "per_dataset": {"setA": {"images": 20, "top1": 0.95, "top5": 1.0, "unknown_rate": 0.1}},
        "ood": {"images": 8, "rejected": 0.875, "auroc": 0.9321},
    }
    model = make_tiny_model(tmp_path / "m.onnx", tiny_spec(metrics={"test": test}))
    assert main(["info", "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "when the best match is under 50% likely (threshold 0.5)" in out
    assert "calibrated chances" in out
    lines = out.splitlines()
    assert any(line.split() == ["setA", "20", "95.0%", "100.0%", "10.0%"] for line in lines)
    assert "Non-leaf photos rejected: 87.5% of 8 (AUROC 0.932)" in out
    assert "Calibration error (ECE): 2.1%" in out
    assert "{" not in out  # no raw JSON


@pytest.mark.parametrize("flag", [["--json"], ["--format", "json"]])
def test_info_json(tiny_model: Path, capsys: Capsys, flag: list[str]) -> None:
    assert main(["info", "--model", str(tiny_model), *flag]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [c["slug"] for c in info["classes"]] == ["rubra", "viridis", "caerulea"]
    assert info["unknown_threshold"] == 0.5 and info["input_size"] == 32
    assert info["caveat"] == CAVEAT and "metrics" in info and "training_data" in info


# --- plugins ----------------------------------------------------------------------------


class _FakeEntryPoint:
    def __init__(self, name: str, target: Any, module: str | None = None) -> None:
        self.name = name
        self.module = module or f"fake_{name}.commands"
        self.value = f"{self.module}:register"
        self._target = target

    def load(self) -> Any:
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def _register_train(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train a model")

    def handler(args: argparse.Namespace) -> int:
        raise MissingExtraError("train", "torch")

    p.set_defaults(func=handler)


def _register_hello(subparsers: Any) -> None:
    p = subparsers.add_parser("hello", help="say hello")
    p.add_argument("--name", default="world")
    p.set_defaults(func=lambda args: 0 if args.name == "world" else 3)


def _register_clash(subparsers: Any) -> None:
    subparsers.add_parser("classify")


def _register_buggy(subparsers: Any) -> None:
    subparsers.add_parser("buggy")
    raise RuntimeError("boom in register")


def _register_serve_again(subparsers: Any) -> None:
    raise AssertionError("leafid's own entry point must not be loaded")


def _not_installed(name: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(f"No module named {name!r}", name=name)


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        _FakeEntryPoint("broken", _not_installed("leafid_train"), "leafid_train.commands"),
        _FakeEntryPoint("needs_extra", _not_installed("torch")),
        _FakeEntryPoint("clash", _register_clash),
        _FakeEntryPoint("hello", _register_hello),
        _FakeEntryPoint("train", _register_train),
        _FakeEntryPoint("buggy", _register_buggy),
        _FakeEntryPoint("typo", _not_installed("leafid_train.conifg"), "leafid_train.commands"),
        _FakeEntryPoint("serve", _register_serve_again, "leafid.http.commands"),
    ]

    def fake_entry_points(*, group: str) -> list[_FakeEntryPoint]:
        assert group == "leafid.commands"
        return eps

    monkeypatch.setattr(cli, "entry_points", fake_entry_points)


@pytest.mark.usefixtures("plugins")
def test_plugins_load_and_broken_ones_are_skipped(capsys: Capsys) -> None:
    assert main(["hello"]) == 0
    assert main(["hello", "--name", "x"]) == 3
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "hello" in out and "classify" in out and "broken" not in out
    assert main(["classify", "--help"]) == 0  # the clashing plugin did not replace it
    assert "--resume" in capsys.readouterr().out


@pytest.mark.usefixtures("plugins")
def test_a_plugin_whose_package_is_missing_is_skipped_quietly(capsys: Capsys) -> None:
    assert main(["hello"]) == 0
    err = capsys.readouterr().err
    assert "broken" not in err and "needs_extra" not in err


@pytest.mark.usefixtures("plugins")
def test_a_broken_plugin_is_named_with_its_error(capsys: Capsys) -> None:
    assert main(["hello"]) == 0  # the other commands still work
    err = capsys.readouterr().err
    assert "command plugin buggy (fake_buggy.commands:register)" in err
    assert "RuntimeError: boom in register" in err
    assert "command plugin clash" in err  # a name leafid already has
    # a missing module of the plugin's own package is a bug in it, not a missing extra
    assert "command plugin typo" in err and "leafid_train.conifg" in err


@pytest.mark.usefixtures("plugins")
def test_missing_extra_message_and_exit_2(capsys: Capsys) -> None:
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'leafid[train]'" in err and "Traceback" not in err


@pytest.mark.usefixtures("plugins")
def test_serve_is_leafids_own_command_not_its_entry_point(capsys: Capsys) -> None:
    sub = argparse.ArgumentParser().add_subparsers()
    assert "serve" not in cli.load_plugins(sub)
    assert main(["serve", "--help"]) == 0  # registered directly, once
    captured = capsys.readouterr()
    assert "--inference-slots" in captured.out
    assert "plugin serve" not in captured.err  # its entry point was not loaded


def test_real_entry_points_do_not_break_the_cli(capsys: Capsys) -> None:
    assert main(["--help"]) == 0
    captured = capsys.readouterr()
    assert "classify" in captured.out and "serve" in captured.out
    assert "warning" not in captured.err


def test_version_is_stated_once(capsys: Capsys) -> None:
    import tomllib

    import leafid

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"leafid {leafid.__version__}"
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "service/leafid/__init__.py"


# --- renamed options --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "old", "new", "dest"),
    [
        (["classify", "x.jpg"], "--workers", "--decode-threads", "decode_threads"),
        (["bench"], "--workers", "--decode-threads", "decode_threads"),
        (["serve"], "--workers", "--processes", "processes"),
        (["serve"], "--concurrency", "--inference-slots", "inference_slots"),
        (["loadtest"], "--concurrency", "--clients", "clients"),
    ],
)
def test_renamed_option_and_its_hidden_old_name(
    argv: list[str], old: str, new: str, dest: str, capsys: Capsys
) -> None:
    parser = cli.build_parser()
    assert getattr(parser.parse_args([*argv, new, "3"]), dest) == 3
    assert capsys.readouterr().err == ""
    assert getattr(parser.parse_args([*argv, old, "4"]), dest) == 4
    assert f"{old} is deprecated; use {new}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, old, "0"])  # checked like the new name
    capsys.readouterr()
    assert main([argv[0], "--help"]) == 0
    out = capsys.readouterr().out
    assert new in out and old not in out


def test_model_option_has_one_help_text(capsys: Capsys) -> None:
    helps = set()
    for command in ("classify", "identify", "info", "dask", "bench", "serve", "loadtest"):
        assert main([command, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "--model M" in out
        helps.add(out.split("--model M ", 1)[1].split(" --")[0])
    assert helps == {MODEL_HELP}


# --- end to end -------------------------------------------------------------------------


def test_python_dash_m_leafid_end_to_end(tiny_model: Path, photo_dir: Path) -> None:
    _add_bad_files(photo_dir)
    env = {**os.environ, "LEAFID_MODEL": str(tiny_model)}
    proc = subprocess.run(
        [sys.executable, "-m", "leafid", "classify", str(photo_dir), "--format", "jsonl"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    rows = _jsonl(proc.stdout)
    assert len(rows) == 7
    assert {k: v for k, v in _best(rows).items() if k in EXPECTED} == EXPECTED
    assert "Traceback" not in proc.stderr
