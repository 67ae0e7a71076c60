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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from leafid.argtypes import int_at_least
from leafid.batch import DEFAULT_BATCH_SIZE, DEFAULT_THREADS, classify_paths, default_decode_threads
from leafid.classifier import Classifier
from leafid.console import echo
from leafid.errors import EXIT_OK, MissingExtraError
from leafid.extras import require_extra
from leafid.images import ImageLimits, read_bytes
from leafid.options import add_decode_threads_option, add_model_option
from leafid.output import Writer

SIZES = {"12mp": (4000, 3000), "1mp": (1152, 864)}
MODEL_BATCH_SIZES = (1, 16)
"""Batch sizes of the model-only figures."""
DISTINCT_PHOTOS = 4  # different images per size; the rest are copies under other names
# ``--compare`` (torch next to leafid) comes from this entry-point group, so this module
# never imports torch or leafid_train: training depends on the service, not back.
COMPARE_GROUP = "leafid.bench"


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
    """One line of the benchmark table: images/s and CPU use of each repeat."""

    case: str
    images: int
    batch_size: int
    decode_threads: int | None
    threads: int
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median images/s over the repeats."""
        return statistics.median(self.rates)

    def measure(self, run: Callable[[], int]) -> None:
        """Time ``run`` (which returns the number of images it did) once."""
        t0 = os.times()
        start = time.perf_counter()
        n = run()
        elapsed = time.perf_counter() - start
        t1 = os.times()
        cpu_s = t1.user + t1.system - t0.user - t0.system
        self.rates.append(n / elapsed)
        self.cpu.append(cpu_s / elapsed)
        self.cpu_ms.append(1000 * cpu_s / n)


def time_pipeline(
    classifier: Classifier, paths: Sequence[str], decode_threads: int, batch_size: int
) -> int:
    """Run the ``classify`` pipeline over ``paths``, rows written as JSON lines; return n."""
    with open(os.devnull, "w", encoding="utf-8") as sink:
        writer = Writer(sink, "jsonl", top_k=5, model_version=classifier.model_version)
        summary = classify_paths(
            classifier,
            paths,
            writer.write,
            decode_threads=decode_threads,
            batch_size=batch_size,
            progress=False,
        )
    if summary.failed:
        raise RuntimeError(f"{summary.failed} benchmark images failed to classify")
    return summary.total


def time_model(classifier: Classifier, batch: np.ndarray, images: int) -> int:
    """Run the model alone on a preprocessed batch, about ``images`` images; return n."""
    calls = max(1, images // len(batch))
    for _ in range(calls):
        classifier.classify_arrays(batch)
    return calls * len(batch)


def write_photo_sets(
    folder: Path, counts: Mapping[str, int], sizes: Mapping[str, tuple[int, int]] = SIZES
) -> dict[str, list[str]]:
    """Write the synthetic photos of each size into ``folder/<size name>`` (not timed).

    Args:
        folder: Empty folder for the photos.
        counts: Photos per size name, e.g. ``{"12mp": 64, "1mp": 64}``; 0 skips a size.
        sizes: (width, height) per size name.

    Returns:
        The photo paths per size name, for the sizes with at least one photo.
    """
    return {
        name: write_photos(folder / name, n, sizes[name]) for name, n in counts.items() if n > 0
    }


Case = tuple[Result, Callable[[], int]]
"""A row still to measure, and the run that :meth:`Result.measure` times for it."""


def measure_rounds(cases: Sequence[Case], repeat: int) -> list[Result]:
    """Measure every case once per round, ``repeat`` rounds; return their results.

    Rows that are compared with each other are measured in turn, so a slow spell of a
    shared machine falls on all of them alike, not on whichever row ran during it.
    """
    for _ in range(repeat):
        for result, run in cases:
            result.measure(run)
    return [result for result, _ in cases]


def pipeline_case(
    classifier: Classifier, name: str, paths: Sequence[str], decode_threads: int, batch_size: int
) -> Case:
    """The ``classify`` pipeline on ``paths`` as a case to measure (warmed up here)."""
    time_pipeline(classifier, paths[: min(len(paths), batch_size)], decode_threads, batch_size)
    result = Result(
        f"end-to-end {name} JPEG", len(paths), batch_size, decode_threads, _threads(classifier)
    )
    return result, partial(time_pipeline, classifier, paths, decode_threads, batch_size)


def model_case(classifier: Classifier, sample: np.ndarray, images: int, batch_size: int) -> Case:
    """The model alone on copies of one preprocessed ``sample`` (warmed up here)."""
    batch = np.stack([sample] * batch_size)
    classifier.classify_arrays(batch)  # warm-up
    result = Result("model only", images, batch_size, None, _threads(classifier))
    return result, partial(time_model, classifier, batch, images)


def first_sample(classifier: Classifier, photos: Mapping[str, Sequence[str]]) -> np.ndarray:
    """The preprocessed first photo, or a plain generated image when there are none."""
    for paths in photos.values():
        return classifier.load(read_bytes(paths[0], classifier.limits))
    return classifier.prepare(Image.new("RGB", (640, 480), (60, 140, 50)))


def run_bench(
    pipeline_classifier: Classifier,
    model_classifier: Classifier,
    photos: Mapping[str, Sequence[str]],
    *,
    decode_threads: int,
    batch_size: int,
    repeat: int,
) -> list[Result]:
    """Run every measurement ``repeat`` times on photos from :func:`write_photo_sets`.

    Args:
        pipeline_classifier: Used end-to-end, next to the decoding threads.
        model_classifier: Used for the model-only figures (may have more threads).
        photos: Photo paths per size name.
        decode_threads: Decoding threads end-to-end.
        batch_size: Images per model call end-to-end.
        repeat: Runs per case.
    """
    clf = pipeline_classifier
    results: list[Result] = []
    for name, paths in photos.items():
        results += measure_rounds(
            [pipeline_case(clf, name, paths, decode_threads, batch_size)], repeat
        )
    n_model = max([len(p) for p in photos.values()] + [64])
    sample = first_sample(clf, photos)
    for bs in MODEL_BATCH_SIZES:
        results += measure_rounds([model_case(model_classifier, sample, n_model, bs)], repeat)
    return results


def _threads(classifier: Classifier) -> int:
    return int(classifier.session.get_session_options().intra_op_num_threads)


def format_table(results: Sequence[Result]) -> list[str]:
    """The benchmark table, one string per line."""
    lines = [
        f"{'case':<20} {'images':>6} {'batch':>5} {'dec_thr':>7} {'ort_thr':>7} "
        f"{'img/s':>7} {'best':>7} {'cpu%':>5} {'cpu_ms/img':>10}"
    ]
    for r in results:
        decoders = "-" if r.decode_threads is None else str(r.decode_threads)
        threads = str(r.threads) if r.threads else "auto"
        lines.append(
            f"{r.case:<20} {r.images:>6} {r.batch_size:>5} {decoders:>7} {threads:>7} "
            f"{r.median:>7.1f} {max(r.rates):>7.1f} {statistics.median(r.cpu) * 100:>5.0f} "
            f"{statistics.median(r.cpu_ms):>10.1f}"
        )
    return lines


def machine_info(classifier: Classifier) -> list[str]:
    """Lines describing the machine and software the figures come from."""
    import PIL

    return [
        f"cpus: {os.cpu_count()}  platform: {platform.platform()}",
        f"python {platform.python_version()}  onnxruntime {ort.__version__}  "
        f"pillow {PIL.__version__}  numpy {np.__version__}",
        f"model: {classifier.spec.model_name} {classifier.model_version} ({classifier.path})",
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser``."""
    add_model_option(parser)
    parser.add_argument(
        "--n12", type=int_at_least(0), default=64, metavar="N", help="12 MP photos (64)"
    )
    parser.add_argument(
        "--n1", type=int_at_least(0), default=64, metavar="N", help="1 MP photos (64)"
    )
    add_decode_threads_option(parser, default_decode_threads())
    parser.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=DEFAULT_BATCH_SIZE,
        metavar="B",
        help="batch size",
    )
    parser.add_argument(
        "--threads",
        type=int_at_least(0),
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"onnxruntime threads, 0 = automatic ({DEFAULT_THREADS})",
    )
    parser.add_argument(
        "--model-threads",
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="onnxruntime threads of the model-only figures, 0 = automatic (0); idle "
        "threads spin there, as the model has the cores to itself",
    )
    parser.add_argument(
        "--repeat", type=int_at_least(1), default=3, metavar="R", help="runs per case (3)"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also measure the usual torch + torchvision approach on the same photos and "
        "print leafid's speed-up over it (needs the [train] extra)",
    )
    parser.add_argument(
        "--int8",
        metavar="M",
        help="with --compare: int8 model for end-to-end and model-only rows (default: "
        "<model>.int8.onnx next to the model, when it exists)",
    )


def load_compare() -> Callable[[argparse.Namespace], int]:
    """The ``--compare`` handler from the ``leafid.bench`` entry-point group.

    Raises:
        MissingExtraError: The handler or torch is not installed.
    """
    found = entry_points(group=COMPARE_GROUP, name="compare")
    if not found:
        raise MissingExtraError("train", "torch")
    with require_extra("train"):
        handler: Callable[[argparse.Namespace], int] = next(iter(found)).load()
    return handler


COLUMNS_NOTE = (
    "dec_thr: decoding threads; ort_thr: onnxruntime threads; "
    "img/s: median of the repeats; best: the fastest repeat; cpu%: CPU time used / wall "
    f"time (at most {100 * (os.cpu_count() or 1)}%; less means the machine was shared); "
    "cpu_ms/img: CPU time per image, all threads (medians); model only: idle onnxruntime "
    "threads spin-wait (Classifier(spin=True)), end to end they do not"
)


@contextmanager
def synthetic_photos(args: argparse.Namespace) -> Iterator[dict[str, list[str]]]:
    """``--n12`` and ``--n1`` photos in a temporary folder, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="leafid-bench-") as tmp:
        echo("leafid bench: writing synthetic photos (not timed)...", err=True)
        yield write_photo_sets(Path(tmp), {"12mp": args.n12, "1mp": args.n1})


def make_classifiers(
    args: argparse.Namespace, model: str | os.PathLike[str] | None = None
) -> tuple[Classifier, Classifier]:
    """The end-to-end classifier (``--threads``) and the model-only one (``--model-threads``).

    The model-only one lets idle onnxruntime threads spin: it has the cores to itself,
    while end to end they decode images.

    Args:
        args: The bench options.
        model: Another model file than ``--model``.
    """
    path = args.model if model is None else model
    classifier = Classifier(path, threads=args.threads, limits=ImageLimits())
    return classifier, Classifier(path, threads=args.model_threads, spin=True)


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``leafid bench``: measure and print the table."""
    if args.compare:
        return load_compare()(args)
    decode_threads = args.decode_threads or default_decode_threads()
    classifier, model_classifier = make_classifiers(args)
    with synthetic_photos(args) as photos:
        results = run_bench(
            classifier,
            model_classifier,
            photos,
            decode_threads=decode_threads,
            batch_size=args.batch_size,
            repeat=args.repeat,
        )
    for line in machine_info(classifier):
        echo(line)
    echo()
    for line in format_table(results):
        echo(line)
    echo(COLUMNS_NOTE)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m leafid.bench``: the same as ``leafid bench``."""
    from leafid.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
