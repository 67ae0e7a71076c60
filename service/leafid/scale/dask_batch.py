"""``leafid classify`` on a Dask cluster: the same rows, computed by many workers.

The files are listed on the client (:func:`leafid.batch.find_images`, the CLI's rules),
cut into chunks, and each chunk runs :func:`leafid.batch.classify_paths` on a worker,
so every row is exactly what ``leafid classify`` writes for that file. Each worker
process loads the model once and keeps it (:func:`worker_classifier`).

Workers read the files and the model by path: on a multi-machine cluster both must be
at the same path on every machine (shared or copied storage).

Importing this module does not import Dask: the functions call ``client.map``,
``client.gather`` and ``client.run`` of the ``distributed.Client`` they are given, and
:func:`dask_client` imports ``dask.distributed`` when called (``pip install
'leafid[scale]'``). ``leafid dask`` is the command-line form.

Example::

    from dask.distributed import Client
    from leafid.scale.dask_batch import classify_folder_dask

    client = Client("tcp://scheduler:8786")
    rows = classify_folder_dask(["/data/photos"], client, "/models/leafid.onnx")
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from leafid.batch import DEFAULT_BATCH_SIZE, DEFAULT_THREADS, classify_paths, find_images
from leafid.classifier import Classifier
from leafid.errors import InvalidRequestError
from leafid.extras import require_extra
from leafid.output import Row

DEFAULT_CHUNK_SIZE = DEFAULT_BATCH_SIZE
"""Files per Dask task: one model batch, so that a small job is still spread over every worker."""
CONNECT_TIMEOUT_S = 10
"""Seconds to wait for a scheduler given by address."""

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
        decode_threads=decode_threads,
        batch_size=batch_size,
        progress=False,
    )
    return rows


def _check_sizes(chunk_size: int, batch_size: int, decode_threads: int) -> None:
    if min(chunk_size, batch_size, decode_threads) < 1:
        raise InvalidRequestError("chunk_size, batch_size and decode_threads must be >= 1")


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
    _check_sizes(chunk_size, batch_size, decode_threads)  # before listing a large tree
    files = find_images(paths, recursive)
    if not files:
        raise InvalidRequestError("no images found in " + ", ".join(paths))
    return classify_files_dask(
        files,
        client,
        model_path,
        top_k=top_k,
        chunk_size=chunk_size,
        batch_size=batch_size,
        threads=threads,
        decode_threads=decode_threads,
    )


def classify_files_dask(
    files: Sequence[str],
    client: Any,
    model_path: str | os.PathLike[str],
    *,
    top_k: int = 5,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int = DEFAULT_THREADS,
    decode_threads: int = 1,
) -> list[Row]:
    """Classify a file list already made by :func:`leafid.batch.find_images`, in chunks.

    Arguments as for :func:`classify_folder_dask`; returns one row per file, in order.
    """
    _check_sizes(chunk_size, batch_size, decode_threads)
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
def dask_client(processes: int, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` of ``scheduler``, else of a new local cluster.

    Args:
        processes: Worker processes of the local cluster (one thread each).
        scheduler: Address of a running scheduler, e.g. ``tcp://host:8786``.

    Raises:
        MissingExtraError: Dask is not installed.
        InvalidRequestError: The scheduler cannot be reached (within
            :data:`CONNECT_TIMEOUT_S`).
    """
    with require_extra("scale"):
        distributed: Any = importlib.import_module("dask.distributed")  # untyped package
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InvalidRequestError(f"cannot reach Dask scheduler {scheduler}: {exc}") from exc
        with client:
            yield client
        return
    with (
        distributed.LocalCluster(  # its HTTP server on any free port, not a fixed 8787
            n_workers=processes, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _load_model(model_path: str, threads: int) -> None:
    worker_classifier(model_path, threads)  # the classifier itself stays on the worker


def warm_workers(
    client: Any, model_path: str | os.PathLike[str], threads: int = DEFAULT_THREADS
) -> int:
    """Load the model on every worker now (as the first task would); return the count."""
    return len(client.run(_load_model, os.path.abspath(model_path), threads))
