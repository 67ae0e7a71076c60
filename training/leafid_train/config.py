"""The training configuration (:class:`TrainConfig`) saved with every run, and its options."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from leafid.argtypes import fraction, int_at_least, non_negative_float, positive_float
from leafid.errors import InvalidRequestError
from leafid_train.precheck import MIN_TRAIN_IMAGES

DEFAULT_OOD_SPLIT = (0.0, 0.5, 0.5)
"""Train / val / test fractions of OOD roots unless a run asks otherwise: no train part."""


def option(
    help: str | None = None,
    *,
    metavar: str | tuple[str, ...] | None = None,
    flag: str | None = None,
    resumable: bool = False,
    check: Callable[[str], Any] | None = None,
    old_flag: str | None = None,
) -> dict[str, Any]:
    """The ``leafid train`` option of a :class:`TrainConfig` field (its field metadata).

    Args:
        help: Help text; ``{default}`` is replaced by the field's default.
        metavar: argparse metavar.
        flag: The flag; default ``--field-name``. A bool field's flag flips its default
            (``--no-verify``).
        resumable: A resumed run may change it (:meth:`TrainConfig.resumed`); its flag
            has no default, so that a resumed run keeps its own value when not given.
        check: Parses and range-checks the value on the command line (a
            :mod:`leafid.argtypes` checker); default: the field's type.
        old_flag: The option's former name, still accepted (hidden, with a note).
    """
    return {
        "help": help,
        "metavar": metavar,
        "flag": flag,
        "resumable": resumable,
        "check": check,
        "old_flag": old_flag,
    }


@dataclass(kw_only=True)
class TrainConfig:
    """Everything that decides a training run; saved as ``config.json`` in the run folder.

    Attributes:
        data: Dataset roots (names or paths, as given).
        ood: Out-of-distribution roots: their val part picks the unknown threshold (and
            with ``outlier_exposure``, their train part is trained on).
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
        paste: Data roots of lab photos (a leaf on a plain background) whose leaves are
            cut out and shown on field frames and generated fills.
        paste_prob: Chance that a ``paste`` root's image is shown pasted (else as is).
        greyscale_prob: Chance that any training image is shown in greyscale.
        patience: Stop after this many epochs without a better val loss (0 = never).
        seed: Seeds torch, numpy, random and the split.
        split: Train / val / test fractions.
        ood_split: Train / val / test fractions of the OOD roots (default: val and test
            halves, no train part).
        loader_processes: DataLoader worker processes (``workers`` in older config files).
        threads: torch intra-op threads (0 = torch default).
        device: torch device that trains (``cpu``, ``cuda``, ``cuda:1``...); evaluation,
            calibration and export run on the CPU. A resumed CUDA run is not bit-identical
            to an uninterrupted one (the CUDA random state is not checkpointed).
        cache_dir: Optional folder for decoded-image ``.npy`` files.
        verify: Check each root against its manifest in ``datasets/``.
        strict: Stop with an error where the checks before training
            (:mod:`~leafid_train.precheck`) and the safety report after it
            (:mod:`~leafid_train.safety`) only warn.
        keep_fraction: Share of correct val answers the unknown threshold keeps.
        outlier_exposure: Weight of the outlier-exposure loss on the OOD roots' train
            images (:mod:`~leafid_train.outlier_exposure`; 0 = off).
        outlier_batch: OOD images per training step under outlier exposure (0 = batch_size).
        unknown_rule: How the unknown threshold is chosen on val: ``keep`` (keep
            ``keep_fraction`` of the correct answers) or ``coverage`` (answer the most val
            leaf photos subject to ``answered_right`` and ``reject``).
        answered_right: Coverage rule: least share of answered val leaf photos that are right.
        reject: Coverage rule: ``ROOT=FRACTION`` items, the least share of OOD root ROOT's
            val photos answered unknown.
        model_version: Version string written into the model's spec; None: derived from
            the run (:meth:`TrainConfig.resolved_model_version`).
    """

    data: list[str] = field(
        metadata=option("dataset name or folder (repeat to combine datasets)", metavar="ROOT")
    )
    ood: list[str] = field(
        default_factory=list,
        metadata=option("non-leaf photos used only to pick the unknown threshold", metavar="ROOT"),
    )
    out: str = field(metadata=option("run folder", metavar="RUN"))
    arch: str = field(
        default="efficientnet_lite0", metadata=option("timm architecture (default {default})")
    )
    checkpoint: str | None = field(
        default=None, metadata=option("start from these backbone weights", metavar="PTH")
    )
    pretrained: bool = field(
        default=True,
        metadata=option("random init instead of the ImageNet weights", flag="--no-pretrained"),
    )
    input_size: int = field(default=224, metadata=option(metavar="PX", check=int_at_least(1)))
    resize_size: int = field(default=256, metadata=option(metavar="PX", check=int_at_least(1)))
    epochs: int = field(
        default=10,
        metadata=option(
            "total epochs incl. head warm-up (default {default}; with --resume: the run's)",
            resumable=True,
            check=int_at_least(1),
        ),
    )
    head_epochs: int = field(
        default=1, metadata=option("first epochs train only the head", check=int_at_least(0))
    )
    batch_size: int = field(default=32, metadata=option(check=int_at_least(1)))
    lr: float = field(
        default=1e-3, metadata=option("peak backbone learning rate", check=positive_float)
    )
    head_lr_scale: float = field(default=10.0, metadata=option(check=positive_float))
    weight_decay: float = field(default=0.05, metadata=option(check=non_negative_float))
    warmup_steps_frac: float = 0.05  # no command-line option
    label_smoothing: float = field(default=0.1, metadata=option(check=fraction))
    drop_rate: float = field(default=0.2, metadata=option(check=fraction))
    ema_decay: float = field(
        default=0.0,
        metadata=option(
            "validate and keep an EMA of the weights with this per-step decay (0: off)",
            check=fraction,
        ),
    )
    oversample: list[str] = field(
        default_factory=list,
        metadata=option(
            "show each training image of data root ROOT (its name: the dataset name or "
            "folder name) N times per epoch (repeatable)",
            metavar="ROOT=N",
        ),
    )
    paste: list[str] = field(
        default_factory=list,
        metadata=option(
            "cut the leaves of data root ROOT out of their plain background and show them "
            "on field frames (the --ood train part) and generated fills (repeatable)",
            metavar="ROOT",
        ),
    )
    paste_prob: float = field(
        default=0.5,
        metadata=option(
            "share of a --paste root's images shown pasted each epoch (default {default}; "
            "the rest as they are)",
            check=fraction,
        ),
    )
    greyscale_prob: float = field(
        default=0.0,
        metadata=option(
            "chance that a training image is shown in greyscale (default {default})",
            check=fraction,
        ),
    )
    patience: int = field(
        default=4,
        metadata=option(
            "early stop after N epochs without better val loss (0: never; "
            "default {default}; with --resume: the run's)",
            resumable=True,
            check=int_at_least(0),
        ),
    )
    split: tuple[float, float, float] = field(
        default=(0.70, 0.15, 0.15),
        metadata=option(metavar=("TRAIN", "VAL", "TEST"), check=fraction),
    )
    ood_split: tuple[float, float, float] = field(
        default=DEFAULT_OOD_SPLIT,
        metadata=option(
            "train / val / test fractions of the --ood roots (default: no train part); the "
            "train part gives training its field backgrounds and outlier images",
            metavar=("TRAIN", "VAL", "TEST"),
            check=fraction,
        ),
    )
    seed: int = field(default=20261125, metadata=option(check=int_at_least(0)))
    loader_processes: int = field(
        default=0,
        metadata=option(
            "DataLoader worker processes (0: load in the training process)",
            check=int_at_least(0),
            old_flag="--workers",
        ),
    )
    threads: int = field(
        default=0, metadata=option("torch threads (0: default)", check=int_at_least(0))
    )
    device: str = field(
        default="cpu", metadata=option("torch device that trains: cpu (default) or cuda[:N]")
    )
    cache_dir: str | None = field(
        default=None, metadata=option("keep decoded images here as .npy", metavar="DIR")
    )
    verify: bool = field(
        default=True,
        metadata=option("do not check roots against datasets/ manifests", flag="--no-verify"),
    )
    strict: bool = field(
        default=False,
        metadata=option(
            "stop with an error, not a warning, when the checks before training find the "
            f"same image under two labels, a class with fewer than {MIN_TRAIN_IMAGES} "
            "training images, or no --ood root, and when the safety report after training "
            "finds a figure more than 2 points worse than the shipped model's"
        ),
    )
    keep_fraction: float = field(
        default=0.95,
        metadata=option("share of correct val answers the unknown threshold keeps", check=fraction),
    )
    outlier_exposure: float = field(
        default=0.0,
        metadata=option(
            "weight of the outlier-exposure loss that trains the --ood roots' train images "
            "towards a uniform softmax (0: off; Hendrycks et al. use 0.5)",
            metavar="LAMBDA",
            check=non_negative_float,
        ),
    )
    outlier_batch: int = field(
        default=0,
        metadata=option(
            "OOD images beside each step's leaf batch under --outlier-exposure "
            "(0: --batch-size; fewer make a step cheaper)",
            check=int_at_least(0),
        ),
    )
    unknown_rule: str = field(
        default="keep",
        metadata=option(
            "how the unknown threshold is chosen on val: keep (--keep-fraction of the correct "
            "answers; default) or coverage (answer the most val leaf photos subject to "
            "--answered-right and --reject)",
        ),
    )
    answered_right: float = field(
        default=0.98,
        metadata=option(
            "coverage rule: least share of answered val leaf photos that are right "
            "(default {default})",
            check=fraction,
        ),
    )
    reject: list[str] = field(
        default_factory=list,
        metadata=option(
            "coverage rule: least share of --ood root ROOT's val photos answered unknown "
            "(repeatable, e.g. --reject nonleaf=0.95)",
            metavar="ROOT=FRACTION",
        ),
    )
    model_version: str | None = field(
        default=None,
        metadata=option(
            "version written into the model (default: 0.0.0+RUN, RUN the run folder's name, "
            "which sorts before every released version)",
            metavar="VERSION",
        ),
    )

    def __post_init__(self) -> None:
        self.split = tuple(float(v) for v in self.split)  # type: ignore[assignment]
        self.ood_split = tuple(float(v) for v in self.ood_split)  # type: ignore[assignment]
        problems = []
        if not self.data:
            problems.append("at least one --data root is needed")
        if not _fractions_ok(self.split):
            problems.append("split needs three fractions >= 0 that add up to 1")
        if not _fractions_ok(self.ood_split) or min(self.ood_split[1:]) <= 0:
            problems.append("ood_split needs three fractions >= 0 (val, test > 0) adding up to 1")
        if not 0 <= self.head_epochs <= self.epochs or self.epochs < 1:
            problems.append("need epochs >= 1 and 0 <= head_epochs <= epochs")
        if self.batch_size < 1 or self.lr <= 0:
            problems.append("batch_size and lr must be > 0")
        if min(self.loader_processes, self.threads, self.patience) < 0:
            problems.append("loader_processes, threads and patience must be >= 0")
        if not 0 < self.input_size <= self.resize_size:
            problems.append("need 0 < input_size <= resize_size")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            problems.append(f"device must be cpu or cuda[:N], got {self.device!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append("ema_decay must be in [0, 1)")
        if not (0.0 <= self.paste_prob <= 1.0 and 0.0 <= self.greyscale_prob <= 1.0):
            problems.append("paste_prob and greyscale_prob must be in [0, 1]")
        if len(set(self.paste)) != len(self.paste):
            problems.append(f"paste names a root twice: {self.paste}")
        if not 0.5 <= self.keep_fraction <= 1.0:
            problems.append("keep_fraction must be in [0.5, 1]")
        problems += self._unknown_problems()
        try:
            self.oversample_factors()
        except InvalidRequestError as exc:
            problems.append(str(exc))
        if problems:
            raise InvalidRequestError("invalid training config: " + "; ".join(problems))

    def resolved_model_version(self) -> str:
        """The version the run's model carries: ``model_version``, else ``0.0.0+RUN``.

        RUN is the run folder's name in the characters a local version allows (letters,
        digits, dots), so that a retrained model never looks newer than a released one
        and still says which run made it.
        """
        if self.model_version:
            return self.model_version
        run = re.sub(r"[^0-9A-Za-z]+", ".", Path(self.out).name).strip(".")
        return f"0.0.0+{run or 'dev'}"

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

    def _unknown_problems(self) -> list[str]:
        """What is wrong with the outlier-exposure and unknown-rule options."""
        problems = []
        if self.outlier_exposure < 0:
            problems.append("outlier_exposure must be >= 0")
        if self.outlier_batch < 0:
            problems.append("outlier_batch must be >= 0")
        if self.outlier_exposure > 0 and not self.ood:
            problems.append("outlier_exposure needs --ood roots (their train images)")
        if self.unknown_rule not in UNKNOWN_RULES:
            problems.append(f"unknown_rule must be one of {', '.join(UNKNOWN_RULES)}")
        if not 0.0 <= self.answered_right <= 1.0:
            problems.append("answered_right must be in [0, 1]")
        if self.reject and self.unknown_rule != "coverage":
            problems.append("--reject targets need --unknown-rule coverage")
        try:
            self.reject_targets()
        except InvalidRequestError as exc:
            problems.append(str(exc))
        return problems

    def reject_targets(self) -> dict[str, float]:
        """``reject`` as {OOD root name: least share of its val photos answered unknown}.

        Raises:
            InvalidRequestError: An item is not ``ROOT=FRACTION`` with a fraction in
                [0, 1], or a root is named twice.
        """
        targets: dict[str, float] = {}
        for item in self.reject:
            root, sep, share = item.rpartition("=")
            try:
                value = float(share)
            except ValueError:
                value = -1.0
            if not sep or not root or not 0.0 <= value <= 1.0 or root in targets:
                raise InvalidRequestError(
                    f"reject needs distinct ROOT=FRACTION items with FRACTION in [0, 1], "
                    f"got {item!r}"
                )
            targets[root] = value
        return targets

    def resumed(self, **changes: Any) -> TrainConfig:
        """This saved config as a resumed run takes it.

        Only resumable options (``--epochs``, ``--patience``: e.g. to extend a run) may
        change; a None value keeps the run's own. The result is validated again.

        Raises:
            InvalidRequestError: A change is not resumable, or the result is invalid.
        """
        fixed = sorted(set(changes) - {f.name for f in fields(self) if f.metadata.get("resumable")})
        if fixed:
            raise InvalidRequestError(f"a resumed run keeps its own {', '.join(fixed)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        data = asdict(self)
        data["split"] = list(self.split)
        data["ood_split"] = list(self.ood_split)
        return data

    def save(self, path: Path) -> None:
        """Write ``config.json``."""
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read a ``config.json`` written by :meth:`save` (unknown keys are an error).

        Keys of fields renamed since (:data:`RENAMED_KEYS`) are read under their new name.
        """
        data = json.loads(path.read_text())
        for old, new in RENAMED_KEYS.items():  # config files of older runs
            if old in data and new not in data:
                data[new] = data.pop(old)
        names = {f.name for f in fields(cls)}
        extra = set(data) - names
        if extra:
            raise InvalidRequestError(f"{path}: unknown config keys {sorted(extra)}")
        data["split"] = tuple(data["split"])
        return cls(**data)


UNKNOWN_RULES = ("keep", "coverage")
"""Values of ``--unknown-rule`` (see :mod:`~leafid_train.unknown_rule`)."""


def _fractions_ok(values: tuple[float, ...]) -> bool:
    """Three fractions >= 0 that add up to 1."""
    return len(values) == 3 and min(values) >= 0 and abs(sum(values) - 1) <= 1e-6


RENAMED_KEYS = {"workers": "loader_processes"}
"""Former ``config.json`` keys -> the :class:`TrainConfig` field that replaced them."""
