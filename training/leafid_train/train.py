"""Fine-tuning: data, one epoch, evaluation, checkpoints, resume and the run loop.

A run folder holds ``config.json`` (the resolved :class:`TrainConfig`), ``split.json``,
``checkpoint.pt`` (last finished epoch, with optimiser/scheduler state and every
process's RNG state),
``best.pt`` (best val loss; with ``ema_decay`` the averaged weights are the ones
validated, kept and exported), ``metrics.jsonl`` (one line per epoch),
``calibration.json`` and ``summary.json``. Under ``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from leafid.console import echo
from leafid.errors import InvalidRequestError, LeafidError
from leafid.spec import ClassInfo, ModelSpec
from leafid_train import ddp
from leafid_train.augment import augment
from leafid_train.backbone import (
    PRETRAINED_ARCHS,
    PRETRAINED_MEAN,
    PRETRAINED_STD,
    LeafNet,
    build_leafnet,
)
from leafid_train.calibrate import calibration_report
from leafid_train.config import TrainConfig
from leafid_train.data import (
    DataRoot,
    DatasetError,
    ImageCache,
    Split,
    label_space,
    make_split,
    open_root,
)
from leafid_train.manifest import checksum, verify_roots

log = logging.getLogger(__name__)

StepHook = Callable[[int, int], None]  # (epoch, step) -> None


class TrainingFailedError(LeafidError):
    """Training finished without a model to keep (no epoch had a finite val loss)."""

    code = "training_failed"
    http_status = 500


# --- data ---------------------------------------------------------------------------------


@dataclass
class RunData:
    """Everything a run needs from the data: roots, split, labels, spec and the cache."""

    roots: list[DataRoot]
    ood_roots: list[DataRoot]
    split: Split
    spec: ModelSpec
    cache: ImageCache

    @property
    def index(self) -> dict[str, int]:
        """Class slug -> output index."""
        return {slug: i for i, slug in enumerate(self.spec.labels)}

    def root(self, name: str) -> DataRoot:
        """A root (leaf or OOD) by name."""
        for r in self.roots + self.ood_roots:
            if r.name == name:
                return r
        raise DatasetError(f"no dataset root named {name!r} in this run")

    def paths(self, part: str, ood: bool = False) -> list[Path]:
        """Files of one split part (``train``/``val``/``test``; OOD: ``val``/``test``)."""
        items = (self.split.ood if ood else self.split.leaf)[part]
        return [self.root(s.root).path(s.rel) for s in items]

    def labels(self, part: str) -> np.ndarray:
        """Class indices of one leaf split part."""
        index = self.index
        return np.array([index[s.label] for s in self.split.leaf[part]], dtype=np.int64)

    def eval_arrays(self, part: str, ood: bool = False, limit: int | None = None) -> np.ndarray:
        """Preprocessed model inputs (exactly what the Classifier feeds) of a split part."""
        paths = self.paths(part, ood)[:limit]
        size = self.spec.input_size
        if not paths:
            return np.zeros((0, size, size, 3), dtype=np.uint8)
        return np.stack([self.cache.eval_array(p) for p in paths])


def build_spec(cfg: TrainConfig, classes: Sequence[ClassInfo]) -> ModelSpec:
    """The model spec of a run (temperature and threshold are set after calibration).

    The input normalisation is what the shipped lite0 weights expect, else the spec's
    default (ImageNet's).
    """
    spec = ModelSpec(
        model_name=f"leafid-{cfg.arch.replace('_', '-')}",
        model_version=cfg.model_version,
        classes=tuple(classes),
        input_size=cfg.input_size,
        resize_size=cfg.resize_size,
    )
    if cfg.arch in PRETRAINED_ARCHS:
        spec = spec.replace(mean=PRETRAINED_MEAN, std=PRETRAINED_STD)
    return spec


def build_data(cfg: TrainConfig, split_file: Path | None = None) -> RunData:
    """Open and (optionally) verify the roots, split them and make the spec.

    Args:
        cfg: The run's config.
        split_file: Reuse this ``split.json`` (on resume) instead of making a new split.

    Raises:
        ManifestMismatchError: A root does not match its manifest (``cfg.verify``).
        DatasetError: A root is empty or unreadable.
        InvalidRequestError: A root is both --data and --ood, or --oversample names a
            root that is not a --data root.
    """
    roots = [open_root(d) for d in cfg.data]
    ood_roots = [open_root(d) for d in cfg.ood]
    unknown = set(cfg.oversample_factors()) - {r.name for r in roots}
    if unknown:
        raise InvalidRequestError(
            f"--oversample names {sorted(unknown)}, not a --data root "
            f"({', '.join(r.name for r in roots)})"
        )
    if cfg.verify:
        checked = verify_roots(roots + ood_roots)
        log.info("verified against manifests: %s", checked or "none found")
    if split_file is not None and split_file.is_file():
        split = Split.load(split_file)
        names = {r.name for r in roots}
        if set(split.roots) != names:
            raise DatasetError(f"{split_file} is for roots {sorted(split.roots)}, not {names}")
    else:
        split = make_split(roots, ood_roots, cfg.seed, cfg.split)
    leaf = [s for part in split.leaf.values() for s in part]
    overlap = {r.name for r in roots} & {r.name for r in ood_roots}
    if overlap:
        raise InvalidRequestError(f"a root cannot be both --data and --ood: {sorted(overlap)}")
    if not split.leaf["train"] or not split.leaf["val"]:
        raise DatasetError("the split has no train or no val images: add more images per class")
    spec = build_spec(cfg, label_space(roots, leaf))
    cache = ImageCache(spec, Path(cfg.cache_dir) if cfg.cache_dir else None)
    return RunData(roots, ood_roots, split, spec, cache)


class TrainSet(Dataset):  # type: ignore[type-arg]
    """Augmented training images from preloaded arrays (shorter side = resize_size).

    Augmentation is seeded by (seed, epoch, index), so an epoch is the same after resume.
    ``order`` lists the array shown at each index (an array listed twice is shown twice
    per epoch, augmented differently); default: each array once.
    """

    def __init__(
        self,
        arrays: list[np.ndarray],
        labels: np.ndarray,
        spec: ModelSpec,
        seed: int,
        order: Sequence[int] | None = None,
    ) -> None:
        self.arrays = arrays
        self.labels = labels
        self.spec = spec
        self.seed = seed
        self.order = list(range(len(arrays))) if order is None else list(order)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        j = self.order[i]
        arr = augment(self.arrays[j], self.spec.input_size, rng, self.spec.interpolation)
        return torch.from_numpy(arr), int(self.labels[j])


def load_train_set(
    data: RunData, seed: int, show: bool = False, oversample: Mapping[str, int] | None = None
) -> TrainSet:
    """Decode (or read from the cache) every training image once.

    Args:
        data: The run's data.
        seed: Augmentation seed.
        show: Progress bar on a terminal.
        oversample: {root name: N}: that root's images are shown N times per epoch.
    """
    factors = dict(oversample or {})
    paths = data.paths("train")
    arrays = [data.cache.train_array(p) for p in _progress(paths, "decode train", show)]
    order = [
        i
        for i, item in enumerate(data.split.leaf["train"])
        for _ in range(factors.get(item.root, 1))
    ]
    return TrainSet(arrays, data.labels("train"), data.spec, seed, order)


def _progress(items: Sequence[Any], desc: str, show: bool) -> Any:
    if not (show and sys.stderr.isatty()):
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, leave=False)


# --- model, optimiser, schedule -----------------------------------------------------------


def build_model(cfg: TrainConfig, spec: ModelSpec) -> LeafNet:
    """The network of a run: ImageNet lite0 weights, a checkpoint, or random init."""
    pretrained = cfg.pretrained and cfg.checkpoint is None and cfg.arch in PRETRAINED_ARCHS
    if cfg.pretrained and cfg.checkpoint is None and not pretrained:
        log.warning("no shipped weights for %s: starting from random init", cfg.arch)
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else None
    return build_leafnet(
        spec, arch=cfg.arch, pretrained=pretrained, checkpoint=checkpoint, drop_rate=cfg.drop_rate
    )


def head_parameters(model: LeafNet) -> list[Any]:
    """Parameters of the classifier head."""
    return list(model.backbone.get_classifier().parameters())


def build_optimizer(model: LeafNet, cfg: TrainConfig) -> Any:
    """AdamW with the head at ``lr * head_lr_scale`` and no decay on norms and biases."""
    head = {id(p) for p in head_parameters(model)}
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for p in model.parameters():
        key = (id(p) in head, p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": cfg.lr * (cfg.head_lr_scale if is_head else 1.0),
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            }
            for (is_head, no_decay), params in sorted(groups.items())
        ]
    )


def build_scheduler(optimizer: Any, total_steps: int, warmup_frac: float) -> Any:
    """Linear warm-up then cosine decay to zero, stepped once per batch."""
    warmup = max(1, round(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_ema(model: LeafNet, decay: float) -> Any:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics.

    Returns None when ``decay`` is 0. The average starts as a copy of ``model``.
    """
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema


def set_phase(model: LeafNet, head_only: bool) -> None:
    """Freeze everything but the head (head-only warm-up) or unfreeze all."""
    head = {id(p) for p in head_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(not head_only or id(p) in head)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- one epoch, evaluation ----------------------------------------------------------------


def train_one_epoch(
    model: Any,
    loader: DataLoader,  # type: ignore[type-arg]
    optimizer: Any,
    scheduler: Any,
    criterion: Any,
    *,
    head_only: bool = False,
    epoch: int = 0,
    hook: StepHook | None = None,
    show_progress: bool = False,
    ema: Any = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``.

    Args:
        model: The network (possibly wrapped in DDP).
        loader: Batches of (uint8 NHWC images, labels).
        optimizer: The optimiser.
        scheduler: Stepped after every batch.
        criterion: The loss.
        head_only: Keep the backbone in eval mode (frozen BatchNorm statistics).
        epoch: Epoch number, passed to ``hook``.
        hook: Called as ``hook(epoch, step)`` before every step (tests use it to interrupt).
        show_progress: Show a tqdm bar on a terminal.
        ema: Optional :func:`build_ema` average, updated after every step.

    Returns:
        Mean loss, top-1 on the augmented images, image count, seconds and images/s.
    """
    net = model.module if hasattr(model, "module") else model
    model.train()
    if head_only:
        net.backbone.eval()
        net.backbone.get_classifier().train()
    device = next(net.parameters()).device
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for step, (images, labels) in enumerate(_progress(loader, f"epoch {epoch}", show_progress)):
        if hook is not None:
            hook(epoch, step)
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        loss = criterion(logits, labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(net)
        n = len(labels)
        total_loss += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1) == labels).sum())
        seen += n
    seconds = time.perf_counter() - start
    return {
        "train_loss": total_loss / max(1, seen),
        "train_top1": correct / max(1, seen),
        "train_images": seen,
        "seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else 0.0,
    }


def predict_logits(
    model: Any, arrays: np.ndarray, batch_size: int = 64, info: ddp.DistInfo | None = None
) -> np.ndarray:
    """Logits of preprocessed uint8 inputs, in eval mode.

    Under DDP each process scores every ``world_size``-th input and the results are
    gathered, so all processes return the full array.
    """
    info = info or ddp.DistInfo()
    net = model.module if hasattr(model, "module") else model
    net.eval()
    device = next(net.parameters()).device
    mine = np.arange(info.rank, len(arrays), info.world_size)
    out = []
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            idx = mine[start : start + batch_size]
            out.append(net(torch.from_numpy(arrays[idx]).to(device)).cpu().numpy())
    n_classes = int(net.backbone.get_classifier().out_features) if not out else out[0].shape[1]
    logits = np.concatenate(out) if out else np.zeros((0, n_classes), dtype=np.float32)
    if not info.enabled:
        return logits
    full = np.zeros((len(arrays), logits.shape[1]), dtype=np.float32)
    for rank, part in enumerate(ddp.all_gather(info, logits)):
        full[np.arange(rank, len(arrays), info.world_size)] = part
    return full


def evaluate(
    model: Any,
    arrays: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 64,
    info: ddp.DistInfo | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Logits plus plain cross-entropy loss and top-1 on preprocessed inputs."""
    logits = predict_logits(model, arrays, batch_size, info)
    t_logits = torch.from_numpy(logits)
    loss = float(nn.functional.cross_entropy(t_logits, torch.from_numpy(labels)))
    top1 = float((logits.argmax(1) == labels).mean()) if len(labels) else 0.0
    return logits, {"val_loss": loss, "val_top1": top1}


# --- checkpoints --------------------------------------------------------------------------


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """The torch, numpy and random generator states."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])


def rank_rng_state(saved: dict[str, Any] | list[dict[str, Any]], info: ddp.DistInfo) -> Any:
    """This process's generator states from a checkpoint's ``rng`` entry.

    Checkpoints hold one state per process (a list in rank order); older ones hold a
    single state, which every process then takes. With another process count than the
    checkpoint's, rank ``r`` takes state ``r % n`` (the run is then not bit-identical).
    """
    if isinstance(saved, dict):
        return saved
    if len(saved) != info.world_size:
        log.warning(
            "checkpoint has RNG states of %d processes, this run has %d",
            len(saved),
            info.world_size,
        )
    return saved[info.rank % len(saved)]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by this module (``weights_only=False``: our own file)."""
    data: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return data


# --- the run ------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What :func:`run_training` leaves behind."""

    out: Path
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    calibration: dict[str, Any] | None
    seconds: float


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl``; a last line cut off by a kill (no newline) is dropped."""
    if not path.is_file():
        return []
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def run_training(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    hook: StepHook | None = None,
    quiet: bool = False,
) -> RunResult:
    """Train, keep the best epoch, then calibrate it on val (the whole ``leafid train``).

    Args:
        cfg: The run's config; ``cfg.out`` is the run folder.
        resume: Continue from ``checkpoint.pt`` in the run folder.
        hook: Called before every step as ``hook(epoch, step)``; raising in it stops the
            run like a kill would (tests use it).
        quiet: Print nothing.

    Raises:
        InvalidRequestError: The run folder already holds a run and ``resume`` is false,
            or ``resume`` is true and there is no checkpoint.
        TrainingFailedError: No epoch had a finite val loss (no ``best.pt``).
    """
    out = Path(cfg.out)
    info = ddp.init_from_env()

    def say(text: str) -> None:
        if info.is_main and not quiet:
            echo(text, err=True)

    ckpt_path, best_path = out / "checkpoint.pt", out / "best.pt"
    metrics_path = out / "metrics.jsonl"
    try:
        if resume:
            if not ckpt_path.is_file():
                raise InvalidRequestError(f"nothing to resume: {ckpt_path} does not exist")
            # only the epoch count and patience may change (e.g. to extend a run)
            saved = TrainConfig.load(out / "config.json")
            cfg = replace(saved, epochs=cfg.epochs, patience=cfg.patience)  # re-validated
        elif ckpt_path.is_file() or (out / "config.json").is_file():
            raise InvalidRequestError(f"{out} already holds a run: use --resume or another --out")
        if cfg.device != "cpu":
            index = int(cfg.device.partition(":")[2] or 0)
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if info.enabled or index >= gpus:
                raise InvalidRequestError(
                    f"--device {cfg.device} needs that CUDA device ({gpus} found) "
                    "and one process (not torchrun)"
                )
        ddp.barrier(info)  # every process has checked before rank 0 writes anything
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed + info.rank)
        data = build_data(cfg, out / "split.json" if resume else None)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            cfg.save(out / "config.json")
            data.split.save(out / "split.json")
        sizes = {k: len(v) for k, v in data.split.leaf.items()}
        say(
            f"{len(data.spec.classes)} classes from {', '.join(r.name for r in data.roots)}; "
            f"train {sizes['train']}, val {sizes['val']}, test {sizes['test']}; "
            f"OOD val {len(data.split.ood['val'])}"
        )
        train_set = load_train_set(
            data, cfg.seed, show=info.is_main and not quiet, oversample=cfg.oversample_factors()
        )
        val_arrays, val_labels = data.eval_arrays("val"), data.labels("val")
        sampler = DistributedSampler(
            train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed
        )
        loader = DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            drop_last=len(sampler) > cfg.batch_size,
        )
        model = build_model(cfg, data.spec).to(cfg.device)
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg.epochs * len(loader), cfg.warmup_steps_frac)
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        ema = build_ema(model, cfg.ema_decay)
        scored = model if ema is None else ema.module  # what is validated, kept and exported
        state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": 0, "stale": 0, "seconds": 0.0}
        if resume:
            ckpt = load_checkpoint(ckpt_path)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ema is not None:
                ema.load_state_dict(ckpt["ema"])
            set_rng_state(rank_rng_state(ckpt["rng"], info))
            state = ckpt["state"]
            if info.is_main:  # drop metrics of epochs the checkpoint does not have
                kept = [m for m in _read_metrics(metrics_path) if m["epoch"] <= state["epoch"]]
                metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))
            say(f"resuming after epoch {state['epoch']}")
        wrapped, phase = model, None
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            if state["stale"] >= cfg.patience > 0:
                say(f"early stop: no val improvement for {state['stale']} epochs")
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
                    show_progress=info.is_main and not quiet,
                    ema=ema,
                )
            )
            if ema is not None:  # each process averaged its own BatchNorm statistics
                ddp.broadcast_buffers(info, ema.module)
            _, val = evaluate(scored, val_arrays, val_labels, info=info)
            row.update(val)
            row["world_size"] = info.world_size
            state["seconds"] += row["seconds"]
            state["epoch"] = epoch
            improved = val["val_loss"] < state["best_val_loss"]
            row["best"] = improved
            if improved:
                state.update(best_val_loss=val["val_loss"], best_epoch=epoch, stale=0)
            else:
                state["stale"] += 1
            rngs = ddp.all_gather(info, rng_state())  # every rank's (dropout differs)
            if info.is_main:
                if improved:
                    atomic_save(
                        {"model": scored.state_dict(), "spec": data.spec.to_json(), "epoch": epoch},
                        best_path,
                    )
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                atomic_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "ema": None if ema is None else ema.state_dict(),
                        "rng": rngs,
                        "state": state,
                        "spec": data.spec.to_json(),
                    },
                    ckpt_path,
                )
            say(
                f"epoch {epoch}/{cfg.epochs} [{row['phase']}] loss {row['train_loss']:.4f} "
                f"val loss {val['val_loss']:.4f} val top-1 {val['val_top1']:.4f} "
                f"({row['images_per_s']:.1f} img/s{', best' if improved else ''})"
            )
        ddp.barrier(info)
    finally:
        ddp.shutdown(info)
    if state["best_epoch"] == 0:  # every val loss was nan (nan < inf is false): no best.pt
        raise TrainingFailedError(
            f"no epoch of {out} had a finite val loss, so there is no best.pt to calibrate "
            "or export; the training diverged (try a lower --lr)"
        )
    calibration = None
    if info.is_main:
        calibration = calibrate_run(out, data)
        say(
            f"calibrated: T={calibration['temperature']:.3f}, "
            f"unknown threshold {calibration['unknown_threshold']:.3f}, "
            f"val ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}"
        )
        summary = {
            "epochs_run": state["epoch"],
            "best_epoch": state["best_epoch"],
            "best_val_loss": state["best_val_loss"],
            "train_seconds": state["seconds"],
            "world_size": info.world_size,
            "labels": data.spec.labels,
            "split_sizes": {k: len(v) for k, v in data.split.leaf.items()},
            "ood_sizes": {k: len(v) for k, v in data.split.ood.items()},
            "training_data": training_data_summary(data),
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return RunResult(
        out,
        state["epoch"],
        state["best_epoch"],
        state["best_val_loss"],
        calibration,
        state["seconds"],
    )


def load_best(run_dir: Path, cfg: TrainConfig) -> tuple[LeafNet, ModelSpec]:
    """The best epoch's network (eval mode) and the spec it was trained with."""
    best = load_checkpoint(run_dir / "best.pt")
    spec = ModelSpec.from_json(best["spec"])
    model = build_leafnet(
        spec, arch=cfg.arch, pretrained=False, checkpoint=None, drop_rate=cfg.drop_rate
    )
    model.load_state_dict(best["model"])
    model.eval()
    return model, spec


def calibrate_run(run_dir: Path, data: RunData | None = None) -> dict[str, Any]:
    """Fit temperature and unknown threshold of the best epoch on val (+ OOD val).

    Writes and returns ``calibration.json``.
    """
    cfg = TrainConfig.load(run_dir / "config.json")
    if data is None:
        data = build_data(cfg, run_dir / "split.json")
    model, _ = load_best(run_dir, cfg)
    logits = predict_logits(model, data.eval_arrays("val"))
    ood = predict_logits(model, data.eval_arrays("val", ood=True)) if data.ood_roots else None
    report = calibration_report(logits, data.labels("val"), ood, keep=cfg.keep_fraction)
    (run_dir / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def training_data_summary(data: RunData) -> dict[str, Any]:
    """Datasets (images, classes, checksum) and split sizes, for the spec and the card."""
    datasets = {}
    for root in data.roots + data.ood_roots:
        digest, count = checksum(root)
        datasets[root.name] = {
            "images": count,
            "checksum": digest,
            "role": "ood" if root in data.ood_roots else "train",
        }
    per_root: dict[str, set[str]] = {}
    for part in data.split.leaf.values():
        for s in part:
            per_root.setdefault(s.root, set()).add(s.label)
    for name, labels in per_root.items():
        datasets[name]["classes"] = len(labels)
    return {
        "datasets": datasets,
        "split": {k: len(v) for k, v in data.split.leaf.items()},
        "ood_split": {k: len(v) for k, v in data.split.ood.items()},
        "split_seed": data.split.seed,
        "split_fractions": list(data.split.fractions),
    }
