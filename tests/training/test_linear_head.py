"""The linear head fitted on embeddings."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from leafid_train.linear_head import LinearHead, extend_head, fit_head  # noqa: E402

pytestmark = pytest.mark.train


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = np.array([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    labels = np.repeat(np.arange(3), 20)
    return (centres[labels] + rng.normal(0, 0.5, (60, 2))).astype(np.float32), labels


def test_a_new_class_is_learnt_and_the_old_rows_start_from_the_base() -> None:
    x, y = _blobs()
    base = LinearHead(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.zeros(2, np.float32))
    start = extend_head(base, 1)
    assert start.weight.shape == (3, 2) and not start.weight[2].any()
    head = fit_head(x, y, start, seed=1)
    assert (head.logits(x).argmax(axis=1) == y).all()
    again = fit_head(x, y, start, seed=1)
    np.testing.assert_array_equal(head.weight, again.weight)  # the same fit every time


def test_a_strong_anchor_keeps_the_rows_where_they_started() -> None:
    x, y = _blobs()
    start = extend_head(
        LinearHead(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.zeros(2, np.float32)), 1
    )
    held = fit_head(x, y, start, seed=1, anchor=100.0)
    free = fit_head(x, y, start, seed=1, anchor=0.0)
    moved = np.abs(held.weight - start.weight).max()
    assert moved < 0.05 < np.abs(free.weight - start.weight).max()
