"""The deterministic train / val / test split of a run's files, saved as ``split.json``.

Files are dealt by a seeded hash of their path within each (root, class) group, so a
file's side does not depend on the other files; frames of one camera capture run stay
on one side (:func:`split_units`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from leafid_train.config import DEFAULT_OOD_SPLIT
from leafid_train.data import DataRoot, DatasetError, Sample, samples_of

SPLITS = ("train", "val", "test")


def _rank(seed: int, sample: Sample) -> str:
    return hashlib.sha256(f"{seed}/{sample.root}/{sample.rel}".encode()).hexdigest()


# A timed camera frame, named as DeepWeeds names them: YYYYMMDD-HHMMSS-CAMERA.jpg.
_FRAME_NAME = re.compile(r"(\d{8})-(\d{6})-(\d+)")
# Frames of one camera less than this apart on one day are one capture run (the rule of
# the staged datasets' SOURCE.md): seconds apart along a transect, nearly the same photo.
CAPTURE_RUN_GAP_S = 120


def _frame_time(sample: Sample) -> tuple[str, str, int] | None:
    """(day, camera, second of the day) of a timed camera frame, or None."""
    m = _FRAME_NAME.fullmatch(PurePosixPath(sample.rel).stem)
    if m is None:
        return None
    day, hms, camera = m.groups()
    seconds = int(hms[:2]) * 3600 + int(hms[2:4]) * 60 + int(hms[4:])
    return day, camera, seconds


def split_units(group: Sequence[Sample]) -> list[list[Sample]]:
    """The files of one (root, class) group that must stay on one side of the split.

    When every file is a timed camera frame (``YYYYMMDD-HHMMSS-CAMERA``), frames of
    one camera on one day taken at most :data:`CAPTURE_RUN_GAP_S` apart form one
    capture run, kept together so that neighbouring frames never straddle train, val
    and test. Any other group is split file by file.
    """
    frames = [(time, s) for s in group if (time := _frame_time(s)) is not None]
    if not group or len(frames) < len(group):
        return [[s] for s in group]
    frames.sort(key=lambda pair: pair[0])
    units: list[list[Sample]] = []
    previous: tuple[str, str, int] | None = None
    for time, sample in frames:
        if (
            previous is None
            or time[:2] != previous[:2]
            or time[2] - previous[2] > CAPTURE_RUN_GAP_S
        ):
            units.append([])
        units[-1].append(sample)
        previous = time
    return units


def split_samples(
    samples: Iterable[Sample], seed: int, fractions: Sequence[float]
) -> dict[str, list[Sample]]:
    """Deterministic stratified split into train/val/test.

    Each (root, class) group is cut into :func:`split_units` (single files, or whole
    capture runs of timed camera frames), the units are ordered by a seeded hash of
    their first file's relative path and dealt to test, then val, then train until
    each side has its share of ``fractions`` (a capture run may take a side a few
    files over). A file's side therefore does not depend on the other files' order.
    Groups of 3+ images get at least one val and one test image (when their fraction
    is > 0), and train keeps at least one unit when its fraction is > 0.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.
    """
    f_train, f_val, f_test = fractions
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.root, s.label)].append(s)
    out: dict[str, list[Sample]] = {name: [] for name in SPLITS}
    for group in groups.values():
        n = len(group)
        n_test = round(n * f_test)
        n_val = min(round(n * f_val), n - n_test) if f_train > 0 else n - n_test
        if n >= 3 and f_train > 0:
            n_test = max(n_test, 1 if f_test > 0 else 0)
            n_val = max(n_val, 1 if f_val > 0 else 0)
            while n - n_test - n_val < 1:
                if n_val >= n_test:
                    n_val -= 1
                else:
                    n_test -= 1
        units = sorted(split_units(group), key=lambda unit: _rank(seed, unit[0]))
        sides: dict[str, list[list[Sample]]] = {name: [] for name in SPLITS}
        targets, counts = {"test": n_test, "val": n_val}, {"test": 0, "val": 0}
        for unit in units:
            side = next((s for s in ("test", "val") if counts[s] < targets[s]), "train")
            sides[side].append(unit)
            if side != "train":
                counts[side] += len(unit)
        if f_train > 0 and not sides["train"] and len(units) > 1:
            fuller = max(("val", "test"), key=lambda s: len(sides[s]))
            sides["train"].append(sides[fuller].pop())
        for name, taken in sides.items():
            out[name].extend(s for unit in taken for s in unit)
    return {name: sorted(items) for name, items in out.items()}


@dataclass
class Split:
    """The files of one run: leaf splits and OOD splits, saved as split.json.

    ``ood`` has ``val`` and ``test`` parts, and a ``train`` part only when the run's OOD
    fractions give train a share (older runs and the default have none).
    """

    seed: int
    fractions: tuple[float, float, float]
    roots: dict[str, str]
    ood_roots: dict[str, str]
    leaf: dict[str, list[Sample]]
    ood: dict[str, list[Sample]]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""

        def rows(items: list[Sample]) -> list[list[str]]:
            return [[s.root, s.rel, s.label] for s in items]

        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            "roots": self.roots,
            "ood_roots": self.ood_roots,
            "splits": {k: rows(v) for k, v in self.leaf.items()},
            "ood": {k: rows(v) for k, v in self.ood.items()},
        }

    def save(self, path: Path) -> None:
        """Write ``split.json``."""
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Split:
        """Read a ``split.json``.

        Raises:
            DatasetError: The file is missing or malformed.
        """
        try:
            data = json.loads(path.read_text())
            return cls(
                seed=int(data["seed"]),
                fractions=tuple(data["fractions"]),
                roots=dict(data["roots"]),
                ood_roots=dict(data["ood_roots"]),
                leaf={k: [Sample(*row) for row in v] for k, v in data["splits"].items()},
                ood={k: [Sample(*row) for row in v] for k, v in data["ood"].items()},
            )
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"cannot read split file {path}: {exc}") from exc


def make_split(
    roots: Sequence[DataRoot],
    ood_roots: Sequence[DataRoot],
    seed: int,
    fractions: Sequence[float],
    ood_fractions: Sequence[float] = DEFAULT_OOD_SPLIT,
) -> Split:
    """Scan the roots and split them, each by capture run (:func:`split_samples`).

    OOD roots are split by ``ood_fractions``; their ``train`` part is kept only when its
    fraction is > 0 (by default OOD roots have val and test halves only).
    """
    leaf = [s for r in roots for s in samples_of(r)]
    ood = [s for r in ood_roots for s in samples_of(r)]
    ood_split = split_samples(ood, seed, ood_fractions)
    ood_parts = SPLITS if ood_fractions[0] > 0 else ("val", "test")
    return Split(
        seed=seed,
        fractions=(float(fractions[0]), float(fractions[1]), float(fractions[2])),
        roots={r.name: str(r.root.resolve()) for r in roots},
        ood_roots={r.name: str(r.root.resolve()) for r in ood_roots},
        leaf=split_samples(leaf, seed, fractions),
        ood={part: ood_split[part] for part in ood_parts},
    )
