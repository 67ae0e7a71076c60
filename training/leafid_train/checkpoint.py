"""Checkpoints: atomic writes, every process's RNG state, the resume state, the best epoch."""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leafid.spec import ModelSpec
from leafid_train import ddp
from leafid_train.backbone import LeafNet, build_leafnet
from leafid_train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where a run stands after its last finished epoch (``state`` in ``checkpoint.pt``)."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    stale: int = 0  # epochs since the last better val loss
    seconds: float = 0.0  # training time of the finished epochs

    def record(self, epoch: int, val_loss: float, seconds: float) -> bool:
        """Count a finished epoch; True when its val loss is the best so far."""
        self.seconds += seconds
        self.epoch = epoch
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch, self.stale = val_loss, epoch, 0
        else:
            self.stale += 1
        return improved


@dataclass
class TrainingParts:
    """The objects whose state a checkpoint holds (``ema`` is None without EMA)."""

    model: LeafNet
    optimizer: Any
    scheduler: Any
    ema: Any


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


def save_checkpoint(
    path: Path,
    parts: TrainingParts,
    rngs: list[dict[str, Any]],
    state: TrainState,
    spec: ModelSpec,
) -> None:
    """Write what resuming needs: weights, optimiser, schedule, EMA, every RNG, the state."""
    atomic_save(
        {
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "ema": None if parts.ema is None else parts.ema.state_dict(),
            "rng": rngs,
            "state": asdict(state),
            "spec": spec.to_json(),
        },
        path,
    )


def restore_checkpoint(path: Path, parts: TrainingParts, info: ddp.DistInfo) -> TrainState:
    """Load what :func:`save_checkpoint` wrote into ``parts``, and this process's RNG."""
    ckpt = load_checkpoint(path)
    parts.model.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    if parts.ema is not None:
        parts.ema.load_state_dict(ckpt["ema"])
    set_rng_state(rank_rng_state(ckpt["rng"], info))
    return TrainState(**ckpt["state"])


def save_best(path: Path, model: LeafNet, spec: ModelSpec, epoch: int) -> None:
    """Write the weights of the best epoch (validated ones: the EMA's when there is one)."""
    atomic_save({"model": model.state_dict(), "spec": spec.to_json(), "epoch": epoch}, path)


def load_best(path: Path, cfg: TrainConfig) -> tuple[LeafNet, ModelSpec]:
    """The network of a :func:`save_best` file (eval mode) and the spec it was trained with."""
    best = load_checkpoint(path)
    spec = ModelSpec.from_json(best["spec"])
    model = build_leafnet(
        spec, arch=cfg.arch, pretrained=False, checkpoint=None, drop_rate=cfg.drop_rate
    )
    model.load_state_dict(best["model"])
    model.eval()
    return model, spec
