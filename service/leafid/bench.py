"""Throughput benchmark: ``leafid bench`` or ``python -m leafid.bench``.

Writes synthetic photo-like JPEGs (12 MP and 1 MP) into a temporary folder, then
measures images/s of the same pipeline ``leafid classify`` runs (read, decode,
preprocess, batched inference, JSON rows), and of the model alone on preprocessed
arrays at batch 1 and 16. Generating the images is not timed.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from leafid.batch import DEFAULT_BATCH_SIZE, DEFAULT_THREADS, classify_paths, default_workers
from leafid.classifier import Classifier
from leafid.console import echo
from leafid.errors import EXIT_OK, EXIT_SOME_FAILED, InvalidRequestError
from leafid.images import ImageLimits, read_bytes
from leafid.output import Row, Writer

SIZES = {"12mp": (4000, 3000), "1mp": (1152, 864)}
DISTINCT_PHOTOS = 4  # different images per size; the rest are copies under other names


def synthetic_photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG (quality 90): smooth colour areas, texture and sensor-like noise.

    At 4000x3000 this is about 3-4 MB, like a phone photo.
    """
    rng = np.random.default_rng(seed)
    colours = rng.integers(20, 235, (6, 8, 3), dtype=np.uint8)
    low = Image.fromarray(colours).resize((width, height), Image.Resampling.BICUBIC)
    cells = rng.integers(0, 255, (max(height // 40, 2), max(width // 40, 2)), dtype=np.uint8)
    mid = Image.fromarray(cells).resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(low, dtype=np.int16) + (np.asarray(mid, dtype=np.int16)[..., None] - 128) // 3
    arr += rng.integers(-10, 11, (height, width, 1), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_photos(folder: Path, n: int, size: tuple[int, int]) -> list[str]:
    """Write ``n`` synthetic JPEGs of ``size`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    distinct = [synthetic_photo(*size, seed=s) for s in range(min(n, DISTINCT_PHOTOS))]
    paths = []
    for i in range(n):
        path = folder / f"photo_{i:05d}.jpg"
        path.write_bytes(distinct[i % len(distinct)])
        paths.append(str(path))
    return paths


@dataclass
class Result:
    """One line of the benchmark table."""

    case: str
    images: int
    batch_size: int
    workers: int | None
    rates: list[float]

    @property
    def median(self) -> float:
        """Median images/s over the repeats."""
        return statistics.median(self.rates)


def time_pipeline(
    classifier: Classifier, paths: Sequence[str], workers: int, batch_size: int
) -> float:
    """Images/s of the ``classify`` pipeline over ``paths``, rows written as JSON lines."""
    with open(os.devnull, "w", encoding="utf-8") as sink:
        writer = Writer(sink, "jsonl", top_k=5, model_version=classifier.model_version)

        def emit(rows: list[Row]) -> None:
            writer.write(rows)

        start = time.perf_counter()
        summary = classify_paths(
            classifier, paths, emit, workers=workers, batch_size=batch_size, progress=False
        )
        elapsed = time.perf_counter() - start
    if summary.failed:
        raise RuntimeError(f"{summary.failed} benchmark images failed to classify")
    return len(paths) / elapsed


def time_model(classifier: Classifier, sample: np.ndarray, batch_size: int, images: int) -> float:
    """Images/s of the model alone on preprocessed arrays, after one warm-up call."""
    batch = np.stack([sample] * batch_size)
    classifier.classify_arrays(batch)
    calls = max(1, images // batch_size)
    start = time.perf_counter()
    for _ in range(calls):
        classifier.classify_arrays(batch)
    return calls * batch_size / (time.perf_counter() - start)


def run_bench(
    classifier: Classifier,
    folder: Path,
    *,
    n12: int,
    n1: int,
    workers: int,
    batch_size: int,
    repeat: int,
) -> list[Result]:
    """Generate the photos in ``folder`` and run every measurement ``repeat`` times."""
    results = []
    sample: np.ndarray | None = None
    for name, n in (("12mp", n12), ("1mp", n1)):
        if n < 1:
            continue
        paths = write_photos(folder / name, n, SIZES[name])
        if sample is None:
            sample = classifier.load(read_bytes(paths[0], classifier.limits))
        time_pipeline(classifier, paths[: min(n, batch_size)], workers, batch_size)  # warm-up
        rates = [time_pipeline(classifier, paths, workers, batch_size) for _ in range(repeat)]
        results.append(Result(f"end-to-end {name} JPEG", n, batch_size, workers, rates))
    if sample is None:
        sample = classifier.prepare(Image.new("RGB", (640, 480), (60, 140, 50)))
    n_model = max(n12, n1, 64)
    for bs in (1, 16):
        rates = [time_model(classifier, sample, bs, n_model) for _ in range(repeat)]
        results.append(Result("model only", n_model, bs, None, rates))
    return results


def format_table(results: Sequence[Result]) -> list[str]:
    """The benchmark table, one string per line."""
    lines = [f"{'case':<24} {'images':>6} {'batch':>5} {'workers':>7} {'img/s':>8} {'best':>8}"]
    for r in results:
        workers = "-" if r.workers is None else str(r.workers)
        lines.append(
            f"{r.case:<24} {r.images:>6} {r.batch_size:>5} {workers:>7} "
            f"{r.median:>8.1f} {max(r.rates):>8.1f}"
        )
    return lines


def machine_info(classifier: Classifier, threads: int) -> list[str]:
    """Lines describing the machine and software the figures come from."""
    import PIL

    return [
        f"cpus: {os.cpu_count()}  platform: {platform.platform()}",
        f"python {platform.python_version()}  onnxruntime {ort.__version__}  "
        f"pillow {PIL.__version__}  numpy {np.__version__}",
        f"model: {classifier.spec.model_name} {classifier.model_version} ({classifier.path}), "
        f"onnxruntime threads: {threads or 'automatic'}",
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser``."""
    parser.add_argument("--model", metavar="M", help="ONNX model file")
    parser.add_argument("--n12", type=int, default=64, metavar="N", help="12 MP photos (64)")
    parser.add_argument("--n1", type=int, default=64, metavar="N", help="1 MP photos (64)")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="decoding threads (CPUs)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="B", help="batch size"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"onnxruntime threads, 0 = automatic ({DEFAULT_THREADS})",
    )
    parser.add_argument("--repeat", type=int, default=3, metavar="R", help="runs per case (3)")


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``leafid bench``: measure and print the table."""
    if args.batch_size < 1 or (args.workers is not None and args.workers < 1) or args.threads < 0:
        raise InvalidRequestError("--batch-size and --workers must be >= 1, --threads >= 0")
    workers = args.workers or default_workers()
    classifier = Classifier(args.model, threads=args.threads, limits=ImageLimits())
    with tempfile.TemporaryDirectory(prefix="leafid-bench-") as tmp:
        echo("leafid bench: writing synthetic photos (not timed)...", err=True)
        results = run_bench(
            classifier,
            Path(tmp),
            n12=args.n12,
            n1=args.n1,
            workers=workers,
            batch_size=args.batch_size,
            repeat=max(1, args.repeat),
        )
    for line in machine_info(classifier, args.threads):
        echo(line)
    echo()
    for line in format_table(results):
        echo(line)
    echo("img/s: median of the repeats; best: the fastest repeat")
    return EXIT_OK if results else EXIT_SOME_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m leafid.bench``: the same as ``leafid bench``."""
    from leafid.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
