"""The ``train``, ``add-species``, ``evaluate``, ``export`` and ``datasets`` subcommands.

Registered through the ``leafid.commands`` entry point. This module imports only the
standard library and :mod:`leafid` at its top, so ``leafid --help`` works without
torch; handlers import the training modules when they run and turn a missing
dependency into :class:`~leafid.errors.MissingExtraError` (``pip install 'leafid[train]'``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from leafid.argtypes import fraction, int_at_least
from leafid.console import echo
from leafid.errors import EXIT_OK, InvalidRequestError, MissingExtraError

EPILOG = """\
examples:
  leafid train --data swedish-leaf --data flavia --ood nonleaf --out runs/v1
  leafid train --data swedish-leaf --data /photos/my_species --out runs/mine --export mine.onnx
  torchrun --nproc-per-node 2 -m leafid train --data swedish-leaf --out runs/ddp
  leafid add-species /photos/new_species_a /photos/new_species_b --out mine/leafid.onnx
  leafid evaluate runs/v1/model.onnx --split-file runs/v1/split.json --ood nonleaf \
      --out runs/v1/eval
  leafid export runs/v1 --out model/leafid.onnx --int8
  leafid datasets manifest swedish-leaf flavia

Bare dataset names are looked up under $LEAFID_DATA_DIR (default ../shared/datasets).
A dataset is an ImageFolder (<root>/<class_slug>/*.jpg, or <root>/images/<class_slug>/...)
with an optional classes.tsv (class_slug, scientific_name, common_name). The same slug in
two roots is the same class."""


def load(module: str) -> ModuleType:
    """Import a ``leafid_train`` module, turning a missing dependency into a clear error.

    Raises:
        MissingExtraError: torch, timm, onnx or matplotlib is not installed.
    """
    try:
        return importlib.import_module(f"leafid_train.{module}")
    except ImportError as exc:
        missing = (exc.name or "torch").partition(".")[0]  # the package, not a submodule
        raise MissingExtraError("train", missing) from exc


def _add(subparsers: Any, name: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=text,
        description=text,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def register(subparsers: Any) -> None:
    """Add the training subcommands to the ``leafid`` parser."""
    from leafid_train.train_options import add_option, option_fields  # stdlib + leafid only

    p = _add(subparsers, "train", "fine-tune a model on leaf ImageFolders, then calibrate it")
    for f in option_fields():
        add_option(p, f, required=False if f.name == "data" else None)  # not with --resume
        if f.name == "out":
            p.add_argument("--resume", action="store_true", help="continue RUN from its checkpoint")
    p.add_argument("--export", metavar="ONNX", help="export the model here when done")
    p.add_argument(
        "--int8",
        action="store_true",
        help="with --export, also make an INT8 copy (kept beside the model if it qualifies)",
    )
    p.set_defaults(func=cmd_train)

    p = _add(
        subparsers,
        "add-species",
        "add species to a model in minutes: its backbone and classes kept, a new head fitted",
    )
    p.add_argument("roots", nargs="+", metavar="NEW_ROOT", help="ImageFolder of new species")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL.onnx")
    p.add_argument(
        "--base",
        type=Path,
        metavar="MODEL.onnx",
        help="the model to add to (default: the shipped model; an INT8 copy stands for the "
        "fp32 model beside it)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="embedding cache (default: embeddings/ in $LEAFID_CACHE_DIR, else in ~/.cache/leafid)",
    )
    p.add_argument(
        "--model-version", metavar="VERSION", help="default: BASE+Nsp.1 (N species added)"
    )
    p.add_argument("--no-int8", dest="int8", action="store_false", help="do not try an INT8 copy")
    p.add_argument("--threads", type=int_at_least(0), default=0, help="onnxruntime threads")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with an error when a safety figure is more than 2 points worse than the "
        "base model's",
    )
    p.set_defaults(func=cmd_add_species)

    p = _add(subparsers, "evaluate", "measure an ONNX model on ImageFolders (through Classifier)")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="ROOT",
        help="leaf dataset (repeat); default with --split-file: the run's datasets",
    )
    p.add_argument(
        "--ood",
        action="append",
        default=[],
        metavar="ROOT",
        help=(
            "non-leaf photos (repeat); with --split-file, a root the run used gives its "
            "--split half (val or test; none for train), any other root all its images"
        ),
    )
    p.add_argument("--split-file", type=Path, metavar="SPLIT.json", help="a run's split.json")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--threshold", type=fraction, help="override the model's unknown threshold")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--threads", type=int_at_least(0), default=0)
    p.add_argument(
        "--shifts",
        action="store_true",
        help=(
            "also measure field shifts: the leaves on the --ood images of the part (never "
            "training's backgrounds), greyscale, blur, rotation and low light"
        ),
    )
    p.set_defaults(func=cmd_evaluate)

    p = _add(subparsers, "export", "export a run's best checkpoint to ONNX (spec inside)")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL.onnx")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also make MODEL.int8.onnx; kept (and the default) only if it qualifies",
    )
    p.add_argument(
        "--card", type=Path, metavar="DIR", help="also write MODEL_CARD.md and the plots into DIR"
    )
    p.add_argument(
        "--model-version",
        metavar="VERSION",
        help="version written into the model (default: the run's, see train --model-version)",
    )
    p.set_defaults(func=cmd_export)

    p = _add(subparsers, "datasets", "write or check dataset manifests (datasets/*.json)")
    p.add_argument("action", choices=("manifest", "verify"))
    p.add_argument("roots", nargs="+", metavar="ROOT")
    p.add_argument(
        "--manifest-dir",
        type=Path,
        metavar="DIR",
        help="where manifests live (default: the repository's datasets/)",
    )
    p.set_defaults(func=cmd_datasets)


def cmd_train(args: argparse.Namespace) -> int:
    """``leafid train``: a new run, or ``--resume`` (only --epochs and --patience change)."""
    train, options = load("train"), load("train_options")
    if not args.resume and not args.data:
        raise InvalidRequestError("leafid train needs --data ROOT (at least one), or --resume")
    if args.resume:
        result = train.resume_training(Path(args.out), epochs=args.epochs, patience=args.patience)
    else:
        result = train.run_training(options.config_from_args(args))
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK
    echo(f"run {result.out}: {result.epochs_run} epochs, best epoch {result.best_epoch}", err=True)
    if args.export:
        report = load("export_run").export_run(
            result.out, Path(args.export), int8=args.int8, cfg=result.config
        )
        echo(f"exported {report['onnx']} (ONNX parity {report['parity_max_abs_diff']:.1e})")
        _say_int8(report, Path(result.out))
    else:
        model = load("run_folder").RunFolder(result.out).model
        echo(f"next: leafid export {result.out} --out {model}", err=True)
    return EXIT_OK


def cmd_add_species(args: argparse.Namespace) -> int:
    """``leafid add-species``."""
    result = load("add_species").add_species(
        args.roots,
        args.out,
        base=args.base,
        cache_dir=args.cache_dir,
        model_version=args.model_version,
        int8=args.int8,
        threads=args.threads,
        say=lambda text: echo(text, err=True),
    )
    files = result.files
    if args.int8:
        kept = "kept: it qualifies" if result.int8_kept else "not kept: it does not qualify"
        echo(f"INT8 copy {files.model_int8} {kept} (see {files.report})")
    say_safety(result.safety, files.safety, strict=args.strict)
    echo(f"wrote {files.card} and {files.report}", err=True)
    return EXIT_OK


def say_safety(report: dict[str, Any], path: Path, *, strict: bool) -> None:
    """Print a safety report's table; warn, or raise with ``strict``, about worse figures."""
    safety = load("safety")
    echo(f"safety on val, beside {report['base']['model']} ({path}):")
    echo(safety.table(report))
    safety.check(report, strict=strict)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``leafid evaluate``."""
    evaluate = load("evaluate")
    m = evaluate.evaluate_model(
        Path(args.model),
        args.data,
        args.out,
        ood=args.ood,
        split_file=args.split_file,
        split=args.split,
        threshold=args.threshold,
        batch_size=args.batch_size,
        threads=args.threads,
        shifts=args.shifts,
    )
    echo(
        f"{m['images']} images ({m['split']}): top-1 {m['top1']:.4f}, top-5 {m['top5']:.4f}, "
        f"ECE {m['ece']:.4f}, answered unknown {m['unknown_rate']:.4f}"
    )
    for name, d in m["per_dataset"].items():
        echo(
            f"  {name}: {d['images']} images, top-1 {d['top1']:.4f}, "
            f"unknown {d['unknown_rate']:.4f}"
        )
    if "ood" in m:
        o = m["ood"]
        echo(f"  OOD: {o['images']} images, AUROC {o['auroc']:.4f}, rejected {o['rejected']:.4f}")
    for name, d in m.get("shifts", {}).get("results", {}).items():
        if d["images"]:
            answered = d["answered_right"]
            echo(
                f"  shift {name}: {d['images']} images, right {d['right']:.4f}, unknown "
                f"{d['unknown_rate']:.4f}, answered right "
                + ("-" if answered is None else f"{answered:.4f}")
            )
        else:
            echo(f"  shift {name}: no images (field needs --ood backgrounds and lab photos)")
    if m["failed"]:
        echo(f"  {len(m['failed'])} images could not be read (listed in metrics.json)", err=True)
    folder = load("run_folder").EvalFolder(args.out)
    echo(f"wrote {folder.metrics}, {folder.confusion.name}, {folder.reliability.name}", err=True)
    return EXIT_OK


def _say_int8(report: dict[str, Any], run: Path) -> None:
    """Print what happened to the INT8 copy in an export report."""
    if "int8_compare" in report:
        echo("int8 vs fp32: " + json.dumps(report["int8_compare"]))
        if report["int8_ship"]:
            echo(f"wrote {report['int8']}: it qualifies and is the default beside the fp32 model")
        else:
            report_file = load("run_folder").RunFolder(run).int8_report
            echo(f"no INT8 copy kept: it does not qualify (see {report_file})")
    elif report.get("int8_removed"):
        echo("removed the INT8 copy made from an earlier export (stale beside the new model)")


def cmd_export(args: argparse.Namespace) -> int:
    """``leafid export``."""
    run = load("run_folder").RunFolder(args.run)
    cfg = run.load_config() if run.config.is_file() else None  # else export_run says so
    report = load("export_run").export_run(
        args.run, args.out, int8=args.int8, model_version=args.model_version, cfg=cfg
    )
    echo(f"wrote {report['onnx']} (ONNX vs torch max |diff| {report['parity_max_abs_diff']:.1e})")
    _say_int8(report, args.run)
    if args.card:
        echo(f"wrote {load('card').write_card(args.run, args.card, model=args.out, cfg=cfg)}")
    return EXIT_OK


def cmd_datasets(args: argparse.Namespace) -> int:
    """``leafid datasets manifest|verify``."""
    data, manifest = load("data"), load("manifest")
    for name in args.roots:
        root = data.open_root(name)
        if args.action == "manifest":
            echo(f"wrote {manifest.write_manifest(root, args.manifest_dir)}")
        else:
            found = manifest.load_manifest(root.name, args.manifest_dir)
            if found is None:
                raise data.DatasetError(f"no manifest for {root.name!r}")
            manifest.verify(root, found)
            echo(f"{root.name}: matches its manifest ({found['image_count']} images)")
    return EXIT_OK
