"""``leafid classify`` on a Dask cluster: the same rows, computed by many workers.

The files are listed on the client (:func:`leafid.batch.find_images`, the CLI's rules),
cut into chunks, and each chunk runs :func:`leafid.batch.classify_paths` on a worker,
so every row is exactly what ``leafid classify`` writes for that file. Each worker
process loads the model once and keeps it (:func:`worker_classifier`).

Workers read the files and the model by path: on a multi-machine cluster both must be
at the same path on every machine (shared or copied storage).

This module does not import Dask: it only calls ``client.map`` and ``client.gather`` of
the ``distributed.Client`` it is given (``pip install 'leafid[scale]'``).

Example::

    from dask.distributed import Client
    from leafid.scale.dask_batch import classify_folder_dask

    client = Client("tcp://scheduler:8786")
    rows = classify_folder_dask(["/data/photos"], client, "/models/leafid.onnx")

``python -m leafid.scale.dask_batch PATH... --processes N`` does the same on a local
cluster of N worker processes (or ``--scheduler ADDRESS``; ``--processes 0``: no Dask,
the ``classify`` pipeline in this process) and reports images/s; ``--synthetic N``
classifies N generated 12 MP photos instead of PATHs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from leafid.batch import DEFAULT_BATCH_SIZE, DEFAULT_THREADS, classify_paths, find_images
from leafid.classifier import Classifier
from leafid.console import echo
from leafid.errors import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    InvalidRequestError,
    LeafidError,
    MissingExtraError,
)
from leafid.output import Row, Writer
from leafid.paths import default_model_path

DEFAULT_CHUNK_SIZE = 64

_classifiers: dict[tuple[str, int], Classifier] = {}
_classifiers_lock = threading.Lock()


def worker_classifier(model_path: str, threads: int = DEFAULT_THREADS) -> Classifier:
    """The classifier of this process for ``model_path``, loaded on first use only.

    Args:
        model_path: The ONNX model file.
        threads: onnxruntime threads.
    """
    key = (model_path, threads)
    with _classifiers_lock:
        classifier = _classifiers.get(key)
        if classifier is None:
            classifier = _classifiers[key] = Classifier(model_path, threads=threads)
    return classifier


def classify_chunk(
    paths: Sequence[str],
    model_path: str,
    *,
    top_k: int = 5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int = DEFAULT_THREADS,
    decode_threads: int = 1,
) -> list[Row]:
    """Classify files with this process's cached classifier; the task a worker runs.

    Returns:
        One row per file, in order (error rows for files that could not be classified).
    """
    rows: list[Row] = []
    classify_paths(
        worker_classifier(model_path, threads),
        paths,
        rows.extend,
        top_k=top_k,
        workers=decode_threads,
        batch_size=batch_size,
        progress=False,
    )
    return rows


def classify_folder_dask(
    paths: Sequence[str],
    client: Any,
    model_path: str | os.PathLike[str],
    *,
    recursive: bool = False,
    top_k: int = 5,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int = DEFAULT_THREADS,
    decode_threads: int = 1,
) -> list[Row]:
    """Classify files and folders on a Dask cluster; the rows of ``leafid classify``.

    Args:
        paths: Files and folders, as given to ``leafid classify``.
        client: A ``dask.distributed.Client``.
        model_path: The ONNX model, at this path on every worker.
        recursive: Look in sub-folders too.
        top_k: Candidates per row.
        chunk_size: Files per task.
        batch_size: Images per model call within a task.
        threads: onnxruntime threads per worker.
        decode_threads: Decoding threads per task.

    Returns:
        One row per file, in the order ``leafid classify`` would write them.

    Raises:
        InvalidRequestError: No images found, or a size option below 1.
    """
    if min(chunk_size, batch_size, decode_threads) < 1:
        raise InvalidRequestError("chunk_size, batch_size and decode_threads must be >= 1")
    files = find_images(paths, recursive)
    if not files:
        raise InvalidRequestError("no images found in " + ", ".join(paths))
    chunks = [files[i : i + chunk_size] for i in range(0, len(files), chunk_size)]
    futures = client.map(
        classify_chunk,
        chunks,
        model_path=os.path.abspath(model_path),
        top_k=top_k,
        batch_size=batch_size,
        threads=threads,
        decode_threads=decode_threads,
        pure=False,
    )
    return [row for rows in client.gather(futures) for row in rows]


@contextmanager
def _client(processes: int, scheduler: str | None) -> Iterator[Any]:
    """A Dask client of ``scheduler``, else of a local cluster of ``processes`` workers."""
    try:
        distributed: Any = importlib.import_module("dask.distributed")  # untyped package
    except ImportError as exc:
        raise MissingExtraError("scale", exc.name or "distributed") from exc
    if scheduler:
        with distributed.Client(scheduler) as client:
            yield client
        return
    with (
        distributed.LocalCluster(
            n_workers=processes, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m leafid.scale.dask_batch",
        description="Classify files and folders on a Dask cluster (rows as `leafid classify "
        "--format jsonl`) and report images/s.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files and folders")
    parser.add_argument("-r", "--recursive", action="store_true", help="look in sub-folders")
    parser.add_argument("--model", help="ONNX model file (default: the shipped model)")
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        metavar="N",
        help="worker processes of a local cluster (2); 0: no Dask, this process alone",
    )
    parser.add_argument("--scheduler", metavar="ADDRESS", help="use this Dask scheduler")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, metavar="N")
    parser.add_argument(
        "--synthetic", type=int, default=0, metavar="N", help="classify N generated 12 MP photos"
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write the rows as JSON lines")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.processes < 0 or args.synthetic < 0:
        raise InvalidRequestError("--processes and --synthetic must be >= 0")
    if not args.paths and not args.synthetic:
        raise InvalidRequestError("give image files or folders, or --synthetic N")
    model = os.path.abspath(args.model or default_model_path())
    classifier = Classifier(model)  # a missing or invalid model fails here, before Dask
    with ExitStack() as stack:
        paths = list(args.paths)
        if args.synthetic:
            from leafid.bench import SIZES, write_photos

            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="leafid-")))
            echo(f"writing {args.synthetic} synthetic 12 MP photos (not timed)...", err=True)
            write_photos(folder, args.synthetic, SIZES["12mp"])
            paths.append(str(folder))
        if args.processes == 0 and not args.scheduler:
            how = "the classify pipeline in this process"
            start = time.perf_counter()
            rows: list[Row] = []
            classify_paths(classifier, find_images(paths, args.recursive), rows.extend)
        else:
            started = time.perf_counter()
            client = stack.enter_context(_client(args.processes, args.scheduler))
            how = (
                f"Dask scheduler {args.scheduler}"
                if args.scheduler
                else f"a local Dask cluster of {args.processes} worker processes"
            )
            how += f" (started in {time.perf_counter() - started:.1f} s, not counted)"
            start = time.perf_counter()
            rows = classify_folder_dask(
                paths, client, model, recursive=args.recursive, chunk_size=args.chunk_size
            )
        seconds = time.perf_counter() - start
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            Writer(f, "jsonl", top_k=5, model_version=classifier.model_version).write(rows)
    failed = sum("error" in row for row in rows)
    echo(
        f"{len(rows)} files ({failed} failed) in {seconds:.1f} s: "
        f"{len(rows) / seconds:.1f} images/s with {how}"
    )
    return EXIT_SOME_FAILED if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m leafid.scale.dask_batch``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except LeafidError as exc:
        echo(f"leafid: error: {exc}", err=True)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
