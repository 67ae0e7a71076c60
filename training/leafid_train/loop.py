"""The training loop's parts: model, optimiser, schedule, EMA, one epoch and validation."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from leafid.spec import ModelSpec
from leafid_train import ddp
from leafid_train.backbone import PRETRAINED_ARCHS, LeafNet, build_leafnet
from leafid_train.config import TrainConfig
from leafid_train.outlier_exposure import outlier_exposure_loss
from leafid_train.progress import EpochProgress

log = logging.getLogger(__name__)

StepHook = Callable[[int, int], None]  # (epoch, step) -> None


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
    ood_batches: Iterable[Any] | None = None,
    ood_weight: float = 0.0,
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
        show_progress: Show how far the epoch is (:class:`~leafid_train.progress.EpochProgress`):
            a bar on a terminal, else a line on stderr every half minute.
        ema: Optional :func:`build_ema` average, updated after every step.
        ood_batches: Outlier exposure: batches of (OOD images, anything), at least one
            per step; each step adds ``ood_weight`` times the
            :func:`~leafid_train.outlier_exposure.outlier_exposure_loss` of its OOD batch,
            scored in the same forward pass as the leaf batch.
        ood_weight: The weight of that loss.

    Returns:
        Mean loss, top-1 on the augmented images, image count, seconds and images/s;
        with ``ood_batches`` also the mean outlier-exposure loss (unweighted).
    """
    net = model.module if hasattr(model, "module") else model
    model.train()
    if head_only:
        net.backbone.eval()
        net.backbone.get_classifier().train()
    device = next(net.parameters()).device
    ood = None if ood_batches is None else iter(ood_batches)
    total_loss, total_ood_loss, correct, seen = 0.0, 0.0, 0, 0
    start = time.perf_counter()
    shown = EpochProgress(f"epoch {epoch}", len(loader), _epoch_images(loader), show=show_progress)
    for step, (images, labels) in enumerate(shown.over(loader)):
        if hook is not None:
            hook(epoch, step)
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad(set_to_none=True)
        if ood is None:
            logits = model(images)
            loss = criterion(logits, labels)
            objective = loss
        else:
            both = model(torch.cat([images, next(ood)[0].to(device)]))
            logits = both[: len(labels)]
            loss = criterion(logits, labels)
            ood_loss = outlier_exposure_loss(both[len(labels) :])
            objective = loss + ood_weight * ood_loss
            total_ood_loss += float(ood_loss.detach()) * len(labels)
        objective.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(net)
        n = len(labels)
        total_loss += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1) == labels).sum())
        seen += n
    seconds = time.perf_counter() - start
    stats = {
        "train_loss": total_loss / max(1, seen),
        "train_top1": correct / max(1, seen),
        "train_images": seen,
        "seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else 0.0,
    }
    if ood is not None:
        stats["train_ood_loss"] = total_ood_loss / max(1, seen)
    return stats


def _epoch_images(loader: DataLoader) -> int:  # type: ignore[type-arg]
    """Images one pass over ``loader`` shows (this process's share under torchrun)."""
    if loader.drop_last and loader.batch_size:
        return len(loader) * loader.batch_size
    return len(loader.sampler)  # type: ignore[arg-type]


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


def validate(
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
