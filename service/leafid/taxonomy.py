"""Backing off from species to genus or family: calibrated scores summed per taxon.

When no species is likely enough to name, the answer may still be sure of the genus
(the scores of its species summed), then of the family, as iNaturalist rolls scores up
its tree. Each rank has its own threshold, chosen on val (``spec.taxon_thresholds``);
a model without taxonomy or thresholds answers at species rank only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from leafid.spec import TAXON_RANKS, ClassInfo

RANKS = ("species", *TAXON_RANKS)
"""The ranks an answer can be given at, most specific first."""
HESITATION = 3
"""Most species named as the ones a genus or family answer hesitates between."""


@dataclass(frozen=True)
class Taxa:
    """A model's classes grouped by their taxon at one rank.

    Attributes:
        rank: ``genus`` or ``family``.
        names: The taxa, in order of their first class.
        members: For each class, the index of its taxon in ``names`` (-1: none known).
    """

    rank: str
    names: tuple[str, ...]
    members: np.ndarray
    onehot: np.ndarray  # (n_classes, len(names)): 1 where a class belongs to a taxon

    @classmethod
    def of(cls, classes: Sequence[ClassInfo], rank: str) -> Taxa:
        """The taxa of ``classes`` at ``rank``."""
        names = tuple(dict.fromkeys(n for c in classes if (n := c.taxon(rank))))
        index = {n: i for i, n in enumerate(names)}
        members = np.array([index.get(c.taxon(rank) or "", -1) for c in classes], dtype=np.int64)
        onehot = (members[:, None] == np.arange(len(names))[None, :]).astype(np.float64)
        return cls(rank, names, members, onehot)

    def sums(self, probs: np.ndarray) -> np.ndarray:
        """Each taxon's summed score, (N, len(names)), from class scores (N, n_classes)."""
        sums: np.ndarray = np.asarray(probs, dtype=np.float64) @ self.onehot
        return sums


@dataclass(frozen=True)
class BackOff:
    """An answer at genus or family rank.

    Attributes:
        rank: ``genus`` or ``family``.
        name: The taxon's name.
        score: Its summed calibrated score.
        members: The indices of the taxon's classes, best first.
    """

    rank: str
    name: str
    score: float
    members: tuple[int, ...]


def back_off(
    row: np.ndarray, taxa: Sequence[Taxa], thresholds: Mapping[str, float]
) -> BackOff | None:
    """The most specific taxon whose summed score reaches its rank's threshold, if any.

    Args:
        row: One photo's calibrated class scores.
        taxa: The model's taxa per rank, most specific first.
        thresholds: {rank: threshold}; a rank without one is skipped.
    """
    for t in taxa:
        if t.rank not in thresholds or not t.names:
            continue
        sums = t.sums(row[None, :])[0]
        best = int(np.argmax(sums))
        if sums[best] >= thresholds[t.rank]:
            inside = np.flatnonzero(t.members == best)
            members = inside[np.argsort(-row[inside], kind="stable")]
            return BackOff(t.rank, t.names[best], float(sums[best]), tuple(int(i) for i in members))
    return None
