"""The one preprocessing function: decoded RGB image -> model input array."""

from __future__ import annotations

import numpy as np
from PIL import Image

from leafid.spec import ModelSpec

#: Pillow resampling filter for each ``ModelSpec.interpolation`` name.
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resize_and_crop(img: Image.Image, spec: ModelSpec) -> Image.Image:
    """Resize the shorter side to ``spec.resize_size``, then centre-crop ``spec.input_size``."""
    width, height = img.size
    crop = spec.input_size * min(width, height) / spec.resize_size  # crop side, source px
    left = (width - crop) / 2
    top = (height - crop) / 2
    box = (left, top, left + crop, top + crop)
    # Resizing straight to the crop box does resize + centre crop in one pass.
    return img.resize((spec.input_size, spec.input_size), RESAMPLE[spec.interpolation], box=box)


def preprocess(img: Image.Image, spec: ModelSpec) -> np.ndarray:
    """Turn one decoded RGB image into one model input (no batch axis).

    Args:
        img: An RGB image (see :func:`leafid.images.decode`).
        spec: The model's spec.

    Returns:
        ``uint8`` array of shape (H, W, 3) for ``uint8_nhwc`` models, or normalised
        ``float32`` array of shape (3, H, W) for ``float32_nchw`` models.
    """
    if img.mode != "RGB":
        raise ValueError(f"preprocess needs an RGB image, got mode {img.mode}")
    arr = np.array(resize_and_crop(img, spec), dtype=np.uint8)  # writable copy
    if spec.input_format == "uint8_nhwc":
        return arr
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    std = np.asarray(spec.std, dtype=np.float32) * 255.0
    normalised: np.ndarray = ((arr.astype(np.float32) - mean) / std).transpose(2, 0, 1)
    return np.ascontiguousarray(normalised)
