"""Checks of a run's data before training: what would quietly make a worse model.

Each check names a problem in words a person can act on: the same image under two
labels, a class with too few training images, no ``--ood`` roots. They are warnings,
or one :class:`DataCheckError` with ``--strict``. Standard library and :mod:`leafid`
only at import (the ``--strict`` help names :data:`MIN_TRAIN_IMAGES`).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from leafid.errors import LeafidError

if TYPE_CHECKING:
    from leafid_train.run_data import RunData

log = logging.getLogger(__name__)

MIN_TRAIN_IMAGES = 10
"""A class with fewer training images than this is reported."""

SHOWN = 3
"""How many examples a problem lists."""


class DataCheckError(LeafidError):
    """``--strict``: a check before training found a problem in the data."""

    code = "data_check_failed"
    http_status = 422


def check_data(data: RunData, *, strict: bool, warn: bool = True) -> list[str]:
    """Run every check on a run's data; warn about each problem, or raise with ``strict``.

    Args:
        data: The run's data (roots, split, spec and the cache that hashes the files).
        strict: Raise instead of warning.
        warn: Log the warnings (rank 0 only under torchrun).

    Returns:
        The problems found, one sentence each.

    Raises:
        DataCheckError: ``strict`` and a problem was found.
    """
    problems = [*conflicting_labels(data), *small_classes(data), *missing_ood(data)]
    if strict and problems:
        raise DataCheckError(
            "the data failed the checks before training (--strict): "
            + " ".join(problems)
            + " Without --strict these are warnings."
        )
    if warn:
        for problem in problems:
            log.warning("check before training: %s", problem)
    return problems


def conflicting_labels(data: RunData) -> list[str]:
    """The same file content (hash of its bytes) under two labels.

    The labels are the leaf classes and, for the images of the ``--ood`` roots,
    "--ood ROOT": a leaf photo among them teaches the unknown threshold to reject it.
    """
    seen: dict[str, dict[str, str]] = defaultdict(dict)  # hash -> {label: first file}
    for ood in (False, True):
        for part, items in (data.split.ood if ood else data.split.leaf).items():
            for item, path in zip(items, data.paths(part, ood), strict=True):
                label = f"--ood {item.root}" if ood else item.label
                seen[data.cache.digest(path)].setdefault(label, f"{item.root}/{item.rel}")
    clashes = [files for files in seen.values() if len(files) > 1]
    if not clashes:
        return []
    examples = "; ".join(
        " = ".join(f"{file} ({label})" for label, file in sorted(files.items()))
        for files in clashes[:SHOWN]
    )
    more = f"; and {len(clashes) - SHOWN} more" if len(clashes) > SHOWN else ""
    return [
        f"{len(clashes)} image(s) are the same file under two labels, so the model is taught "
        f"both answers for one photo and val and test count one of them wrong: {examples}"
        f"{more}. Remove each from the folders it does not belong in."
    ]


def small_classes(data: RunData) -> list[str]:
    """Classes with fewer than :data:`MIN_TRAIN_IMAGES` training images."""
    counts = Counter(item.label for item in data.split.leaf["train"])
    small = [
        (label, counts[label]) for label in data.spec.labels if counts[label] < MIN_TRAIN_IMAGES
    ]
    if not small:
        return []
    listed = ", ".join(f"{label} {n}" for label, n in small[:SHOWN])
    more = f" and {len(small) - SHOWN} more" if len(small) > SHOWN else ""
    return [
        f"{len(small)} class(es) have fewer than {MIN_TRAIN_IMAGES} training images "
        f"({listed}{more}): the model learns them poorly and their val and test figures "
        "rest on a few photos. Add photos, or leave the class out."
    ]


def missing_ood(data: RunData) -> list[str]:
    """No ``--ood`` roots: what the run then lacks."""
    if data.ood_roots:
        return []
    return [
        "no --ood roots: the unknown threshold is set from leaf photos alone, never tried "
        "on photos that are not leaves, and there will be no figure for how many such "
        "photos the model rejects. Add e.g. --ood nonleaf --ood unlisted-plants."
    ]
