"""What backs an answer up: similar reference photos, and where the model looked.

Both are opt-in. A plain answer fetches only the model's logits; with :class:`Evidence`
on, the same single model call also fetches each photo's embedding (to find the
reference photos most like it, :mod:`leafid.references`) and its class maps (for the
heat overlay of the top answer, :mod:`leafid.heatmap`). The CLI and the service show
the result each in their own way (files and paths; URLs and inline images).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leafid import heatmap
from leafid.classifier import (
    CLASS_MAPS_OUTPUT,
    EMBEDDING_OUTPUT,
    Classifier,
    Loaded,
    in_place,
    usable,
)
from leafid.errors import ImageError
from leafid.options import DEFAULT_SIMILAR
from leafid.output import Row, success_row
from leafid.references import ReferenceIndex, ReferenceMatch, normalised
from leafid.results import Identification, Prediction

Link = Callable[[ReferenceMatch], dict[str, Any]]
"""Turns a reference photo into its plain-JSON form for one front end."""


@dataclass(frozen=True)
class Evidence:
    """Which evidence to add to answers.

    Attributes:
        references: The reference photos to search (None: none shown).
        similar: Reference photos shown per candidate species (0: none).
        explain: Add the heat overlay of where the model looked for the top answer.
    """

    references: ReferenceIndex | None = None
    similar: int = DEFAULT_SIMILAR
    explain: bool = False

    @property
    def outputs(self) -> tuple[str, ...]:
        """The model outputs this evidence needs besides the logits."""
        wanted = []
        if self.references is not None and self.similar > 0:
            wanted.append(EMBEDDING_OUTPUT)
        if self.explain:
            wanted.append(CLASS_MAPS_OUTPUT)
        return tuple(wanted)

    def check(self, classifier: Classifier) -> None:
        """Check that the model can give this evidence.

        Raises:
            MissingOutputError: The model predates an output it needs.
            InvalidReferencesError: The references were indexed with another model.
        """
        if self.references is not None:
            self.references.check_model(classifier)
        if self.explain:
            classifier.require_output(CLASS_MAPS_OUTPUT, heatmap.PURPOSE)


@dataclass(frozen=True)
class Backing:
    """What backs one answer up.

    Attributes:
        references: For each candidate species with reference photos, those most like
            the photo, most similar first (None when not asked).
        heatmap: PNG of where the model looked (None when not asked).
        heatmap_slug: The class whose map :attr:`heatmap` shows: the top answer's.
    """

    references: dict[str, list[ReferenceMatch]] | None = None
    heatmap: bytes | None = None
    heatmap_slug: str | None = None

    def add_references(self, answer: dict[str, Any], link: Link) -> dict[str, Any]:
        """``answer`` (a :meth:`Prediction.to_dict`) with each candidate's ``references``."""
        if self.references is not None:
            for candidate in answer["results"]:
                found = self.references.get(candidate["slug"], [])
                candidate["references"] = [link(match) for match in found]
        return answer


def _references(
    evidence: Evidence, out: dict[str, np.ndarray], answers: Sequence[Prediction]
) -> list[dict[str, list[ReferenceMatch]] | None]:
    """Each answer's reference photos, searched with the embedding of its row of ``out``."""
    if evidence.references is None or EMBEDDING_OUTPUT not in out:
        return [None] * len(answers)
    slugs = [[c.slug for c in answer.results] for answer in answers]
    return list(evidence.references.nearest(out[EMBEDDING_OUTPUT], slugs, evidence.similar))


def _heatmaps(
    classifier: Classifier, batch: np.ndarray, out: dict[str, np.ndarray], slugs: Sequence[str]
) -> list[Backing]:
    """Each input's backing with the heat overlay of the class named beside it, if asked."""
    if CLASS_MAPS_OUTPUT not in out:
        return [Backing() for _ in slugs]
    labels = classifier.spec.labels
    return [
        Backing(
            heatmap=heatmap.overlay_png(item, classifier.spec, maps[labels.index(slug)]),
            heatmap_slug=slug,
        )
        for item, maps, slug in zip(batch, out[CLASS_MAPS_OUTPUT], slugs, strict=True)
    ]


def _placed(loaded: Sequence[Loaded], backings: list[Backing]) -> list[Backing | None]:
    """The backings of the good inputs in their places, None where an input failed."""
    return [b if isinstance(b, Backing) else None for b in in_place(loaded, backings)]


def classify(
    classifier: Classifier, evidence: Evidence, loaded: Sequence[Loaded], top_k: int
) -> tuple[list[Prediction | ImageError], list[Backing | None]]:
    """:meth:`Classifier.classify_loaded` with each answer's evidence, in one model call.

    Returns:
        The answers (errors in their places), and each answer's backing (None for an
        error).
    """
    good = [item for item in loaded if isinstance(item, np.ndarray)]
    if not good:
        return in_place(loaded, []), [None] * len(loaded)
    batch = np.stack(good)
    probs, out = classifier.run(batch, evidence.outputs)
    answers = classifier.predictions(probs, top_k)
    references = _references(evidence, out, answers)
    heat = _heatmaps(classifier, batch, out, [answer.results[0].slug for answer in answers])
    backings = [
        dataclasses.replace(b, references=refs) for b, refs in zip(heat, references, strict=True)
    ]
    return in_place(loaded, answers), _placed(loaded, backings)


def identify(
    classifier: Classifier,
    evidence: Evidence,
    loaded: Sequence[Loaded],
    names: Sequence[str],
    top_k: int,
) -> tuple[Identification, Backing, list[Backing | None]]:
    """:meth:`Classifier.identify_loaded` with evidence, in one model call.

    The fused answer's reference photos are searched with the mean of the used photos'
    normalised embeddings; each used photo gets the heat overlay of the fused answer's
    top class.

    Returns:
        The identification, the fused answer's backing, and each photo's (None for a
        photo that could not be used).

    Raises:
        InvalidRequestError: There are no photos.
        ImageError: None of the photos could be used (see :func:`usable`).
    """
    batch = np.stack(usable(loaded, names))
    probs, out = classifier.run(batch, evidence.outputs)
    identified = classifier.identify_probabilities(loaded, names, probs, top_k)
    if EMBEDDING_OUTPUT in out:
        mean = normalised(out[EMBEDDING_OUTPUT]).mean(axis=0, keepdims=True)
        out = {**out, EMBEDDING_OUTPUT: mean}
    (refs,) = _references(evidence, out, [identified.fused])
    top = identified.fused.results[0].slug
    per_photo = _heatmaps(classifier, batch, out, [top] * len(batch))
    return identified, Backing(references=refs), _placed(loaded, per_photo)


@dataclass
class HeatmapFolder:
    """Where ``--explain DIR`` writes one heat overlay PNG per photo.

    Each photo's PNG is named after its file (``leaf.jpg`` -> ``leaf.png``); a name
    already written in this run gets ``-2``, ``-3``... added.

    Args:
        folder: The folder (made if missing).
    """

    folder: Path
    _used: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, photo: str, png: bytes) -> Path:
        """Write a photo's overlay; return the file written."""
        stem = re.sub(r"[^\w.-]+", "_", Path(photo).stem) or "photo"
        name, n = f"{stem}.png", 1
        while name in self._used:
            n += 1
            name = f"{stem}-{n}.png"
        self._used.add(name)
        target = self.folder / name
        target.write_bytes(png)
        return target


@dataclass
class RowEvidence:
    """Evidence in the CLI's rows.

    Each candidate's reference photos with their files, and the heat overlay written
    to a folder (``--explain DIR``).

    Args:
        evidence: What to add.
        heatmaps: Where overlays are written (None unless ``evidence.explain``).
    """

    evidence: Evidence
    heatmaps: HeatmapFolder | None = None

    def link(self, match: ReferenceMatch) -> dict[str, Any]:
        """A reference photo in a row: its path in the reference folder, and its file."""
        assert self.evidence.references is not None
        return {**match.to_dict(), "file": str(self.evidence.references.folder / match.path)}

    def explain(self, photo: str, backing: Backing) -> dict[str, Any] | None:
        """The ``explain`` field of a photo's row: the overlay's class and file written."""
        if self.heatmaps is None or backing.heatmap is None:
            return None
        file = self.heatmaps.write(photo, backing.heatmap)
        return {"slug": backing.heatmap_slug, "file": str(file)}

    def row(self, photo: str, answer: Prediction, backing: Backing) -> Row:
        """The row of a classified photo, with its evidence."""
        row = success_row(photo, answer)
        backing.add_references(row, self.link)
        if (explained := self.explain(photo, backing)) is not None:
            row["explain"] = explained
        return row

    def classify(
        self, classifier: Classifier, photos: Sequence[str], loaded: Sequence[Loaded], top_k: int
    ) -> tuple[list[Prediction | ImageError], list[Row | None]]:
        """:func:`classify` the photos; each answer's row with its evidence (None: error)."""
        answers, backings = classify(classifier, self.evidence, loaded, top_k)
        rows = [
            self.row(photo, answer, backing)
            if isinstance(answer, Prediction) and backing is not None
            else None
            for photo, answer, backing in zip(photos, answers, backings, strict=True)
        ]
        return answers, rows

    def identify(
        self, classifier: Classifier, photos: Sequence[str], loaded: Sequence[Loaded], top_k: int
    ) -> Row:
        """:func:`identify` the photos of one plant: the fused answer's fields with evidence.

        Raises:
            InvalidRequestError: There are no photos.
            ImageError: None of the photos could be used.
        """
        identified, fused, per_photo = identify(classifier, self.evidence, loaded, photos, top_k)
        answer = fused.add_references(identified.to_dict(), self.link)
        explained = [
            {"photo": photo, **shown}
            for photo, backing in zip(photos, per_photo, strict=True)
            if backing is not None and (shown := self.explain(photo, backing)) is not None
        ]
        if explained:
            answer["explain"] = explained
        return answer
