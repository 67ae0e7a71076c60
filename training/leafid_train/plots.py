"""Evaluation plots (matplotlib): confusion matrix and reliability diagram.

Figures are made with matplotlib's object API (no pyplot), so no global backend or
figure registry is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def confusion_png(matrix: np.ndarray, labels: Sequence[str], out: Path, title: str) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    n = len(labels)
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    side = min(30.0, max(5.0, 0.28 * n + 2))
    fig = Figure(figsize=(side, side * 0.9))
    ax = fig.subplots()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=max(4, min(9, 300 // max(n, 1))))
    ax.set_yticks(range(n), labels, fontsize=max(4, min(9, 300 // max(n, 1))))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of true class")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def reliability_png(bins: Sequence[dict[str, float]], ece: float, out: Path, title: str) -> Path:
    """Accuracy vs confidence per bin, with the diagonal of perfect calibration."""
    fig = Figure(figsize=(5.5, 6.5))
    ax, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"]
    filled = [b["count"] > 0 for b in bins]
    acc = [b["accuracy"] if f else 0.0 for b, f in zip(bins, filled, strict=True)]
    ax.bar(centres, acc, width=width * 0.95, color="tab:blue", alpha=0.8, label="accuracy")
    conf = [b["confidence"] for b, f in zip(bins, filled, strict=True) if f]
    ax.plot(
        [c for c, f in zip(centres, filled, strict=True) if f],
        conf,
        "o",
        color="tab:red",
        label="mean confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE (15 bins) = {ece:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(centres, [b["count"] for b in bins], width=width * 0.95, color="tab:grey")
    hist.set_yscale("symlog")
    hist.set_xlabel("confidence (calibrated best score)")
    hist.set_ylabel("images")
    hist.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out
