"""The ``train``, ``evaluate``, ``export`` and ``datasets`` subcommands of ``leafid``.

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

from leafid.console import echo
from leafid.errors import EXIT_OK, MissingExtraError

EPILOG = """\
examples:
  leafid train --data swedish-leaf --data flavia --ood nonleaf --out runs/v1
  leafid train --data swedish-leaf --data /photos/my_species --out runs/mine --export mine.onnx
  torchrun --nproc-per-node 2 -m leafid train --data swedish-leaf --out runs/ddp
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
    from leafid_train.config import TrainConfig  # stdlib + leafid only

    d = TrainConfig(data=["-"], out="-")
    p = _add(subparsers, "train", "fine-tune a model on leaf ImageFolders, then calibrate it")
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="ROOT",
        help="dataset name or folder (repeat to combine datasets)",
    )
    p.add_argument(
        "--ood",
        action="append",
        default=[],
        metavar="ROOT",
        help="non-leaf photos used only to pick the unknown threshold",
    )
    p.add_argument("--out", required=True, metavar="RUN", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue RUN from its checkpoint")
    p.add_argument("--arch", default=d.arch, help=f"timm architecture (default {d.arch})")
    p.add_argument("--checkpoint", metavar="PTH", help="start from these backbone weights")
    p.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="random init instead of the ImageNet weights",
    )
    p.add_argument("--input-size", type=int, default=d.input_size, metavar="PX")
    p.add_argument("--resize-size", type=int, default=d.resize_size, metavar="PX")
    p.add_argument(
        "--epochs",
        type=int,
        help=f"total epochs incl. head warm-up (default {d.epochs}; with --resume: the run's)",
    )
    p.add_argument(
        "--head-epochs", type=int, default=d.head_epochs, help="first epochs train only the head"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak backbone learning rate")
    p.add_argument("--head-lr-scale", type=float, default=d.head_lr_scale)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--drop-rate", type=float, default=d.drop_rate)
    p.add_argument(
        "--ema-decay",
        type=float,
        default=d.ema_decay,
        help="validate and keep an EMA of the weights with this per-step decay (0: off)",
    )
    p.add_argument(
        "--oversample",
        action="append",
        default=[],
        metavar="ROOT=N",
        help="show each training image of data root ROOT (its name: the dataset name or "
        "folder name) N times per epoch (repeatable)",
    )
    p.add_argument(
        "--patience",
        type=int,
        help=(
            "early stop after N epochs without better val loss (0: never; "
            f"default {d.patience}; with --resume: the run's)"
        ),
    )
    p.add_argument(
        "--split", type=float, nargs=3, default=list(d.split), metavar=("TRAIN", "VAL", "TEST")
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader processes")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (0: default)")
    p.add_argument(
        "--device", default=d.device, help="torch device that trains: cpu (default) or cuda[:N]"
    )
    p.add_argument("--cache-dir", metavar="DIR", help="keep decoded images here as .npy")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="do not check roots against datasets/ manifests",
    )
    p.add_argument(
        "--keep-fraction",
        type=float,
        default=d.keep_fraction,
        help="share of correct val answers the unknown threshold keeps",
    )
    p.add_argument("--model-version", default=d.model_version)
    p.add_argument("--export", metavar="ONNX", help="export the model here when done")
    p.add_argument(
        "--int8",
        action="store_true",
        help="with --export, also make an INT8 copy (kept beside the model if it qualifies)",
    )
    p.set_defaults(func=cmd_train)

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
    p.add_argument("--threshold", type=float, help="override the model's unknown threshold")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
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
        help="version written into the model (default: the run's --model-version)",
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


def _config(args: argparse.Namespace) -> Any:
    """The TrainConfig of the command line.

    ``--epochs`` and ``--patience`` are the only settings a resumed run takes from the
    command line; when they are not given, a resumed run keeps its own.
    """
    config = load("config")
    base = config.TrainConfig(data=["-"], out="-")
    saved = Path(args.out) / "config.json"
    if args.resume and saved.is_file():
        base = config.TrainConfig.load(saved)
    epochs = base.epochs if args.epochs is None else args.epochs
    patience = base.patience if args.patience is None else args.patience
    return config.TrainConfig(
        data=args.data,
        ood=args.ood,
        out=args.out,
        arch=args.arch,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        input_size=args.input_size,
        resize_size=args.resize_size,
        epochs=epochs,
        head_epochs=args.head_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr_scale=args.head_lr_scale,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        drop_rate=args.drop_rate,
        ema_decay=args.ema_decay,
        oversample=args.oversample,
        patience=patience,
        split=tuple(args.split),
        seed=args.seed,
        workers=args.workers,
        threads=args.threads,
        device=args.device,
        cache_dir=args.cache_dir,
        verify=args.verify,
        keep_fraction=args.keep_fraction,
        model_version=args.model_version,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """``leafid train``."""
    train = load("train")
    result = train.run_training(_config(args), resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return EXIT_OK
    echo(f"run {result.out}: {result.epochs_run} epochs, best epoch {result.best_epoch}", err=True)
    if args.export:
        report = load("export_run").export_run(result.out, Path(args.export), int8=args.int8)
        echo(f"exported {report['onnx']} (ONNX parity {report['parity_max_abs_diff']:.1e})")
        _say_int8(report, Path(result.out))
    else:
        echo(f"next: leafid export {result.out} --out {Path(result.out) / 'model.onnx'}", err=True)
    return EXIT_OK


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
    if m["failed"]:
        echo(f"  {len(m['failed'])} images could not be read (listed in metrics.json)", err=True)
    echo(f"wrote {args.out / 'metrics.json'}, confusion.png, reliability.png", err=True)
    return EXIT_OK


def _say_int8(report: dict[str, Any], run: Path) -> None:
    """Print what happened to the INT8 copy in an export report."""
    if "int8_compare" in report:
        echo("int8 vs fp32: " + json.dumps(report["int8_compare"]))
        if report["int8_ship"]:
            echo(f"wrote {report['int8']}: it qualifies and is the default beside the fp32 model")
        else:
            echo(f"no INT8 copy kept: it does not qualify (see {run / 'int8_report.json'})")
    elif report.get("int8_removed"):
        echo("removed the INT8 copy made from an earlier export (stale beside the new model)")


def cmd_export(args: argparse.Namespace) -> int:
    """``leafid export``."""
    report = load("export_run").export_run(
        args.run, args.out, int8=args.int8, model_version=args.model_version
    )
    echo(f"wrote {report['onnx']} (ONNX vs torch max |diff| {report['parity_max_abs_diff']:.1e})")
    _say_int8(report, args.run)
    if args.card:
        echo(f"wrote {load('card').write_card(args.run, args.card, model=args.out)}")
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
