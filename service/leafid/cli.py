"""The ``leafid`` command line: classify, dask, identify, info, index, bench, serve, loadtest.

Other packages add subcommands through the ``leafid.commands`` entry-point group: each
entry point is a ``register(subparsers) -> None`` function that adds parsers whose
``func`` default is a handler ``handler(args) -> int``. Errors are turned into exit
codes in one place, :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from leafid import __version__, bench, wording
from leafid.argtypes import fraction, int_at_least
from leafid.batch import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_THREADS,
    classify_paths,
    default_decode_threads,
    find_images,
    is_image_name,
)
from leafid.classifier import Classifier
from leafid.console import echo
from leafid.errors import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    ImageError,
    InvalidRequestError,
    LeafidError,
    MissingExtraError,
    ModelError,
    ModelNotFoundError,
)
from leafid.evidence import Evidence, HeatmapFolder, RowEvidence
from leafid.extras import not_installed
from leafid.flora import flora_of_names, read_only
from leafid.http import commands as http_commands
from leafid.images import ImageLimits
from leafid.options import (
    add_decode_threads_option,
    add_explain_option,
    add_model_option,
    add_recursive_option,
    add_references_options,
)
from leafid.output import (
    FORMATS,
    RESUMABLE_FORMATS,
    Row,
    Writer,
    display_path,
    error_row,
    format_from_suffix,
    read_done_paths,
)
from leafid.paths import MODEL_ENV
from leafid.references import ReferenceIndex, build_index
from leafid.results import CAVEAT, error_item
from leafid.scale import dask_batch

log = logging.getLogger(__name__)

PLUGIN_GROUP = "leafid.commands"
EXIT_INTERRUPTED = 130

EPILOG = """\
exit status:
  0    every file was classified (an "unknown" answer counts as classified)
  1    some files could not be classified (their rows carry an "error"); the
       other rows are complete
  2    nothing was done: bad arguments, no images found, model missing or
       invalid, or an optional extra that is not installed
  130  interrupted (Ctrl-C); rows already written are kept

Every answer is a visual identification only, not a quality or safety test.
"""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--threshold``, ``--only``, ``--threads``, ``--max-*`` limits.

    ``--only`` is the flora filter (:mod:`leafid.flora`).
    """
    limits = ImageLimits()
    add_model_option(parser)
    parser.add_argument(
        "--only",
        metavar="SLUGS|FILE",
        help="answer among these classes only (the flora filter): comma-separated class "
        "slugs or genus names, or a file with one per line; scores are renormalised over "
        "them and the unknown rule still applies",
    )
    parser.add_argument(
        "--threshold",
        type=fraction,
        metavar="T",
        help="unknown threshold in [0, 1] (default: the model's calibrated one)",
    )
    parser.add_argument(
        "--threads",
        type=int_at_least(0),
        default=DEFAULT_THREADS,
        metavar="N",
        help=f"onnxruntime threads, 0 = automatic (default: {DEFAULT_THREADS})",
    )
    parser.add_argument(
        "--max-bytes",
        type=int_at_least(1),
        default=limits.max_bytes,
        metavar="B",
        help=f"largest accepted file size (default: {limits.max_bytes})",
    )
    parser.add_argument(
        "--max-pixels",
        type=int_at_least(1),
        default=limits.max_pixels,
        metavar="P",
        help=f"largest accepted width*height (default: {limits.max_pixels})",
    )


def make_classifier(args: argparse.Namespace) -> Classifier:
    """The classifier the options of :func:`add_model_arguments` describe."""
    classifier = Classifier(
        args.model,
        threads=args.threads,
        threshold=args.threshold,
        limits=ImageLimits(max_bytes=args.max_bytes, max_pixels=args.max_pixels),
    )
    if args.only is None:
        return classifier
    return classifier.with_flora(flora_of_names(classifier.spec, read_only(args.only)))


def cap_top_k(top_k: int, classifier: Classifier) -> int:
    """``--top-k``, at most the model's number of classes (a note on stderr when more).

    More candidates than classes would only add empty CSV columns.
    """
    n = len(classifier.spec.classes)
    if top_k <= n:
        return top_k
    echo(f"leafid: --top-k {top_k} is more than the model's {n} classes; using {n}", err=True)
    return n


def _default_format(output: str | None) -> str:
    if output:
        return format_from_suffix(output)
    return "table" if sys.stdout.isatty() else "jsonl"


def check_output_name(path: str) -> None:
    """Refuse an ``-o`` file named like a photo (e.g. ``-o photos/*.jpg`` would destroy one).

    Raises:
        InvalidRequestError: The name looks like an image.
    """
    if is_image_name(path):
        raise InvalidRequestError(f"-o {path} is named like an image; not overwriting it")


def open_output(path: str, append: bool = False) -> TextIO:
    """Open a rows file for writing (``-o``), refusing a name that looks like a photo.

    Raises:
        InvalidRequestError: The name looks like an image, or the file cannot be opened.
    """
    check_output_name(path)
    try:
        return open(path, "a" if append else "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise InvalidRequestError(f"cannot write {path}: {exc.strerror or exc}") from exc


def make_row_evidence(args: argparse.Namespace, classifier: Classifier) -> RowEvidence | None:
    """The evidence ``--references``/``--similar``/``--explain`` ask for (None: none).

    Raises:
        InvalidReferencesError: The index cannot be read or was made with another model.
        MissingOutputError: The model predates an output the evidence needs.
    """
    if args.references is None and args.explain is None:
        return None
    references = ReferenceIndex.load(args.references) if args.references else None
    evidence = Evidence(references, args.similar, explain=args.explain is not None)
    evidence.check(classifier)
    heatmaps = HeatmapFolder(Path(args.explain)) if args.explain is not None else None
    return RowEvidence(evidence, heatmaps)


# --- classify ---------------------------------------------------------------------------


def cmd_classify(args: argparse.Namespace) -> int:
    """Classify every photo independently; one row per file."""
    fmt = args.format or _default_format(args.output)
    if args.output:
        check_output_name(args.output)  # before any work
    if args.resume:
        if not args.output:
            raise InvalidRequestError("--resume needs an output file (-o FILE)")
        if fmt not in RESUMABLE_FORMATS:
            raise InvalidRequestError(
                f"--resume works with --format {' or '.join(RESUMABLE_FORMATS)} only, not {fmt}"
            )
    if args.references and fmt == "csv":
        raise InvalidRequestError("--references adds lists CSV has no columns for: use jsonl")
    paths = find_images(args.paths, args.recursive)
    if not paths:
        raise InvalidRequestError("no images found in " + ", ".join(args.paths))
    classifier = make_classifier(args)
    args.top_k = cap_top_k(args.top_k, classifier)
    evidence = make_row_evidence(args, classifier)

    append = False
    failed_before = 0  # files of this run whose error rows an earlier run wrote
    if args.resume:
        done = read_done_paths(args.output, fmt, args.top_k)
        append = os.path.exists(args.output) and os.path.getsize(args.output) > 0
        todo = [p for p in paths if display_path(p) not in done]
        failed_before = sum(done[d] for p in paths if (d := display_path(p)) in done)
        if done:
            echo(
                f"leafid: resuming: {len(paths) - len(todo)} of {len(paths)} files "
                f"already in {args.output} ({failed_before} of them failed)",
                err=True,
            )
        if not todo:
            echo("leafid: nothing left to do", err=True)
            return EXIT_SOME_FAILED if failed_before else EXIT_OK
        paths = todo

    file = open_output(args.output, append) if args.output else None
    stream = file if file is not None else sys.stdout
    writer = Writer(
        stream,
        fmt,
        top_k=args.top_k,
        model_version=classifier.model_version,
        write_header=not append,
        path_width=max(len(p) for p in paths),
    )

    def emit(rows: list[Row]) -> None:
        writer.write(rows)
        if file is not None:
            os.fsync(file.fileno())

    try:
        summary = classify_paths(
            classifier,
            paths,
            emit,
            top_k=args.top_k,
            decode_threads=args.decode_threads,
            batch_size=args.batch_size,
            evidence=evidence,
        )
    finally:
        writer.close()
        if file is not None:
            os.fsync(file.fileno())
            file.close()
    echo(
        f"leafid: {summary.ok} classified ({summary.unknown} unknown), {summary.failed} failed",
        err=True,
    )
    return EXIT_SOME_FAILED if summary.failed or failed_before else EXIT_OK


# --- dask -------------------------------------------------------------------------------


def cmd_dask(args: argparse.Namespace) -> int:
    """Classify on a Dask cluster (rows as ``classify --format jsonl``) and report images/s."""
    if not args.paths and not args.synthetic:
        raise InvalidRequestError("give image files or folders, or --synthetic N")
    if args.output:
        check_output_name(args.output)
        out_dir = os.path.dirname(os.path.abspath(args.output))
        if not os.access(out_dir, os.W_OK):
            raise InvalidRequestError(f"cannot write {args.output}: no writable folder {out_dir}")
    classifier = Classifier(args.model)  # a missing or invalid model fails before Dask starts
    args.top_k = cap_top_k(args.top_k, classifier)
    with contextlib.ExitStack() as stack:
        paths = list(args.paths)
        if args.synthetic:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="leafid-dask-"))
            echo(f"leafid: writing {args.synthetic} synthetic 12 MP photos (not timed)", err=True)
            bench.write_photos(Path(folder), args.synthetic, bench.SIZES["12mp"])
            paths.append(folder)
        files = find_images(paths, args.recursive)
        if not files:
            raise InvalidRequestError("no images found in " + ", ".join(args.paths))
        rows: list[Row] = []
        if args.processes == 0 and not args.scheduler:
            how = "in this process (the classify pipeline, no Dask)"
            start = time.perf_counter()
            classify_paths(classifier, files, rows.extend, top_k=args.top_k)
        else:
            started = time.perf_counter()
            client = stack.enter_context(dask_batch.dask_client(args.processes, args.scheduler))
            workers = dask_batch.warm_workers(client, classifier.path)
            if workers == 0:  # tasks would wait for ever
                raise InvalidRequestError(f"Dask scheduler {args.scheduler} has no workers")
            how = (
                f"{workers} Dask worker(s) of {args.scheduler or 'a local cluster'} (start-up "
                f"and model loading {time.perf_counter() - started:.1f} s, not counted)"
            )
            start = time.perf_counter()
            rows = dask_batch.classify_files_dask(
                files, client, classifier.path, top_k=args.top_k, chunk_size=args.chunk_size
            )
        seconds = time.perf_counter() - start
    if args.output:  # opened only now: a run that fails earlier leaves an old file as it was
        with open_output(args.output) as file:
            Writer(file, "jsonl", top_k=args.top_k, model_version=classifier.model_version).write(
                rows
            )
    failed = sum("error" in row for row in rows)
    echo(
        f"leafid: {len(rows)} files ({failed} failed) in {seconds:.2f} s: "
        f"{len(rows) / seconds:.1f} images/s, {how}",
        err=True,
    )
    return EXIT_SOME_FAILED if failed else EXIT_OK


# --- identify ---------------------------------------------------------------------------


def cmd_identify(args: argparse.Namespace) -> int:
    """Fuse several photos of one plant into one answer (:meth:`Classifier.identify_loaded`).

    A folder stands for the image files in it (:func:`find_images`). The answer comes
    from the photos that could be used; each one that could not is named on stderr and
    listed in ``errors``. When none could be used, the result carries the first
    photo's error instead of an answer.
    """
    fmt = args.format or _default_format(None)
    # a folder stands for the photos in it, as with classify: one plant's photos are
    # often kept in a folder of their own
    images = find_images(args.images, args.recursive)
    if not images:
        raise InvalidRequestError("no images found in " + ", ".join(args.images))
    classifier = make_classifier(args)
    args.top_k = cap_top_k(args.top_k, classifier)
    evidence = make_row_evidence(args, classifier)
    loaded = classifier.load_request(images)
    errors: list[Row] = []
    for path, item in zip(images, loaded, strict=True):
        if isinstance(item, ImageError):
            errors.append(error_row(path, item, classifier.model_version))
            echo(f"leafid: {path}: {item}", err=True)
    names = [display_path(path) for path in images]
    result: Row = {
        "paths": [n for n, item in zip(names, loaded, strict=True) if isinstance(item, np.ndarray)]
    }
    try:
        if evidence is None:
            result.update(classifier.identify_loaded(loaded, names, args.top_k).to_dict())
        else:
            result.update(evidence.identify(classifier, names, loaded, args.top_k))
    except ImageError as exc:
        result.update(error_item(exc, classifier.model_version))
        echo("leafid: none of the images could be used", err=True)
    result["errors"] = errors
    if fmt == "json":
        echo(json.dumps(result, ensure_ascii=False, indent=2))
    elif fmt == "jsonl":
        echo(json.dumps(result, ensure_ascii=False))
    elif "error" not in result:
        _identify_table(result)
    return EXIT_SOME_FAILED if errors else EXIT_OK


def _identify_table(result: Row) -> None:
    n = len(result["paths"])
    top = result["results"][0]
    if result["rank"] in ("genus", "family"):
        echo(f"Best match: {wording.backed_off(result)}, {wording.likely(result['match_score'])}")
    elif not result["unknown"]:
        echo(f"Best match: {top['display_name']}, {wording.likely(top['score'])}")
    else:
        echo(f"Unknown: {wording.why_unknown(result)}.")
        for pick in result["disagreement"] or []:
            echo(f"  {pick['photo']}: {pick['display_name']}, {wording.likely(pick['score'])}")
        echo(wording.next_steps(result))
    echo(f"From {n} photo{'s' if n != 1 else ''}. Candidates, with the calibrated chance of each:")
    for cand in result["results"]:
        echo(f"  {wording.chance(cand['score']):>4}  {cand['display_name']}")
    echo(f"\nmodel {result['model_version']}. {CAVEAT}")


# --- info -------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    """Describe the model: a summary for people, or every field with ``--json``."""
    classifier = Classifier(args.model)
    spec = classifier.spec
    if args.format == "json":
        info: dict[str, Any] = {"path": str(classifier.path), **dataclasses.asdict(spec)}
        info["caveat"] = CAVEAT
        echo(json.dumps(info, ensure_ascii=False, indent=2))
        return EXIT_OK
    datasets = spec.training_data.get("datasets", {})
    trained = [name for name, d in datasets.items() if d.get("role") == "train"]
    ood = [name for name, d in datasets.items() if d.get("role") == "ood"]
    rows = [
        ("Model", f"{spec.model_name} {spec.model_version}"),
        ("File", str(classifier.path)),
        ("Classes", f"{len(spec.classes)} (listed below)"),
        (
            "Input",
            f"{spec.input_size}x{spec.input_size} px (shorter side resized to "
            f"{spec.resize_size}, {spec.interpolation}; {spec.input_format})",
        ),
        ("Scores", f"calibrated chances (temperature {spec.temperature:.3g})"),
        (
            "Unknown",
            f"when the best match is under {spec.unknown_threshold:.0%} likely "
            f"(threshold {spec.unknown_threshold:.3g})",
        ),
    ]
    if trained:
        rows.append(("Trained on", ", ".join(trained)))
    if ood:
        rows.append(("Non-leaf sets", ", ".join(ood)))
    for label, value in rows:
        echo(f"{label:<15}{value}")
    echo()
    for line in _metrics_lines(spec.metrics.get("test")):
        echo(line)
    echo()
    echo(
        f"Classes ({len(spec.classes)})" + (", with [genus, family]:" if spec.has_taxonomy else ":")
    )
    width = max(len(c.slug) for c in spec.classes)
    sci_width = max(len(c.scientific_name) for c in spec.classes)
    for c in spec.classes:
        taxa = f"  [{c.genus or '-'}, {c.family or '-'}]" if spec.has_taxonomy else ""
        echo(f"  {c.slug:<{width}}  {c.scientific_name:<{sci_width}}  {c.common_name}{taxa}")
    echo()
    echo("Every field: leafid info --json")
    echo(CAVEAT)
    return EXIT_OK


def _metrics_lines(test: Any) -> list[str]:
    """The test-set figures of a model's metrics as a small table (their usual form)."""
    if not isinstance(test, dict) or "top1" not in test:
        return ["Metrics: none recorded in the usual form (see leafid info --json)"]

    def pct(value: Any) -> str:
        return f"{value:.1%}" if isinstance(value, int | float) else "-"

    lines = [
        f"Test set ({test.get('images', '?')} photos):",
        f"  {'dataset':<16}{'photos':>7}{'top-1':>8}{'top-5':>8}{'unknown':>9}",
    ]
    per_dataset = dict(test.get("per_dataset", {}))
    for name, d in [*per_dataset.items(), ("all", test)]:
        lines.append(
            f"  {name:<16}{d.get('images', '-'):>7}{pct(d.get('top1')):>8}"
            f"{pct(d.get('top5')):>8}{pct(d.get('unknown_rate')):>9}"
        )
    ood = test.get("ood")
    if isinstance(ood, dict):
        auroc = ood.get("auroc")
        lines.append(
            f"  Non-leaf photos rejected: {pct(ood.get('rejected'))} of {ood.get('images', '?')}"
            + (f" (AUROC {auroc:.3f})" if isinstance(auroc, int | float) else "")
        )
    if isinstance(test.get("ece"), int | float):
        lines.append(f"  Calibration error (ECE): {pct(test['ece'])}")
    return lines


# --- index ------------------------------------------------------------------------------


def cmd_index(args: argparse.Namespace) -> int:
    """Embed a reference folder into an index for ``--references``."""
    if not args.output.endswith(".npz"):
        raise InvalidRequestError(f"-o {args.output}: the index is an .npz file")
    check_output_name(args.output)
    classifier = make_classifier(args)
    index, report = build_index(
        classifier,
        args.folder,
        decode_threads=args.decode_threads or default_decode_threads(),
        batch_size=DEFAULT_BATCH_SIZE,
        progress=sys.stderr.isatty(),
    )
    for name in report.other_folders:
        echo(f"leafid: {name}: not a class of the model, left out (slugs: leafid info)", err=True)
    for path, exc in report.failed:
        echo(f"leafid: {display_path(path)}: {exc}", err=True)
    try:
        index.save(args.output)
    except OSError as exc:
        raise InvalidRequestError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    echo(
        f"leafid: {len(index)} reference photos of {len(index.classes)} classes in "
        f"{args.output}, {len(report.failed)} could not be used",
        err=True,
    )
    return EXIT_SOME_FAILED if report.failed else EXIT_OK


# --- parser, plugins, main --------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the built-in commands and those of installed plugins."""
    parser = argparse.ArgumentParser(
        prog="leafid",
        description="Identify plant species from leaf photos, with honest confidence.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"leafid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("classify", "classify each photo (files or folders) independently")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    add_recursive_option(p)
    p.add_argument(
        "--top-k", type=int_at_least(1), default=5, metavar="K", help="candidates per row"
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="output format (default: from -o's suffix, else table on a terminal, else jsonl)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write rows to FILE instead of stdout")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip files already in -o FILE and append the rest (jsonl and csv only)",
    )
    add_decode_threads_option(p, default_decode_threads())
    p.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=DEFAULT_BATCH_SIZE,
        metavar="B",
        help=f"images per model call (default: {DEFAULT_BATCH_SIZE})",
    )
    add_references_options(p)
    add_explain_option(p)
    add_model_arguments(p)
    p.set_defaults(func=cmd_classify)

    p = add(
        "dask",
        "classify on a Dask cluster (local worker processes or a scheduler; needs the "
        "[scale] extra) and report images/s; the model is read at the same path on every "
        "Dask worker",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files or folders")
    add_recursive_option(p)
    p.add_argument(
        "--top-k", type=int_at_least(1), default=5, metavar="K", help="candidates per row"
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the rows to FILE (JSON lines)")
    add_model_option(p)
    p.add_argument(
        "--processes",
        type=int_at_least(0),
        default=2,
        metavar="N",
        help="worker processes of a local cluster (default: 2); 0: no Dask, this process",
    )
    p.add_argument("--scheduler", metavar="ADDRESS", help="use this running Dask scheduler")
    p.add_argument(
        "--chunk-size",
        type=int_at_least(1),
        default=dask_batch.DEFAULT_CHUNK_SIZE,
        metavar="N",
        help=f"files per task (default: {dask_batch.DEFAULT_CHUNK_SIZE})",
    )
    p.add_argument(
        "--synthetic",
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="also classify N generated 12 MP photos (written on this machine: local "
        "clusters only)",
    )
    p.set_defaults(func=cmd_dask)

    p = add("identify", "one answer from several photos of the same plant")
    p.add_argument(
        "images", nargs="+", metavar="IMG", help="photos of one plant, or a folder of them"
    )
    add_recursive_option(p)
    p.add_argument("--top-k", type=int_at_least(1), default=5, metavar="K", help="candidates")
    p.add_argument("--format", choices=("table", "json", "jsonl"), help="output format")
    add_references_options(p)
    add_explain_option(p)
    add_model_arguments(p)
    p.set_defaults(func=cmd_identify)

    p = add("info", "show the model's version, classes, calibration and metrics")
    add_model_option(p)
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: a summary for people (default); json: every field, for programs",
    )
    p.add_argument(
        "--json", dest="format", action="store_const", const="json", help="same as --format json"
    )
    p.set_defaults(func=cmd_info)

    p = add(
        "index",
        "embed a folder of labelled reference photos (REF_DIR/<class slug>/*.jpg) for "
        "--references: answers then show the reference photos most like the photo",
    )
    p.add_argument("folder", metavar="REF_DIR", help="reference folder, one sub-folder per class")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the index (.npz)")
    add_decode_threads_option(p, default_decode_threads())
    add_model_arguments(p)
    p.set_defaults(func=cmd_index)

    p = add("bench", "measure images/s on synthetic 12 MP and 1 MP JPEGs")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run_command)

    http_commands.register(sub)  # serve, loadtest: part of leafid, not a plugin
    load_plugins(sub)
    return parser


def load_plugins(subparsers: Any) -> list[str]:
    """Let every ``leafid.commands`` entry point of another package add its subcommands.

    Entry points into leafid itself are skipped: :func:`build_parser` registers those
    commands directly. A plugin whose package is not installed (or that needs a
    package that is not) is skipped quietly, logged at debug level. Any other failure
    to load or register is a bug in the plugin: it is named with its error in a
    warning on stderr (the traceback with ``-v``), and the other commands still work.

    Returns:
        Names of the entry points that registered.
    """
    loaded = []
    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.module.partition(".")[0] == "leafid":
            continue
        try:
            register = ep.load()
            register(subparsers)
        except Exception as exc:  # a plugin failure only removes that plugin's commands
            if not_installed(exc) is not None or _is_part_of(ep.module, exc):
                log.debug("skipping leafid command plugin %s: %s", ep.name, exc, exc_info=True)
            else:
                log.debug("leafid command plugin %s failed", ep.name, exc_info=True)
                echo(
                    f"leafid: warning: command plugin {ep.name} ({ep.value}) failed to load, "
                    f"its commands are missing: {type(exc).__name__}: {exc}",
                    err=True,
                )
            continue
        loaded.append(ep.name)
    return loaded


def _is_part_of(module: str, exc: Exception) -> bool:
    """Whether ``exc`` says that ``module`` itself, or a package it is in, is not installed."""
    name = exc.name if isinstance(exc, ModuleNotFoundError) else None
    return name is not None and (module == name or module.startswith(name + "."))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``leafid`` command line and return its exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if "-v" in args_list or "--verbose" in args_list:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    else:
        # Pillow warns on stderr about damaged EXIF blocks of photos it still reads
        # (only the EXIF tags are lost); that would interleave with the output.
        warnings.filterwarnings(
            "ignore", message=r"(Possibly )?[Cc]orrupt EXIF", category=UserWarning, module=r"PIL\."
        )
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(args_list)
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return int(args.func(args))
    except ModelNotFoundError as exc:
        echo(f"leafid: error: {exc} (give one with --model or ${MODEL_ENV})", err=True)
        return EXIT_USAGE
    except (MissingExtraError, InvalidRequestError, ModelError) as exc:
        echo(f"leafid: error: {exc}", err=True)
        return EXIT_USAGE
    except LeafidError as exc:
        echo(f"leafid: error: {exc}", err=True)
        return EXIT_SOME_FAILED
    except KeyboardInterrupt:
        echo("leafid: interrupted; rows already written are kept", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early, e.g. piped into head
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_SOME_FAILED
