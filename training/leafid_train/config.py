"""Settings and the resolved training configuration saved with every run."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from leafid.errors import InvalidRequestError

DATA_DIR_ENV = "LEAFID_DATA_DIR"
DEFAULT_DATA_DIR = "../shared/datasets"
MANIFEST_DIR_ENV = "LEAFID_MANIFEST_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST_DIR = REPO_ROOT / "datasets"


def manifest_dir() -> Path:
    """Where dataset manifests live: ``$LEAFID_MANIFEST_DIR`` or the repository's ``datasets/``."""
    return Path(os.environ.get(MANIFEST_DIR_ENV) or MANIFEST_DIR)


def data_dir() -> Path:
    """Where bare dataset names are looked up: ``$LEAFID_DATA_DIR`` or ``../shared/datasets``."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def resolve_root(name_or_path: str) -> Path:
    """Turn a ``--data`` value into a dataset folder.

    A bare name (no path separator, not an existing folder here) is looked up under
    :func:`data_dir`; anything else is used as a path.

    Raises:
        InvalidRequestError: The folder does not exist.
    """
    candidate = Path(name_or_path).expanduser()
    is_bare = os.sep not in name_or_path and "/" not in name_or_path
    if is_bare and not candidate.is_dir():
        candidate = data_dir() / name_or_path
    if not candidate.is_dir():
        where = f" (looked under {data_dir()}, set {DATA_DIR_ENV})" if is_bare else ""
        raise InvalidRequestError(f"dataset folder not found: {name_or_path}{where}")
    return candidate


def read_run_json(path: Path) -> dict[str, Any] | None:
    """A JSON file of a run folder (``eval/metrics.json``...), or None when it is absent."""
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as ``config.json`` in the run folder.

    Attributes:
        data: Dataset roots (names or paths, as given).
        ood: Out-of-distribution roots, used only for the unknown threshold.
        out: The run folder.
        arch: timm architecture name.
        pretrained: Start from the ImageNet weights of ``arch`` (lite0 only).
        checkpoint: Optional backbone weights file for other architectures.
        input_size: Network input side in pixels.
        resize_size: Shorter side before the centre crop (evaluation).
        epochs: Total epochs, head warm-up included.
        head_epochs: First epochs that train only the classifier head.
        batch_size: Images per step (per process under torchrun).
        lr: Peak learning rate of the backbone (AdamW).
        head_lr_scale: Head learning rate = ``lr * head_lr_scale``.
        weight_decay: AdamW weight decay.
        warmup_steps_frac: Fraction of all steps spent on linear warm-up.
        label_smoothing: Cross-entropy label smoothing.
        drop_rate: Dropout before the head.
        ema_decay: Keep an exponential moving average of the weights with this decay per
            step and validate, keep and export it instead of the raw weights (0 = off).
        oversample: ``ROOT=N`` items: each training image of data root ROOT is shown N
            times per epoch (each time with its own augmentation), for a hard root.
        patience: Stop after this many epochs without a better val loss (0 = never).
        seed: Seeds torch, numpy, random and the split.
        split: Train / val / test fractions.
        workers: DataLoader worker processes.
        threads: torch intra-op threads (0 = torch default).
        device: torch device that trains (``cpu``, ``cuda``, ``cuda:1``...); evaluation,
            calibration and export run on the CPU. A resumed CUDA run is not bit-identical
            to an uninterrupted one (the CUDA random state is not checkpointed).
        cache_dir: Optional folder for decoded-image ``.npy`` files.
        verify: Check each root against its manifest in ``datasets/``.
        keep_fraction: Share of correct val answers the unknown threshold keeps.
        model_version: Version string written into the exported spec.
    """

    data: list[str]
    out: str
    ood: list[str] = field(default_factory=list)
    arch: str = "efficientnet_lite0"
    pretrained: bool = True
    checkpoint: str | None = None
    input_size: int = 224
    resize_size: int = 256
    epochs: int = 10
    head_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    head_lr_scale: float = 10.0
    weight_decay: float = 0.05
    warmup_steps_frac: float = 0.05
    label_smoothing: float = 0.1
    drop_rate: float = 0.2
    ema_decay: float = 0.0
    oversample: list[str] = field(default_factory=list)
    patience: int = 4
    seed: int = 20261125
    split: tuple[float, float, float] = (0.70, 0.15, 0.15)
    workers: int = 0
    threads: int = 0
    device: str = "cpu"
    cache_dir: str | None = None
    verify: bool = True
    keep_fraction: float = 0.95
    model_version: str = "0.1.0"

    def __post_init__(self) -> None:
        self.split = tuple(float(v) for v in self.split)  # type: ignore[assignment]
        problems = []
        if not self.data:
            problems.append("at least one --data root is needed")
        if len(self.split) != 3 or min(self.split) < 0 or abs(sum(self.split) - 1) > 1e-6:
            problems.append("split needs three fractions >= 0 that add up to 1")
        if not 0 <= self.head_epochs <= self.epochs or self.epochs < 1:
            problems.append("need epochs >= 1 and 0 <= head_epochs <= epochs")
        if self.batch_size < 1 or self.lr <= 0:
            problems.append("batch_size and lr must be > 0")
        if min(self.workers, self.threads, self.patience) < 0:
            problems.append("workers, threads and patience must be >= 0")
        if not 0 < self.input_size <= self.resize_size:
            problems.append("need 0 < input_size <= resize_size")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            problems.append(f"device must be cpu or cuda[:N], got {self.device!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append("ema_decay must be in [0, 1)")
        if not 0.5 <= self.keep_fraction <= 1.0:
            problems.append("keep_fraction must be in [0.5, 1]")
        try:
            self.oversample_factors()
        except InvalidRequestError as exc:
            problems.append(str(exc))
        if problems:
            raise InvalidRequestError("invalid training config: " + "; ".join(problems))

    def oversample_factors(self) -> dict[str, int]:
        """``oversample`` as {root name: times per epoch}.

        Raises:
            InvalidRequestError: An item is not ``ROOT=N`` with a whole N >= 1, or a root
                is named twice.
        """
        factors: dict[str, int] = {}
        for item in self.oversample:
            root, sep, times = item.rpartition("=")
            if not sep or not root or not times.isdecimal() or int(times) < 1 or root in factors:
                raise InvalidRequestError(
                    f"oversample needs distinct ROOT=N items with N >= 1, got {item!r}"
                )
            factors[root] = int(times)
        return factors

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        data = asdict(self)
        data["split"] = list(self.split)
        return data

    def save(self, path: Path) -> None:
        """Write ``config.json``."""
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read a ``config.json`` written by :meth:`save` (unknown keys are an error)."""
        data = json.loads(path.read_text())
        names = {f.name for f in fields(cls)}
        extra = set(data) - names
        if extra:
            raise InvalidRequestError(f"{path}: unknown config keys {sorted(extra)}")
        data["split"] = tuple(data["split"])
        return cls(**data)
