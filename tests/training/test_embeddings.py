"""Embeddings of image files, cached by model and file hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_model, noisy, tiny_spec
from leafid_train.data import DatasetError
from leafid_train.embeddings import Embedder


def test_embeddings_are_cached_per_model_and_file_content(tmp_path: Path) -> None:
    files = []
    for i, colour in enumerate([(200, 10, 10), (10, 200, 10)]):
        files.append(tmp_path / f"{i}.jpg")
        noisy(colour, (48, 40), seed=i).save(files[-1])
    model = make_tiny_model(tmp_path / "a.onnx", embedding=True)
    first = Embedder(model, tmp_path / "cache")
    vectors = first.embed(files)
    assert vectors.shape == (2, 3) and first.computed == 2
    assert vectors[0, 0] > vectors[0, 1] and vectors[1, 1] > vectors[1, 0]  # mean colours
    again = Embedder(model, tmp_path / "cache")
    np.testing.assert_array_equal(again.embed(files), vectors)
    assert again.computed == 0
    other = make_tiny_model(tmp_path / "b.onnx", tiny_spec(model_version="2"), embedding=True)
    assert Embedder(other, tmp_path / "cache").folder != first.folder
    assert Embedder(model, None).embed([]).shape == (0, 3)


def test_an_unreadable_image_names_its_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    embedder = Embedder(make_tiny_model(tmp_path / "a.onnx", embedding=True), None)
    with pytest.raises(DatasetError, match="bad.jpg"):
        embedder.embed([bad])
