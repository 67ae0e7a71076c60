"""``leafid train``: train, keep the best epoch, calibrate it; fresh or resumed.

The parts live beside this module: the data of a run (:mod:`~leafid_train.run_data`),
the loop's parts (:mod:`~leafid_train.loop`), checkpoints and the resume state
(:mod:`~leafid_train.checkpoint`) and the files (:mod:`~leafid_train.run_folder`).
Under ``torchrun`` every process trains and only rank 0 writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from leafid.classifier import Classifier, softmax
from leafid.console import echo
from leafid.errors import InvalidRequestError, LeafidError
from leafid.paths import default_model_path
from leafid_train import ddp
from leafid_train.calibrate import calibrate
from leafid_train.checkpoint import (
    TrainingParts,
    TrainState,
    load_best,
    restore_checkpoint,
    rng_state,
    save_best,
    save_checkpoint,
)
from leafid_train.config import TrainConfig
from leafid_train.data import ImageCache
from leafid_train.loop import (
    StepHook,
    build_ema,
    build_model,
    build_optimizer,
    build_scheduler,
    predict_logits,
    seed_everything,
    set_phase,
    train_one_epoch,
    validate,
)
from leafid_train.outlier_exposure import load_ood_batches
from leafid_train.precheck import check_data
from leafid_train.run_data import RunData, build_data, load_train_set, training_data_summary
from leafid_train.run_folder import RunFolder
from leafid_train.safety import check as check_safety
from leafid_train.safety import compare as compare_safety
from leafid_train.safety import table as safety_table
from leafid_train.safety import val_figures
from leafid_train.unknown_rule import UnknownRule

log = logging.getLogger(__name__)

SAFETY_BATCH = 32


class TrainingFailedError(LeafidError):
    """Training finished without a model to keep (no epoch had a finite val loss)."""

    code = "training_failed"
    http_status = 500


@dataclass
class RunResult:
    """What :func:`run_training` leaves behind."""

    out: Path
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    calibration: dict[str, Any] | None
    seconds: float
    config: TrainConfig


def run_training(
    cfg: TrainConfig, *, hook: StepHook | None = None, quiet: bool = False
) -> RunResult:
    """Train a new run into ``cfg.out``, keep the best epoch and calibrate it on val.

    Args:
        cfg: The run's config; ``cfg.out`` is the run folder.
        hook: Called before every step as ``hook(epoch, step)``; raising in it stops the
            run like a kill would (tests use it).
        quiet: Print nothing.

    Raises:
        InvalidRequestError: The run folder already holds a run, or ``cfg.device`` is
            not usable.
        DataCheckError: ``cfg.strict`` and a check before training found a problem
            (:mod:`~leafid_train.precheck`; without ``strict`` it is a warning).
        SafetyError: ``cfg.strict`` and the run's model is more than 2 points worse than
            the shipped model on a figure of its safety report (:mod:`~leafid_train.safety`;
            the run is kept).
        TrainingFailedError: No epoch had a finite val loss (no ``best.pt``).
    """
    run = RunFolder(Path(cfg.out))
    if run.holds_run():
        raise InvalidRequestError(f"{run.path} already holds a run: use --resume or another --out")
    return _run(cfg, run, resume=False, hook=hook, quiet=quiet)


def resume_training(
    out: Path,
    *,
    epochs: int | None = None,
    patience: int | None = None,
    hook: StepHook | None = None,
    quiet: bool = False,
) -> RunResult:
    """Continue the run in ``out`` from its checkpoint with its own config.

    Args:
        out: The run folder.
        epochs: New total epoch count (e.g. to extend the run); default: the run's.
        patience: New early-stop patience; default: the run's.
        hook: As for :func:`run_training`.
        quiet: Print nothing.

    Raises:
        InvalidRequestError: There is no checkpoint, or the changed settings do not fit
            the run's config.
        TrainingFailedError: No epoch had a finite val loss (no ``best.pt``).
    """
    run = RunFolder(out)
    if not run.checkpoint.is_file():
        raise InvalidRequestError(f"nothing to resume: {run.checkpoint} does not exist")
    cfg = run.load_config().resumed(epochs=epochs, patience=patience)
    return _run(cfg, run, resume=True, hook=hook, quiet=quiet)


def _check_device(cfg: TrainConfig, info: ddp.DistInfo) -> None:
    """Refuse a CUDA device the machine lacks, or one asked for under torchrun."""
    if cfg.device == "cpu":
        return
    index = int(cfg.device.partition(":")[2] or 0)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if info.enabled or index >= gpus:
        raise InvalidRequestError(
            f"--device {cfg.device} needs that CUDA device ({gpus} found) "
            "and one process (not torchrun)"
        )


def _check_reject_roots(cfg: TrainConfig, data: RunData) -> None:
    """Refuse ``--reject`` targets for roots that are not ``--ood`` roots of the run."""
    unknown = set(cfg.reject_targets()) - {r.name for r in data.ood_roots}
    if unknown:
        raise InvalidRequestError(
            f"--reject names {sorted(unknown)}, not an --ood root "
            f"({', '.join(r.name for r in data.ood_roots) or 'none given'})"
        )


def _run(
    cfg: TrainConfig, run: RunFolder, *, resume: bool, hook: StepHook | None, quiet: bool
) -> RunResult:
    """The whole run: set up, train the epochs, calibrate and summarise (rank 0)."""
    info = ddp.init_from_env()
    say = partial(_say, show=info.is_main and not quiet)
    try:
        _check_device(cfg, info)
        ddp.barrier(info)  # every process has checked before rank 0 writes anything
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed + info.rank)
        data = build_data(cfg, run.split if resume else None)
        _check_reject_roots(cfg, data)
        if not resume:  # a resumed run was checked when it started
            check_data(data, strict=cfg.strict, warn=info.is_main)
        if info.is_main:
            run.save_config(cfg)
            run.save_split(data.split)
        sizes = {k: len(v) for k, v in data.split.leaf.items()}
        say(
            f"{len(data.spec.classes)} classes from {', '.join(r.name for r in data.roots)}; "
            f"train {sizes['train']}, val {sizes['val']}, test {sizes['test']}; "
            f"OOD val {len(data.split.ood['val'])}"
        )
        state = _train_epochs(
            cfg, run, data, info, resume=resume, hook=hook, show=info.is_main and not quiet
        )
        ddp.barrier(info)
    finally:
        ddp.shutdown(info)
    if state.best_epoch == 0:  # every val loss was nan (nan < inf is false): no best.pt
        raise TrainingFailedError(
            f"no epoch of {run.path} had a finite val loss, so there is no best.pt to "
            "calibrate or export; the training diverged (try a lower --lr)"
        )
    calibration = None
    if info.is_main:
        calibration = calibrate_run(run, cfg, data)
        say(
            f"calibrated: T={calibration['temperature']:.3f}, "
            f"unknown threshold {calibration['unknown_threshold']:.3f}, "
            f"val ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}"
        )
        run.write_summary(
            {
                "epochs_run": state.epoch,
                "best_epoch": state.best_epoch,
                "best_val_loss": state.best_val_loss,
                "train_seconds": state.seconds,
                "world_size": info.world_size,
                "labels": data.spec.labels,
                "split_sizes": {k: len(v) for k, v in data.split.leaf.items()},
                "ood_sizes": {k: len(v) for k, v in data.split.ood.items()},
                "training_data": training_data_summary(data),
            }
        )
        safety = safety_of_run(run, cfg, data, calibration, default_model_path())
        if safety is not None:
            say(f"safety on val, beside {safety['base']['model']} ({run.safety}):")
            say(safety_table(safety))
            check_safety(safety, strict=cfg.strict)
    return RunResult(
        run.path,
        state.epoch,
        state.best_epoch,
        state.best_val_loss,
        calibration,
        state.seconds,
        cfg,
    )


def _say(text: str, show: bool) -> None:
    if show:
        echo(text, err=True)


def _train_epochs(
    cfg: TrainConfig,
    run: RunFolder,
    data: RunData,
    info: ddp.DistInfo,
    *,
    resume: bool,
    hook: StepHook | None,
    show: bool,
) -> TrainState:
    """Train from the first (or the checkpoint's next) epoch to the last or an early stop.

    ``show``: print progress (rank 0, not quiet).
    """
    say = partial(_say, show=show)
    train_set = load_train_set(
        data,
        cfg.seed,
        show=show,
        oversample=cfg.oversample_factors(),
        paste=cfg.paste,
        paste_prob=cfg.paste_prob,
        greyscale_prob=cfg.greyscale_prob,
    )
    val_arrays, val_labels = data.eval_arrays("val"), data.labels("val")
    sampler = DistributedSampler(
        train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed
    )
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.loader_processes,
        drop_last=len(sampler) > cfg.batch_size,
    )
    model = build_model(cfg, data.spec).to(cfg.device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg.epochs * len(loader), cfg.warmup_steps_frac)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    ood_batches = None
    if cfg.outlier_exposure > 0:
        ood_batches = load_ood_batches(
            data,
            cfg.seed,
            info.rank,
            cfg.outlier_batch or cfg.batch_size,
            cfg.loader_processes,
            show=show,
        )
    ema = build_ema(model, cfg.ema_decay)
    scored = model if ema is None else ema.module  # what is validated, kept and exported
    parts = TrainingParts(model, optimizer, scheduler, ema)
    state = TrainState()
    if resume:
        state = restore_checkpoint(run.checkpoint, parts, info)
        if info.is_main:  # drop metrics of epochs the checkpoint does not have
            run.keep_epochs(state.epoch)
        say(f"resuming after epoch {state.epoch}")
    wrapped, phase = model, None
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.stale >= cfg.patience > 0:
            say(f"early stop: no val improvement for {state.stale} epochs")
            break
        head_only = epoch <= cfg.head_epochs
        if head_only != phase:
            set_phase(model, head_only)
            wrapped = nn.parallel.DistributedDataParallel(model) if info.enabled else model
            phase = head_only
        sampler.set_epoch(epoch)
        train_set.epoch = epoch
        row: dict[str, Any] = {"epoch": epoch, "phase": "head" if head_only else "full"}
        row["lr"] = max(g["lr"] for g in optimizer.param_groups)
        row.update(
            train_one_epoch(
                wrapped,
                loader,
                optimizer,
                scheduler,
                criterion,
                head_only=head_only,
                epoch=epoch,
                hook=hook,
                show_progress=show,
                ema=ema,
                ood_batches=None if ood_batches is None else ood_batches.epoch(epoch, len(loader)),
                ood_weight=cfg.outlier_exposure,
            )
        )
        if ema is not None:  # each process averaged its own BatchNorm statistics
            ddp.broadcast_buffers(info, ema.module)
        _, val = validate(scored, val_arrays, val_labels, info=info)
        row.update(val)
        row["world_size"] = info.world_size
        improved = state.record(epoch, val["val_loss"], row["seconds"])
        row["best"] = improved
        rngs = ddp.all_gather(info, rng_state())  # every rank's (dropout differs)
        if info.is_main:
            if improved:
                save_best(run.best, scored, data.spec, epoch)
            run.append_epoch(row)
            save_checkpoint(run.checkpoint, parts, rngs, state, data.spec)
        say(
            f"epoch {epoch}/{cfg.epochs} [{row['phase']}] loss {row['train_loss']:.4f} "
            f"val loss {val['val_loss']:.4f} val top-1 {val['val_top1']:.4f} "
            f"({row['images_per_s']:.1f} img/s{', best' if improved else ''})"
        )
    return state


def safety_of_run(
    run: RunFolder, cfg: TrainConfig, data: RunData, calibration: dict[str, Any], base: Path
) -> dict[str, Any] | None:
    """The run's val figures beside those of ``base`` (the shipped model): ``safety.json``.

    Both models answer the run's val and OOD val photos, each preprocessed for its own
    spec and with its own temperature and threshold. Returns None (with a warning) when
    ``base`` is not there.
    """
    if not base.is_file():
        log.warning("no safety report: no model to compare with at %s", base)
        return None
    truth = [s.label for s in data.split.leaf["val"]]
    datasets = [s.root for s in data.split.leaf["val"]]
    ood_roots = [s.root for s in data.split.ood["val"]]
    model, _ = load_best(run.best, cfg)
    temperature = calibration["temperature"]
    new = val_figures(
        cfg.resolved_model_version(),
        softmax(predict_logits(model, data.eval_arrays("val")), temperature),
        data.spec.labels,
        truth,
        datasets,
        softmax(predict_logits(model, data.eval_arrays("val", ood=True)), temperature),
        ood_roots,
        calibration["unknown_threshold"],
    )
    clf = Classifier(base)
    images = ImageCache(clf.spec)  # the base's own preprocessing

    def probs(paths: list[Path]) -> np.ndarray:
        out = [np.zeros((0, len(clf.spec.classes)))]
        for start in range(0, len(paths), SAFETY_BATCH):
            chunk = paths[start : start + SAFETY_BATCH]
            out.append(clf.probabilities(np.stack([images.eval_array(p) for p in chunk])))
        return np.concatenate(out)

    old = val_figures(
        clf.model_version,
        probs(data.paths("val")),
        clf.spec.labels,
        truth,
        datasets,
        probs(data.paths("val", ood=True)),
        ood_roots,
        clf.threshold,
    )
    report = compare_safety(old, new)
    run.write_safety(report)
    return report


def calibrate_run(run: RunFolder, cfg: TrainConfig, data: RunData) -> dict[str, Any]:
    """Fit temperature, unknown threshold (and genus and family thresholds) on val (+ OOD val).

    Writes and returns ``calibration.json``.
    """
    model, _ = load_best(run.best, cfg)
    report = calibrate(
        partial(predict_logits, model),
        data.eval_arrays("val"),
        data.labels("val"),
        data.eval_arrays("val", ood=True),
        rule=UnknownRule.of(cfg),
        ood_roots=[s.root for s in data.split.ood["val"]],
        classes=data.spec.classes,
    )
    run.write_calibration(report)
    return report
