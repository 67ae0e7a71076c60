"""Where the model looked: a class's activation map as a heat overlay on the photo.

The model's head is global average pooling and a linear layer, so the head applied at
each position of the last feature map gives a map whose mean is exactly the class's
logit (the model's ``class_maps`` output). That map, stretched over the part of the
photo the model saw (its input: the centre square), shows at a glance whether the
answer came from the leaf or from the background. Pillow and numpy only.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from leafid.spec import ModelSpec

PURPOSE = "show where it looked"
ALPHA = 0.45
"""Weight of the heat colours over the photo."""

# cold to hot: blue, cyan, green, yellow, red (the usual look of such maps)
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array(
    [(0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)], dtype=np.float32
)


def model_view(model_input: np.ndarray, spec: ModelSpec) -> Image.Image:
    """The RGB image the model saw, from one of its inputs (see :func:`leafid.preprocess`)."""
    if spec.input_format == "uint8_nhwc":
        return Image.fromarray(np.asarray(model_input, dtype=np.uint8), "RGB")
    std = np.asarray(spec.std, dtype=np.float32) * 255.0
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    pixels = model_input.transpose(1, 2, 0) * std + mean
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def heat(class_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class map stretched to ``size`` (width, height) and scaled to [0, 1].

    The hottest place is 1 and the coldest 0; a flat map is all 0 (no place stands out).
    """
    values = np.asarray(class_map, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    stretched = Image.fromarray(scaled, "F").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(np.clip(np.asarray(stretched), 0.0, 1.0))


def colours(levels: np.ndarray) -> np.ndarray:
    """Heat colours (uint8 RGB) for levels in [0, 1]."""
    rgb = [np.interp(levels, _STOPS, _COLOURS[:, c]) for c in range(3)]
    return np.stack(rgb, axis=-1).astype(np.uint8)


def overlay_png(model_input: np.ndarray, spec: ModelSpec, class_map: np.ndarray) -> bytes:
    """A PNG of what the model saw with one class's activation map laid over it as heat.

    Args:
        model_input: One model input (no batch axis).
        spec: The model's spec.
        class_map: That input's activation map of the class, [h, w].
    """
    view = model_view(model_input, spec)
    tint = colours(heat(class_map, view.size)).astype(np.float32)
    blended = (1.0 - ALPHA) * np.asarray(view, dtype=np.float32) + ALPHA * tint
    buf = io.BytesIO()
    # the fastest zlib level: a slightly larger file for much less CPU in the request
    Image.fromarray(np.rint(blended).astype(np.uint8), "RGB").save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()
