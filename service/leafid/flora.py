"""The flora filter: answers restricted to some of the model's classes.

A lab that only cares about a few species (or genera) restricts the answers to them
(``--only`` on the CLI, ``species=``/``genus=`` on the HTTP routes, ``LEAFID_ONLY`` for
the whole service). A photo is answered only when the allowed classes' calibrated
scores together pass the unknown threshold (as a genus must to be answered: otherwise
one allowed species would get the whole score of any photo, a non-leaf one too); then
their scores are renormalised to sum to 1 and the unknown rule (and the back-off to genus
or family) applies to them as usual. Every answer echoes the allowed classes (``flora``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leafid.errors import UnknownNameError
from leafid.spec import ModelSpec


@dataclass(frozen=True, eq=False)
class Flora:
    """The classes answers are restricted to.

    Attributes:
        slugs: The allowed classes' slugs, in the model's output order.
        index: Their output indices.
    """

    slugs: tuple[str, ...]
    index: np.ndarray

    def restrict(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated scores (N, n_classes) with the other classes at 0, renormalised."""
        out = np.zeros_like(probs, dtype=np.float64)
        out[:, self.index] = probs[:, self.index]
        total = out.sum(axis=1, keepdims=True)
        return np.asarray(out / np.where(total > 0, total, 1.0))


def split_names(values: Iterable[str]) -> list[str]:
    """Names given as comma-separated lists (or several values), blanks dropped."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def read_only(value: str) -> list[str]:
    """The names of an ``--only`` value: a file with one name per line, else a list.

    In a file, blank lines and text after ``#`` are ignored.

    Raises:
        UnknownNameError: The value names no class.
    """
    path = Path(value)
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        names = split_names(line.partition("#")[0] for line in lines)
    else:
        names = split_names([value])
    if not names:
        raise UnknownNameError(f"the flora filter {value!r} names no species or genus")
    return names


def resolve_flora(
    spec: ModelSpec, species: Sequence[str] = (), genera: Sequence[str] = ()
) -> Flora | None:
    """The classes the given slugs and genera allow (None when none is given).

    Genera are matched without regard to case; a genus allows all its classes.

    Raises:
        UnknownNameError: A slug or genus is not one of the model's.
    """
    if not species and not genera:
        return None
    slugs = set(spec.labels)
    by_genus: dict[str, set[str]] = {}
    for c in spec.classes:
        if c.genus:
            by_genus.setdefault(c.genus.lower(), set()).add(c.slug)
    unknown = [s for s in species if s not in slugs]
    unknown += [g for g in genera if g.lower() not in by_genus]
    if unknown:
        hint = "" if by_genus else " (this model has no genus names: give species slugs)"
        raise UnknownNameError(
            f"not among the model's species or genera: {', '.join(unknown)}; "
            f"'leafid info' or /v1/species lists them{hint}"
        )
    allowed = set(species).union(*(by_genus[g.lower()] for g in genera))
    index = np.array([i for i, s in enumerate(spec.labels) if s in allowed], dtype=np.int64)
    return Flora(tuple(spec.labels[i] for i in index), index)


def flora_of_names(spec: ModelSpec, names: Sequence[str]) -> Flora | None:
    """The classes a mixed list allows: each name is a class slug, else a genus.

    Raises:
        UnknownNameError: A name is neither.
    """
    slugs = set(spec.labels)
    return resolve_flora(
        spec, [n for n in names if n in slugs], [n for n in names if n not in slugs]
    )
