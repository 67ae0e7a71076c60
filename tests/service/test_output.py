import csv
import io
import json
from pathlib import Path

import pytest

from leafid.errors import BadImageError, InvalidRequestError
from leafid.output import (
    Writer,
    csv_header,
    display_path,
    error_row,
    flatten,
    format_from_suffix,
    read_done_paths,
    success_row,
)
from leafid.results import CAVEAT, Candidate, Prediction, TaxonMatch


def _pred(slug: str = "rubra", score: float = 0.9, unknown: bool = False) -> Prediction:
    cands = (
        Candidate(slug, f"Planta {slug}", f"{slug} plant", score),
        Candidate("other", "Planta alia", "other plant", 1 - score),
    )
    return Prediction(cands, unknown, "too low" if unknown else None, "1.2.3")


ROWS = [
    success_row("a.jpg", _pred()),
    success_row("b,with comma.jpg", _pred("viridis", 0.3, unknown=True)),
    error_row("c.jpg", BadImageError("cannot decode image:\nline two"), "1.2.3"),
]


def _write(fmt: str, rows: list[dict[str, object]] = ROWS, top_k: int = 2) -> str:
    buf = io.StringIO()
    writer = Writer(buf, fmt, top_k=top_k, model_version="1.2.3")
    writer.write(rows[:1])
    writer.write(rows[1:])
    writer.close()
    writer.close()  # idempotent
    return buf.getvalue()


def test_rows_follow_the_shared_schema() -> None:
    assert ROWS[0]["path"] == "a.jpg"
    assert ROWS[0]["best_match"] == "rubra"
    assert ROWS[0]["caveat"] == CAVEAT
    assert ROWS[0]["model_version"] == "1.2.3"
    assert ROWS[1]["best_match"] is None and ROWS[1]["unknown"] is True
    assert ROWS[2] == {
        "path": "c.jpg",
        "error": {"type": "bad_image", "message": "cannot decode image:\nline two"},
        "caveat": CAVEAT,
        "model_version": "1.2.3",
    }


def test_jsonl_is_one_object_per_line() -> None:
    lines = _write("jsonl").splitlines()
    assert [json.loads(line) for line in lines] == ROWS


def test_json_is_one_array_written_at_close() -> None:
    buf = io.StringIO()
    writer = Writer(buf, "json", top_k=2, model_version="1.2.3")
    writer.write(ROWS)
    assert buf.getvalue() == ""
    writer.close()
    assert json.loads(buf.getvalue()) == ROWS


def test_csv_is_flat_one_line_per_record_and_carries_caveat() -> None:
    text = _write("csv")
    lines = text.splitlines()
    assert len(lines) == 4  # header + 3, the newline in the message was flattened
    records = list(csv.DictReader(io.StringIO(text)))
    assert list(records[0]) == csv_header(2)
    assert records[0]["best_match"] == "rubra" and records[0]["rank"] == "species"
    assert records[0]["top1_score"] == "0.900000"
    assert records[0]["top2_slug"] == "other"
    assert records[1]["path"] == "b,with comma.jpg"
    assert records[1]["unknown"] == "true" and records[1]["best_match"] == ""
    assert records[1]["rank"] == ""
    assert records[2]["error_type"] == "bad_image"
    assert records[2]["error_message"] == "cannot decode image: line two"
    assert all(r["caveat"] == CAVEAT and r["model_version"] == "1.2.3" for r in records)


def test_csv_pads_missing_candidates() -> None:
    cells = flatten(ROWS[0], 4)
    assert len(cells) == len(csv_header(4))


def test_table_is_readable_with_caveat_footer() -> None:
    text = _write("table")
    assert "Planta rubra (rubra plant)" in text
    assert "unknown" in text.splitlines()[2]
    assert "error (bad_image)" in text


def test_table_gives_the_score_as_a_chance_and_next_steps_for_unknown() -> None:
    lines = _write("table").splitlines()
    assert lines[0].split() == ["PATH", "LIKELY", "BEST", "MATCH"]
    assert lines[1].split()[:2] == ["a.jpg", "90%"]
    assert "30%" in lines[2] and "0.30" not in lines[2]
    text = "\n".join(lines)
    assert "calibrated chance" in text
    assert "retake it closer, on a plain background" in text and "leafid info" in text
    assert "threshold" not in text
    # no unknown answer, no advice about unknown answers
    alone = _write("table", ROWS[:1])
    assert "retake" not in alone and "calibrated chance" in alone
    assert CAVEAT in text
    assert text.splitlines()[0].startswith("PATH")


def _genus_row() -> dict[str, object]:
    pred = _pred("salix_aurita", 0.4)
    taxon = TaxonMatch("genus", "Salix", 0.85, pred.results[:1])
    return success_row("g.jpg", Prediction(pred.results, False, None, "1.2.3", taxon=taxon))


def test_genus_answer_in_table_and_csv() -> None:
    row = _genus_row()
    assert (row["best_match"], row["rank"], row["match_score"]) == ("Salix", "genus", 0.85)
    line = _write("table", [row]).splitlines()[1]
    assert line.split()[:2] == ["g.jpg", "85%"]
    assert "genus Salix" in line and "Planta salix_aurita" in line
    (record,) = csv.DictReader(io.StringIO(_write("csv", [row])))
    assert (record["best_match"], record["rank"]) == ("Salix", "genus")
    assert record["top1_slug"] == "salix_aurita"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        Writer(io.StringIO(), "xml", top_k=1, model_version="x")


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("out.csv", "csv"), ("OUT.JSON", "json"), ("out.txt", "table"), ("out", "jsonl")],
)
def test_format_from_suffix(name: str, fmt: str) -> None:
    assert format_from_suffix(name) == fmt


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_read_done_paths_cuts_a_torn_last_line(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    full = _write(fmt)
    torn = full[: full.rindex("\n", 0, len(full) - 1) + 1] + full.splitlines()[-1][:10]
    out.write_text(torn, encoding="utf-8")
    done = read_done_paths(out, fmt, 2)
    assert set(done) == {"a.jpg", "b,with comma.jpg"}
    assert out.read_text(encoding="utf-8").endswith("\n")
    assert "c.jpg" not in out.read_text(encoding="utf-8")


def test_read_done_paths_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_done_paths(tmp_path / "none.jsonl", "jsonl", 5) == {}


def test_read_done_paths_refuses_foreign_files(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("not json\n{}\n", encoding="utf-8")
    with pytest.raises(InvalidRequestError, match="line 1"):
        read_done_paths(out, "jsonl", 5)
    out_csv = tmp_path / "out.csv"
    out_csv.write_text(_write("csv", top_k=2), encoding="utf-8")
    with pytest.raises(InvalidRequestError, match="--top-k 3"):
        read_done_paths(out_csv, "csv", 3)
    with pytest.raises(InvalidRequestError, match="--resume"):
        read_done_paths(out, "json", 5)


@pytest.mark.parametrize("sep", ["\u0085", "\u2028", "\u2029"])
def test_unicode_line_break_in_a_name_survives_csv_resume(tmp_path: Path, sep: str) -> None:
    name = f"a{sep}b.jpg"
    out = tmp_path / "out.csv"
    out.write_text(_write("csv", [success_row(name, _pred())]), encoding="utf-8")
    assert sep not in display_path(name)
    # --resume must find the path in the form it compares: else the file is done twice
    assert read_done_paths(out, "csv", 2) == {display_path(name): False}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_read_done_paths_marks_error_rows(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"out.{fmt}"
    out.write_text(_write(fmt), encoding="utf-8")
    assert read_done_paths(out, fmt, 2) == {
        "a.jpg": False,
        "b,with comma.jpg": False,
        "c.jpg": True,
    }
