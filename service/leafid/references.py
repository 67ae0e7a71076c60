"""Similar reference photos: an index of a folder of labelled photos, and its search.

``leafid index REF_DIR -o refs.npz`` embeds every photo of an ImageFolder
(``REF_DIR/<class slug>/.../*.jpg``) with the model's embedding output, L2-normalised,
and saves the vectors with their class slugs, their paths in the folder, the folder and
the model's name and version (an index only means something to the model that made
it). An answer then shows, for each of its candidates, the reference photos of that
species most like the photo: cosine similarity, one matrix product over the
normalised vectors of that species' photos.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from leafid.batch import decoded_batches, find_images, progress_bar
from leafid.classifier import EMBEDDING_OUTPUT, Classifier, in_place
from leafid.errors import (
    ImageError,
    ImageNotFoundError,
    InvalidReferencesError,
    InvalidRequestError,
)
from leafid.images import ImageLimits, decode, read_bytes

INDEX_FORMAT = 1
PURPOSE = "find similar reference photos"
THUMBNAIL_SIDE = 256


@dataclass(frozen=True)
class ReferenceMatch:
    """One reference photo like the photo asked about.

    Attributes:
        slug: Its class.
        path: Its path inside the reference folder (``/``-separated).
        similarity: Cosine similarity of its embedding and the photo's, in [-1, 1].
    """

    slug: str
    path: str
    similarity: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the class is the candidate it is listed under)."""
        return {"path": self.path, "similarity": round(self.similarity, 4)}


def normalised(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero row stays zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass
class ReferenceIndex:
    """Embedded reference photos, grouped by class, and the model that embedded them.

    Args:
        vectors: One L2-normalised embedding per photo (float32 [N, C]).
        slugs: Each photo's class slug.
        paths: Each photo's path inside ``folder`` (``/``-separated).
        folder: The reference folder.
        model_name: Name of the model that made the embeddings.
        model_version: Its version.

    Raises:
        InvalidReferencesError: The arrays do not fit together.
    """

    vectors: np.ndarray
    slugs: tuple[str, ...]
    paths: tuple[str, ...]
    folder: Path
    model_name: str
    model_version: str
    _groups: dict[str, tuple[int, int]] = field(init=False, repr=False)
    _rows: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.slugs)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n or len(self.paths) != n or n == 0:
            raise InvalidReferencesError(
                f"reference index of {self.vectors.shape} vectors, {n} slugs and "
                f"{len(self.paths)} paths: they must be as many, and more than none"
            )
        # each class's photos next to each other: one class is one slice, read without a copy
        order = np.argsort(np.asarray(self.slugs), kind="stable")
        self.vectors = np.ascontiguousarray(self.vectors[order], dtype=np.float32)
        self.slugs = tuple(self.slugs[i] for i in order)
        self.paths = tuple(self.paths[i] for i in order)
        names, starts, counts = np.unique(np.asarray(self.slugs), True, False, True)
        self._groups = {
            str(s): (int(a), int(a + c)) for s, a, c in zip(names, starts, counts, strict=True)
        }
        self._rows = {p: i for i, p in enumerate(self.paths)}

    def __len__(self) -> int:
        return len(self.slugs)

    @property
    def classes(self) -> list[str]:
        """The slugs of the classes with reference photos, sorted."""
        return list(self._groups)

    def check_model(self, classifier: Classifier) -> None:
        """Refuse to be used with another model than the one that made the embeddings.

        Raises:
            MissingOutputError: The model has no embedding output.
            InvalidReferencesError: The index was made with another model.
        """
        classifier.require_output(EMBEDDING_OUTPUT, PURPOSE)
        spec = classifier.spec
        if (self.model_name, self.model_version) != (spec.model_name, spec.model_version):
            raise InvalidReferencesError(
                f"the reference index was made with model {self.model_name} "
                f"{self.model_version}, not with the loaded {spec.model_name} "
                f"{spec.model_version}: embeddings of different models cannot be compared; "
                "index the reference folder again with this model (leafid index)"
            )

    def nearest(
        self, queries: np.ndarray, classes: Sequence[Sequence[str]], k: int
    ) -> list[dict[str, list[ReferenceMatch]]]:
        """The ``k`` reference photos most like each query, in each of its classes.

        Args:
            queries: Embeddings [M, C] (normalised here).
            classes: For each query, the slugs to look in (its answer's candidates).
            k: Photos per class at most, most similar first.

        Returns:
            For each query, its classes that have reference photos, each with its matches.
        """
        queries = normalised(queries)
        found: list[dict[str, list[ReferenceMatch]]] = [{} for _ in classes]
        asked: dict[str, list[int]] = {}
        for q, slugs in enumerate(classes):
            for slug in slugs:
                if slug in self._groups:
                    asked.setdefault(slug, []).append(q)
        for slug, which in asked.items():
            start, stop = self._groups[slug]
            # one pass over the class's photos for every query that asks for it
            sims = self.vectors[start:stop] @ queries[which].T  # [photos, queries]
            take = min(k, stop - start)
            top = np.argpartition(-sims, take - 1, axis=0)[:take]
            for j, q in enumerate(which):
                rows = top[np.argsort(-sims[top[:, j], j], kind="stable"), j]
                found[q][slug] = [
                    ReferenceMatch(slug, self.paths[start + r], float(sims[r, j])) for r in rows
                ]
        return found

    def file(self, path: str) -> Path:
        """The file of a photo listed in the index, inside the reference folder.

        Raises:
            ImageNotFoundError: ``path`` is not listed, or its file is not (or no longer)
                inside the reference folder (a link out of it, say).
        """
        if path not in self._rows:
            raise ImageNotFoundError(f"no reference photo {path!r}")
        folder = self.folder.resolve()
        file = (folder / path).resolve()
        if not file.is_relative_to(folder) or not file.is_file():
            raise ImageNotFoundError(f"no reference photo {path!r}")
        return file

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to an ``.npz`` file (replacing it whole, or not at all)."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=".refs-", suffix=".npz", dir=target.parent or ".")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    format=np.asarray(INDEX_FORMAT),
                    vectors=self.vectors,
                    slugs=np.asarray(self.slugs),
                    paths=np.asarray(self.paths),
                    folder=np.asarray(str(self.folder)),
                    model_name=np.asarray(self.model_name),
                    model_version=np.asarray(self.model_version),
                )
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceIndex:
        """Read an index written by :meth:`save`.

        Raises:
            InvalidReferencesError: The file is missing or not a leafid reference index.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != INDEX_FORMAT:
                    raise InvalidReferencesError(
                        f"{path}: reference index format {int(data['format'])}, this leafid "
                        f"reads {INDEX_FORMAT}: index the folder again"
                    )
                return cls(
                    vectors=data["vectors"].astype(np.float32),
                    slugs=tuple(str(s) for s in data["slugs"]),
                    paths=tuple(str(p) for p in data["paths"]),
                    folder=Path(str(data["folder"])),
                    model_name=str(data["model_name"]),
                    model_version=str(data["model_version"]),
                )
        except InvalidReferencesError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InvalidReferencesError(
                f"cannot read reference index {path}: {exc}; make one with 'leafid index'"
            ) from exc


@dataclass
class IndexReport:
    """What :func:`build_index` did besides the index.

    Attributes:
        failed: Each photo that could not be used, with why.
        other_folders: Folders of the reference folder not named after a class of the
            model: their photos are not indexed (no answer could show them).
    """

    failed: list[tuple[str, ImageError]] = field(default_factory=list)
    other_folders: list[str] = field(default_factory=list)


def reference_photos(folder: Path, slugs: Sequence[str]) -> tuple[list[str], IndexReport]:
    """The photos of an ImageFolder whose class folders are named after ``slugs``.

    Returns:
        The photos' paths (class folders sorted, sub-folders included), and the report
        with the folders left out and the links to files outside ``folder`` (which the
        service would not serve).
    """
    report = IndexReport()
    paths: list[str] = []
    known = set(slugs)
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if entry.name not in known:
            report.other_folders.append(entry.name)
            continue
        for path in find_images([str(entry)], recursive=True):
            # the service serves only files inside the folder (ReferenceIndex.file)
            if Path(path).resolve().is_relative_to(folder):
                paths.append(path)
            else:
                outside = ImageNotFoundError("a link to a file outside the reference folder")
                report.failed.append((path, outside))
    return paths, report


def build_index(
    classifier: Classifier,
    folder: str | os.PathLike[str],
    *,
    decode_threads: int,
    batch_size: int,
    progress: bool = False,
) -> tuple[ReferenceIndex, IndexReport]:
    """Embed the photos of a reference folder (an ImageFolder) with the model.

    Photos are decoded as ``leafid classify`` decodes them; one that cannot be used is
    left out and named in the report.

    Raises:
        MissingOutputError: The model has no embedding output.
        InvalidRequestError: The folder does not exist or has no usable photo of a
            class of the model.
    """
    classifier.require_output(EMBEDDING_OUTPUT, PURPOSE)
    root = Path(folder).resolve()
    if not root.is_dir():
        raise InvalidRequestError(f"reference folder {folder} is not a folder")
    files, report = reference_photos(root, classifier.spec.labels)
    vectors: list[np.ndarray] = []
    kept: list[str] = []
    bar = progress_bar(len(files)) if progress else None
    try:
        for batch in _embedded_batches(classifier, files, decode_threads, batch_size):
            for path, item in batch:
                if isinstance(item, ImageError):
                    report.failed.append((path, item))
                else:
                    kept.append(path)
                    vectors.append(item)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    if not kept:
        raise InvalidRequestError(
            f"no usable photo in a folder of {folder} named after a class of the model "
            "(REF_DIR/<class slug>/*.jpg; the slugs: leafid info)"
        )
    relative = [Path(p).relative_to(root).as_posix() for p in kept]
    index = ReferenceIndex(
        vectors=np.stack(vectors),
        slugs=tuple(r.split("/", 1)[0] for r in relative),
        paths=tuple(relative),
        folder=root,
        model_name=classifier.spec.model_name,
        model_version=classifier.model_version,
    )
    return index, report


def _embedded_batches(
    classifier: Classifier, files: Sequence[str], decode_threads: int, batch_size: int
) -> Iterator[list[tuple[str, np.ndarray | ImageError]]]:
    """Each batch's photos with their normalised embedding, or why they could not be used."""
    with closing(decoded_batches(classifier, files, decode_threads, batch_size)) as batches:
        for batch, _ in batches:
            loaded = [item for _, item in batch]
            good = [item for item in loaded if isinstance(item, np.ndarray)]
            vectors = np.empty((0, 0), np.float32)
            if good:
                _, out = classifier.run(np.stack(good), [EMBEDDING_OUTPUT])
                vectors = normalised(out[EMBEDDING_OUTPUT])
            yield list(zip([path for path, _ in batch], in_place(loaded, vectors), strict=True))


def thumbnail_jpeg(file: Path, limits: ImageLimits) -> bytes:
    """A small JPEG of a reference photo, its longer side at most :data:`THUMBNAIL_SIDE`.

    Raises:
        ImageError: The file is no longer a usable image.
    """
    img: Image.Image = decode(read_bytes(file, limits), limits, min_side=THUMBNAIL_SIDE)
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()
