"""The result schema shared by the CLI and the HTTP service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leafid.errors import ImageError, LeafidError
from leafid.spec import display_name

CAVEAT = (
    "Visual identification only — not a quality or safety test. A match says nothing "
    "about purity, potency, contamination or safety of any plant product."
)


@dataclass(frozen=True)
class Candidate:
    """One ranked species candidate."""

    slug: str
    scientific_name: str
    common_name: str
    score: float

    @property
    def display_name(self) -> str:
        """The species' name for people (see :func:`leafid.spec.display_name`)."""
        return display_name(self.scientific_name, self.common_name)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "slug": self.slug,
            "scientific_name": self.scientific_name,
            "common_name": self.common_name,
            "display_name": self.display_name,
            "score": round(self.score, 6),
        }


LOW_SCORE = "low_score"
"""``reason_code`` of an answer whose best score is under the unknown threshold: the
photo may not show a leaf clearly, or shows a species that is not in the model's list."""
PHOTOS_DISAGREE = "photos_disagree"
"""``reason_code`` of a fused answer whose photos each point, with confidence, to
different species: they look like different plants."""


@dataclass(frozen=True)
class TaxonMatch:
    """An answer at genus or family rank: no species was likely enough, its taxon is.

    Attributes:
        rank: ``genus`` or ``family``.
        name: The taxon's name.
        score: Its calibrated score: the summed scores of its species.
        hesitates_between: Its likeliest species, best first.
    """

    rank: str
    name: str
    score: float
    hesitates_between: tuple[Candidate, ...]


@dataclass(frozen=True)
class Prediction:
    """The answer for one photo (or one fused set of photos of one plant).

    Attributes:
        results: Top-k candidates, best first, calibrated scores in [0, 1].
        unknown: True when no answer can be given, at any rank.
        reason: Why the answer is unknown, in one sentence (None when it is not).
        model_version: Version of the model that answered.
        reason_code: Why the answer is unknown, for programs: :data:`LOW_SCORE` or
            :data:`PHOTOS_DISAGREE` (None when it is not unknown).
        taxon: The genus or family answer when no species was likely enough (None for a
            species answer or an unknown one).
        flora: The slugs the answer was restricted to (the flora filter), None for all.
    """

    results: tuple[Candidate, ...]
    unknown: bool
    reason: str | None
    model_version: str
    reason_code: str | None = None
    taxon: TaxonMatch | None = None
    flora: tuple[str, ...] | None = None

    @property
    def rank(self) -> str | None:
        """``species``, ``genus`` or ``family``: the rank of the answer (None when unknown)."""
        if self.unknown:
            return None
        return self.taxon.rank if self.taxon else "species"

    @property
    def best_match(self) -> str | None:
        """Slug of the best candidate (a taxon's name at genus or family rank), or None."""
        if self.unknown:
            return None
        return self.taxon.name if self.taxon else self.results[0].slug

    @property
    def match_score(self) -> float | None:
        """The calibrated score of :attr:`best_match` (None when unknown)."""
        if self.unknown:
            return None
        return self.taxon.score if self.taxon else self.results[0].score

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the schema of CLI rows and service answers)."""
        score = self.match_score
        return {
            "best_match": self.best_match,
            "rank": self.rank,
            "match_score": None if score is None else round(score, 6),
            "hesitates_between": (
                [c.to_dict() for c in self.taxon.hesitates_between]
                if self.taxon and not self.unknown
                else None
            ),
            "unknown": self.unknown,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "results": [c.to_dict() for c in self.results],
            "flora": None if self.flora is None else list(self.flora),
            "caveat": CAVEAT,
            "model_version": self.model_version,
        }


@dataclass(frozen=True)
class PhotoPick:
    """One photo's own confident answer, as listed when the photos disagree.

    Attributes:
        index: The photo's place among the photos sent (from 0).
        photo: The photo's name (file name or path).
        candidate: Its best candidate, over the unknown threshold.
    """

    index: int
    photo: str
    candidate: Candidate

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: the photo and its candidate's fields."""
        return {"index": self.index, "photo": self.photo, **self.candidate.to_dict()}


@dataclass(frozen=True)
class Identification:
    """One plant identified from several photos of it.

    Attributes:
        fused: The answer fused from the photos that could be used (unknown, with
            reason code :data:`PHOTOS_DISAGREE`, when they disagree).
        images: Each photo's own answer, or the error saying why it could not be
            used, in the photos' order.
        disagreement: When the photos' own confident answers name different species:
            each such photo and its answer; empty otherwise.
    """

    fused: Prediction
    images: tuple[Prediction | ImageError, ...]
    disagreement: tuple[PhotoPick, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The fused answer's plain-JSON form, with ``disagreement`` (None when they agree)."""
        return {
            **self.fused.to_dict(),
            "disagreement": [p.to_dict() for p in self.disagreement] or None,
        }


def error_dict(exc: LeafidError) -> dict[str, str]:
    """The ``error`` object of an error row or error response."""
    return {"type": exc.code, "message": str(exc)}


def error_item(exc: LeafidError, model_version: str) -> dict[str, Any]:
    """The fields of a row (or item) for an image that could not be answered.

    Like :meth:`Prediction.to_dict`, it carries the caveat and the model's version.
    """
    return {"error": error_dict(exc), "caveat": CAVEAT, "model_version": model_version}
