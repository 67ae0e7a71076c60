r"""Result rows and the formats the CLI writes them in (table, jsonl, json, csv).

A row is the schema shared with the HTTP service: a success row is
``{"path": ..., **Prediction.to_dict()}``, an error row is ``{"path": ..., "error":
{"type": ..., "message": ...}, "caveat": ..., "model_version": ...}``. The path is always valid
Unicode on one line: the bytes of a file name that is not UTF-8, and control
characters, are written as ``\xNN`` (:func:`display_path`).

``jsonl`` and ``csv`` are written one record per line and flushed after every batch,
so they can be resumed (:func:`read_done_paths`); ``json`` is one array written when
the run ends (also when it is interrupted); ``table`` is for people.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from leafid import wording
from leafid.errors import InvalidRequestError, LeafidError
from leafid.results import CAVEAT, Prediction, error_item

Row = dict[str, Any]

FORMATS = ("table", "jsonl", "json", "csv")
RESUMABLE_FORMATS = ("jsonl", "csv")


# ASCII control characters (newline, tab, ...) in file names, written as \xNN, and the
# other characters str.splitlines() breaks lines at, written as \uNNNN.
_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(32), 127]}
_CONTROL_ESCAPES.update({c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)})


def display_path(path: str) -> str:
    r"""A path as result rows write it: valid Unicode on one line, whatever the name.

    On POSIX a file name that is not UTF-8 reaches Python with its bad bytes as lone
    surrogates (``surrogateescape``), which cannot be written as UTF-8. Those bytes are
    written as ``\xNN`` instead, e.g. ``b"leaf\xff.jpg"`` becomes ``leaf\xff.jpg``
    (backslash, x, f, f), and so are control characters such as a newline (which would
    break CSV and table lines); the Unicode line breaks U+0085, U+2028 and U+2029 are
    written as ``\u0085``, ``\u2028``, ``\u2029``. Other names are unchanged.
    ``--resume`` compares paths in this form.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = path.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate that is not an escaped byte
            raw = path.encode("utf-8", "backslashreplace")
        path = raw.decode("utf-8", "backslashreplace")
    return path.translate(_CONTROL_ESCAPES)


def success_row(path: str, prediction: Prediction) -> Row:
    """The row for a classified file."""
    return {"path": display_path(path), **prediction.to_dict()}


def error_row(path: str, exc: LeafidError, model_version: str) -> Row:
    """The row for a file that could not be classified."""
    return {"path": display_path(path), **error_item(exc, model_version)}


def format_from_suffix(path: str | os.PathLike[str]) -> str:
    """The format an output file name asks for: .csv, .json, .txt (table), else jsonl."""
    suffix = Path(path).suffix.lower()
    return {".csv": "csv", ".json": "json", ".txt": "table"}.get(suffix, "jsonl")


def csv_header(top_k: int) -> list[str]:
    """CSV column names for ``top_k`` candidates."""
    cols = ["path", "best_match", "rank", "unknown", "reason"]
    for i in range(1, top_k + 1):
        cols += [f"top{i}_slug", f"top{i}_scientific_name", f"top{i}_common_name", f"top{i}_score"]
    return cols + ["error_type", "error_message", "caveat", "model_version"]


def _one_line(text: str) -> str:
    # Every CSV record stays on one physical line, so a torn tail can be cut at "\n".
    return " ".join(text.splitlines())


def flatten(row: Row, top_k: int) -> list[str]:
    """One CSV record for a row (error rows leave the prediction columns empty)."""
    cells: list[str] = [row["path"]]
    if "error" in row:
        cells += ["", "", "", ""] + [""] * (4 * top_k)
        cells += [row["error"]["type"], row["error"]["message"]]
    else:
        best = row["best_match"]
        cells += [best or "", row["rank"] or "", "true" if row["unknown"] else "false"]
        cells.append(row["reason"] or "")
        results = row["results"][:top_k]
        for cand in results:
            cells += [
                cand["slug"],
                cand["scientific_name"],
                cand["common_name"],
                f"{cand['score']:.6f}",
            ]
        cells += [""] * (4 * (top_k - len(results)))
        cells += ["", ""]
    cells += [CAVEAT, row["model_version"]]
    return [_one_line(c) for c in cells]


class Writer:
    """Writes rows to a text stream in one format.

    Args:
        stream: Where rows go.
        fmt: One of :data:`FORMATS`.
        top_k: Number of candidates per row (CSV columns).
        model_version: Version of the model answering (the table's footer).
        write_header: Write the CSV header (False when appending to a resumed file).
        path_width: Width of the path column of the table.
    """

    def __init__(
        self,
        stream: TextIO,
        fmt: str,
        *,
        top_k: int,
        model_version: str,
        write_header: bool = True,
        path_width: int = 30,
    ) -> None:
        if fmt not in FORMATS:
            raise InvalidRequestError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        self.stream = stream
        self.fmt = fmt
        self.top_k = top_k
        self.model_version = model_version
        self.path_width = max(4, min(path_width, 60))
        self._json_rows: list[Row] = []
        self._header_pending = write_header and fmt in ("csv", "table")
        self._closed = False
        self._unknowns = 0  # unknown answers in the table, for its footer

    def write(self, rows: Iterable[Row]) -> None:
        """Write rows and flush them (JSON rows are held until :meth:`close`)."""
        lines: list[str] = []
        if self._header_pending:
            lines.append(self._header())
            self._header_pending = False
        for row in rows:
            if self.fmt == "json":
                self._json_rows.append(row)
            elif self.fmt == "jsonl":
                lines.append(json.dumps(row, ensure_ascii=False))
            elif self.fmt == "csv":
                lines.append(self._csv_line(flatten(row, self.top_k)))
            else:
                lines.append(self._table_line(row))
        if lines:
            self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Finish the output: the JSON array, or the table's footer. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.fmt == "json":
            self.stream.write(json.dumps(self._json_rows, ensure_ascii=False, indent=2) + "\n")
        elif self.fmt == "table":
            notes = ["LIKELY: the calibrated chance that the best match is right."]
            if self._unknowns:
                notes.append(
                    f"unknown: no species is likely enough to name. {wording.UNSURE_STEPS}"
                )
            notes.append(f"model {self.model_version}. {CAVEAT}")
            self.stream.write("\n" + "\n".join(notes) + "\n")
        self.stream.flush()

    def _header(self) -> str:
        if self.fmt == "csv":
            return self._csv_line(csv_header(self.top_k))
        return f"{'PATH':<{self.path_width}}  {'LIKELY':>6}  BEST MATCH"

    @staticmethod
    def _csv_line(cells: list[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(cells)
        return buf.getvalue()

    def _table_line(self, row: Row) -> str:
        path = row["path"]
        if len(path) > self.path_width:
            path = "…" + path[-(self.path_width - 1) :]
        if "error" in row:
            err = row["error"]
            return f"{path:<{self.path_width}}  {'-':>5}  error ({err['type']}): {err['message']}"
        top = row["results"][0]
        name, score = top["display_name"], top["score"]
        if row["unknown"]:
            self._unknowns += 1
            name = f"unknown, not likely enough (closest: {name})"
        elif row["rank"] != "species":
            name, score = wording.backed_off(row), row["match_score"]
        line = f"{path:<{self.path_width}}  {wording.chance(score):>6}  {name}"
        if top.get("references"):  # classify --references: the best match's most similar
            similar = ", ".join(f"{r['file']} ({r['similarity']:.2f})" for r in top["references"])
            line += f"\n{'':<{self.path_width}}  {'':>6}  similar: {similar}"
        return line


def _cut_torn_tail(path: Path) -> bytes:
    """Drop a last line without its newline (a write cut off by a kill); return the rest."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return data[:end]


def read_done_paths(path: str | os.PathLike[str], fmt: str, top_k: int) -> dict[str, bool]:
    """Paths already in an output file, for ``--resume``; cuts off a torn last line.

    Args:
        path: The output file (may not exist yet).
        fmt: ``jsonl`` or ``csv``.
        top_k: Candidates per row of this run (a CSV file must have the same columns).

    Returns:
        The ``path`` of every complete row in the file (in :func:`display_path` form),
        mapped to True when that row is an error row.

    Raises:
        InvalidRequestError: The format cannot be resumed, the file cannot be read and
            written, or it is not leafid output of that format.
    """
    if fmt not in RESUMABLE_FORMATS:
        raise InvalidRequestError(
            f"--resume works with --format {' or '.join(RESUMABLE_FORMATS)} only, not {fmt}"
        )
    p = Path(path)
    if not p.exists():
        return {}
    try:
        data = _cut_torn_tail(p)
    except OSError as exc:
        raise InvalidRequestError(f"cannot resume from {p}: {exc.strerror or exc}") from exc
    text = data.decode("utf-8", errors="replace")
    lines = [line for line in text.split("\n") if line.strip()]
    done: dict[str, bool] = {}
    if fmt == "jsonl":
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                done[row["path"]] = "error" in row
            except (ValueError, TypeError, KeyError) as exc:
                raise InvalidRequestError(
                    f"cannot resume: line {n} of {p} is not a leafid JSON row"
                ) from exc
        return done
    if not lines:
        return done
    records = list(csv.reader(lines))
    if records[0] != csv_header(top_k):
        raise InvalidRequestError(
            f"cannot resume: {p} does not have the CSV columns of this run "
            f"(same --top-k {top_k} needed)"
        )
    error_type = records[0].index("error_type")
    for record in records[1:]:
        if record:
            done[record[0]] = bool(record[error_type])
    return done
