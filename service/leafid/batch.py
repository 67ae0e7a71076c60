"""The batch pipeline of ``leafid classify``: find images, decode in threads, classify in batches.

Files are read and decoded (:meth:`Classifier.try_load`) by a pool of threads (Pillow
releases the GIL while decoding) with bounded read-ahead, while the calling thread runs
the model on batches (:meth:`Classifier.classify_loaded`). Rows come out in input order,
one batch at a time, so the caller can write and flush them as they are done.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from leafid.classifier import Classifier, Loaded
from leafid.console import echo
from leafid.errors import ImageError
from leafid.extras import optional
from leafid.output import Row, error_row, success_row

if TYPE_CHECKING:
    from leafid.evidence import RowEvidence

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif"}
)
DEFAULT_BATCH_SIZE = 16
# onnxruntime intra-op threads next to the decoding threads: these already keep every
# core busy, so more model threads would only compete with them for the same cores
# (``leafid bench --threads N`` measures it on a given machine).
DEFAULT_THREADS = 1


def default_decode_threads() -> int:
    """Decode threads used when none are given: the number of CPUs."""
    return os.cpu_count() or 1


def is_image_name(name: str) -> bool:
    """True if a file name has one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """Whether an entry is a folder; False for a symlink loop (is_dir() raises ELOOP)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _unreadable_folder(exc: OSError) -> None:
    """Say that a folder cannot be listed (its files get no rows)."""
    echo(f"leafid: cannot read folder {exc.filename}: {exc.strerror or exc}", err=True)


def _folder_images(folder: str, recursive: bool) -> list[str]:
    found: list[str] = []
    if not recursive:
        # Everything but folders, like os.walk's file list: a broken symlink, a symlink
        # loop or a FIFO named like an image gets an error row instead of vanishing.
        try:
            with os.scandir(folder) as entries:
                names = sorted(e.name for e in entries if not _is_dir(e))
        except OSError as exc:
            _unreadable_folder(exc)
            return []
        return [
            os.path.join(folder, n) for n in names if is_image_name(n) and not n.startswith(".")
        ]
    # followlinks=False: a symlink loop cannot make the walk go on for ever.
    for root, dirs, files in os.walk(folder, onerror=_unreadable_folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(root, n)
            for n in sorted(files)
            if is_image_name(n) and not n.startswith(".")
        ]
    return found


def find_images(paths: Sequence[str], recursive: bool = False) -> list[str]:
    """Expand command-line paths into the list of files to classify.

    Files named explicitly are kept whatever their extension, and so are paths that do
    not exist (they become error rows). Folders contribute the image files inside them
    (by extension, case-insensitive; hidden files skipped), sorted, and with
    ``recursive`` those of sub-folders too. A folder that cannot be listed is named on
    stderr and contributes nothing, and so is one without images (with a hint to use
    ``-r`` when its sub-folders have some). Duplicates are dropped, first one kept.

    Args:
        paths: Files and folders as given.
        recursive: Walk sub-folders.

    Returns:
        File paths in a deterministic order.
    """
    out: list[str] = []
    seen: set[str] = set()
    for path in paths:
        if os.path.isdir(path):
            found = _folder_images(path, recursive)
            if not found and not recursive and _folder_images(path, recursive=True):
                echo(
                    f"leafid: no image files in folder {path}, but its sub-folders have "
                    "some: add -r (--recursive) to look in them",
                    err=True,
                )
            elif not found:
                echo(f"leafid: no image files in folder {path}", err=True)
        else:
            found = [path]
        for f in found:
            if f not in seen:
                seen.add(f)
                out.append(f)
    return out


@dataclass
class Summary:
    """Counts of one run."""

    total: int = 0
    ok: int = 0
    unknown: int = 0
    failed: int = 0


Decoded = list[tuple[str, Loaded]]


def decoded_batches(
    classifier: Classifier, paths: Sequence[str], decode_threads: int, batch_size: int
) -> Generator[tuple[Decoded, bool], None, None]:
    """Decoded batches in input order, decoding ahead at most a couple of batches.

    Each batch comes with whether all decoding is finished by then (nothing pending).
    """
    read_ahead = 2 * batch_size + decode_threads
    pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="leafid-decode")
    pending: deque[tuple[str, Future[Loaded]]] = deque()
    todo = iter(paths)
    try:
        while True:
            while len(pending) < read_ahead:
                path = next(todo, None)
                if path is None:
                    break
                pending.append((path, pool.submit(classifier.try_load, path)))
            if not pending:
                return
            batch: Decoded = []
            while pending and len(batch) < batch_size:
                path, future = pending.popleft()
                batch.append((path, future.result()))
            yield batch, not pending
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _classify_batch(
    classifier: Classifier,
    batch: Decoded,
    top_k: int,
    summary: Summary,
    parts: int = 1,
    evidence: RowEvidence | None = None,
) -> list[Row]:
    """Rows of one decoded batch, in order; the good images go to the model together."""
    paths = [path for path, _ in batch]
    loaded = [item for _, item in batch]
    if evidence is None:
        answers = classifier.classify_loaded(loaded, top_k, parts)
        with_evidence: list[Row | None] = [None] * len(batch)
    else:
        answers, with_evidence = evidence.classify(classifier, paths, loaded, top_k)
    rows: list[Row] = []
    for path, answer, row in zip(paths, answers, with_evidence, strict=True):
        if isinstance(answer, ImageError):
            rows.append(error_row(path, answer, classifier.model_version))
            summary.failed += 1
        else:
            rows.append(row if row is not None else success_row(path, answer))
            summary.ok += 1
            summary.unknown += answer.unknown
    summary.total += len(rows)
    return rows


def classify_paths(
    classifier: Classifier,
    paths: Sequence[str],
    emit: Callable[[list[Row]], None],
    *,
    top_k: int = 5,
    decode_threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool | None = None,
    evidence: RowEvidence | None = None,
) -> Summary:
    """Classify files and hand their rows to ``emit`` one batch at a time, in input order.

    Args:
        classifier: The model.
        paths: Files to classify (see :func:`find_images`).
        emit: Called with each batch's rows; write and flush them there.
        top_k: Candidates per row.
        decode_threads: Decode threads (default: number of CPUs).
        batch_size: Images per model call.
        progress: Show a tqdm progress bar on stderr (default: when stderr is a
            terminal and tqdm is installed).
        evidence: Add each answer's evidence (reference photos, heat overlays) to its
            row, fetched in the same model call.

    Returns:
        Counts of the rows emitted.
    """
    decode_threads = decode_threads or default_decode_threads()
    summary = Summary()
    show = sys.stderr.isatty() if progress is None else progress
    bar = progress_bar(len(paths)) if show else None
    # closing(): on an error or Ctrl-C, pending decodes are cancelled at once.
    try:
        with closing(decoded_batches(classifier, paths, decode_threads, batch_size)) as batches:
            for batch, decoded_all in batches:
                # with decoding done, the decoding threads' cores are free for the model
                parts = decode_threads if decoded_all else 1
                rows = _classify_batch(classifier, batch, top_k, summary, parts, evidence)
                if bar is None:
                    emit(rows)
                else:
                    with type(bar).external_write_mode():  # clear the bar while rows print
                        emit(rows)
                    bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()
    return summary


def progress_bar(total: int) -> Any:
    """A tqdm progress bar on stderr for ``total`` images, or None without tqdm."""
    tqdm = optional("tqdm")  # the [progress] extra
    if tqdm is None:
        return None
    return tqdm.tqdm(total=total, unit="img", file=sys.stderr, leave=False)
