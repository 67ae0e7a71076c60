"""A linear head (multinomial logistic regression) fitted on embeddings, seeded and small.

``leafid add-species`` keeps a model's backbone and fits a new head for its old and new
classes here: the old classes' rows start from the model's own head and are held near
it by an L2 pull, so that adding species changes what the model knew as little as the
new classes need; the new rows start at zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

ANCHOR = 1e-3
"""Weight of the L2 pull of the head towards its starting weights (per mean example)."""
MAX_STEPS = 100
"""L-BFGS iterations (full batch)."""


@dataclass(frozen=True)
class LinearHead:
    """``logits = embedding @ weight.T + bias``."""

    weight: np.ndarray  # (K, C)
    bias: np.ndarray  # (K,)

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """The head's logits of embeddings (N, C) -> (N, K)."""
        return np.asarray(embeddings @ self.weight.T + self.bias, dtype=np.float32)


def extend_head(base: LinearHead, new_classes: int) -> LinearHead:
    """``base`` with ``new_classes`` zero rows appended (the starting point of the fit)."""
    width = base.weight.shape[1]
    return LinearHead(
        np.concatenate([base.weight, np.zeros((new_classes, width), np.float32)]),
        np.concatenate([base.bias, np.zeros(new_classes, np.float32)]),
    )


def fit_head(
    embeddings: np.ndarray,
    labels: np.ndarray,
    start: LinearHead,
    *,
    seed: int,
    anchor: float = ANCHOR,
    steps: int = MAX_STEPS,
) -> LinearHead:
    """Fit a head by cross-entropy on (embedding, label) pairs, from ``start``.

    The loss adds ``anchor * |W - W_start|^2`` (biases are free), which keeps the rows
    the data says little about where they started.

    Args:
        embeddings: Training embeddings (N, C).
        labels: Their class indices (N,), in ``range(K)``.
        start: The starting head (K rows).
        seed: Seeds torch (L-BFGS itself draws nothing; the seed fixes any tie-break).
        anchor: Weight of the L2 pull towards ``start``.
        steps: L-BFGS iterations.
    """
    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    w0 = torch.from_numpy(start.weight.astype(np.float32))
    w = w0.clone().requires_grad_(True)
    b = torch.from_numpy(start.bias.astype(np.float32)).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = functional.cross_entropy(x @ w.T + b, y) + anchor * ((w - w0) ** 2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    return LinearHead(w.detach().numpy().copy(), b.detach().numpy().copy())
