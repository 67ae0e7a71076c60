"""Training augmentation for leaf photos: uint8 HWC in, uint8 HWC out (no normalisation).

Leaves have no canonical orientation, so flips and 90-degree turns are safe; colour
jitter stays light because colour is a real cue (and flavia is greyscale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from leafid.preprocess import RESAMPLE


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation.

    Attributes:
        scale: Range of the crop's share of the image area.
        ratio: Range of the crop's aspect ratio.
        brightness: Brightness factor is drawn from ``1 ± brightness``.
        contrast: Contrast factor is drawn from ``1 ± contrast``.
        saturation: Saturation factor is drawn from ``1 ± saturation``.
    """

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


def random_crop_box(
    width: int, height: int, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[float, float, float, float]:
    """A random crop box (left, top, right, bottom) of the given area and aspect ranges."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*cfg.scale)
        aspect = math.exp(rng.uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1])))
        w = math.sqrt(target * aspect)
        h = math.sqrt(target / aspect)
        if w <= width and h <= height:
            left = rng.uniform(0, width - w)
            top = rng.uniform(0, height - h)
            return (left, top, left + w, top + h)
    side = min(width, height)  # fall back to a centre square
    return ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)


def jitter(arr: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Light brightness, contrast and saturation jitter of a uint8 RGB array."""
    x = arr.astype(np.float32)
    x *= rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) + grey
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def augment(
    arr: np.ndarray,
    size: int,
    rng: np.random.Generator,
    interpolation: str = "bilinear",
    cfg: AugmentConfig | None = None,
) -> np.ndarray:
    """Random resized crop to ``size``, flips, 90-degree turns and colour jitter.

    Args:
        arr: uint8 RGB array (H, W, 3).
        size: Output side in pixels.
        rng: Source of randomness (seed it for reproducible epochs).
        interpolation: Pillow filter name used for the crop resize.
        cfg: Augmentation strengths.

    Returns:
        uint8 array (size, size, 3).
    """
    cfg = cfg or AugmentConfig()
    img = Image.fromarray(arr)
    box = random_crop_box(img.width, img.height, rng, cfg)
    out = np.asarray(img.resize((size, size), RESAMPLE[interpolation], box=box))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    out = np.rot90(out, k=int(rng.integers(4)))
    return np.ascontiguousarray(jitter(out, rng, cfg))


def greyscale(arr: np.ndarray) -> np.ndarray:
    """The image in grey (ITU-R 601 luma, as Pillow's ``L``), still three channels."""
    grey = np.asarray(Image.fromarray(arr).convert("L"))
    return np.repeat(grey[..., None], 3, axis=2)
