"""A model's embeddings of image files, computed once and cached by model and file hash.

The embedding is the exported model's ``embedding`` output: the pooled features its
linear head reads (``logits = embedding @ W.T + b``). Images are decoded and run by a
:class:`leafid.Classifier` (:meth:`~leafid.Classifier.try_load`,
:meth:`~leafid.Classifier.run`), as every other path does it, and each embedding is
kept as ``<cache>/<model hash>/<file hash>.npy``, so a second run over the same files
with the same model reads them back instead of running the model. No torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from leafid.classifier import EMBEDDING_OUTPUT, Classifier
from leafid.errors import ImageError, InvalidModelError, MissingOutputError
from leafid.images import read_bytes
from leafid.spec import ModelSpec
from leafid_train.data import DatasetError, file_digest

log = logging.getLogger(__name__)

BATCH = 32
DECODERS = 2  # threads that read and decode while the model runs (Pillow frees the GIL)


class EmbeddingMissingError(InvalidModelError):
    """The model has no ``embedding`` output, so a new head cannot be fitted on it."""

    code = "no_embedding"


def model_digest(model: Path) -> str:
    """The content hash of a model file (16 hex digits)."""
    h = hashlib.sha256()
    with model.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class Embedder:
    """Embeds image files with one model, through a cache folder.

    Args:
        model: An exported fp32 model with an ``embedding`` output.
        cache_dir: The cache's root folder (one sub-folder per model hash); None: no cache.
        threads: onnxruntime intra-op threads (0: its choice).

    Raises:
        EmbeddingMissingError: The model has no ``embedding`` output.
    """

    def __init__(self, model: Path, cache_dir: Path | None, threads: int = 0) -> None:
        self.classifier = Classifier(model, threads=threads)
        self.spec: ModelSpec = self.classifier.spec
        try:
            self.classifier.require_output(EMBEDDING_OUTPUT, "fit a new head")
        except MissingOutputError as exc:
            raise EmbeddingMissingError(
                f"{model} has no {EMBEDDING_OUTPUT!r} output: adding species needs a model "
                "exported with its embedding; re-export the run with this leafid (leafid "
                "export RUN --out MODEL.onnx) or use leafid train"
            ) from exc
        shapes = {o.name: o.shape for o in self.classifier.session.get_outputs()}
        self.width = int(shapes[EMBEDDING_OUTPUT][1])
        self.folder = cache_dir / model_digest(model) if cache_dir is not None else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.computed = 0  # embeddings the model made (not read from the cache)

    def _read(self, path: Path) -> bytes:
        try:
            return read_bytes(path, self.classifier.limits)
        except ImageError as exc:
            raise DatasetError(f"{path}: {exc}") from exc

    def _decode(self, path: Path, data: bytes) -> np.ndarray:
        """The model input of a file's bytes (:meth:`leafid.Classifier.try_load`)."""
        loaded = self.classifier.try_load(data)
        if isinstance(loaded, ImageError):
            raise DatasetError(f"{path}: {loaded}") from loaded
        return loaded

    def _load(self, path: Path) -> tuple[str, np.ndarray, bool]:
        """(file hash, cached embedding or model input, whether it was cached)."""
        data = self._read(path)
        digest = file_digest(data)
        cached = self._cached(digest)
        if cached is not None and cached.is_file():
            return digest, np.load(cached), True
        return digest, self._decode(path, data), False

    def inputs(self, paths: Sequence[Path]) -> np.ndarray:
        """The model inputs of ``paths`` (N, S, S, 3), read and decoded as the Classifier does.

        Raises:
            DatasetError: A file cannot be read or decoded.
        """
        size = self.spec.input_size
        if not paths:
            return np.zeros((0, size, size, 3), dtype=np.uint8)
        with ThreadPoolExecutor(DECODERS) as pool:
            return np.stack(list(pool.map(lambda p: self._decode(p, self._read(p)), paths)))

    def _cached(self, digest: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{digest}.npy"

    def _save(self, digest: str, vector: np.ndarray) -> None:
        target = self._cached(digest)
        if target is None:
            return
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, vector)
        os.replace(tmp, target)

    def embed(self, paths: Sequence[Path]) -> np.ndarray:
        """The embeddings of ``paths`` (N, C), in order.

        Raises:
            DatasetError: A file cannot be read or decoded.
        """
        out: list[np.ndarray] = []
        with ThreadPoolExecutor(DECODERS) as pool:
            for start in range(0, len(paths), BATCH):
                loaded = list(pool.map(self._load, paths[start : start + BATCH]))
                todo = [k for k, (_, _, cached) in enumerate(loaded) if not cached]
                vectors = {}
                if todo:
                    batch = np.stack([loaded[k][1] for k in todo])
                    made = self.classifier.run(batch, [EMBEDDING_OUTPUT])[1][EMBEDDING_OUTPUT]
                    for k, vector in zip(todo, made.astype(np.float32), strict=True):
                        self._save(loaded[k][0], vector)
                        vectors[k] = vector
                    self.computed += len(todo)
                out += [vectors.get(k, item[1]) for k, item in enumerate(loaded)]
        return np.stack(out) if out else np.zeros((0, self.width), dtype=np.float32)
