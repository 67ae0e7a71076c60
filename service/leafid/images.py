"""Decoding photos into RGB Pillow images, with limits and typed errors.

Handles what real photos need: EXIF orientation, JPEG draft-mode decoding (a 12 MP
JPEG is decoded at reduced scale when only ~256 px are needed), CMYK, palette with
transparency, LA/RGBA (composited on white), 16-bit and greyscale, multi-frame files
(first frame) and HEIC when ``pillow-heif`` is installed.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from leafid.errors import BadImageError, TooLargeError, UnsupportedTypeError

log = logging.getLogger(__name__)

# Pillow only warns between MAX_IMAGE_PIXELS and twice that; leafid refuses instead.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif")


def _register_heif() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


HEIF_AVAILABLE = _register_heif()


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied before an image is decoded.

    Attributes:
        max_bytes: Largest accepted file size in bytes.
        max_pixels: Largest accepted width * height (read from the header).
    """

    max_bytes: int = 30 * 1024 * 1024
    max_pixels: int = 80_000_000


def _looks_like_heif(head: bytes) -> bool:
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def read_bytes(path: str | os.PathLike[str], limits: ImageLimits) -> bytes:
    """Read a file, refusing it before reading if it is over ``limits.max_bytes``.

    Raises:
        TooLargeError: The file is too big.
        BadImageError: The file cannot be read (missing, a directory, no permission).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limits.max_bytes:
            raise TooLargeError(f"file is {size} bytes, over the limit of {limits.max_bytes}")
        return p.read_bytes()
    except OSError as exc:
        raise BadImageError(f"cannot read file: {exc.strerror or exc}") from exc


def decode(data: bytes, limits: ImageLimits, min_side: int = 0) -> Image.Image:
    """Decode image bytes into an RGB image, upright.

    Args:
        data: The encoded file.
        limits: Byte and pixel limits.
        min_side: If > 0, JPEGs may be decoded at a reduced scale as long as both
            sides stay at least this large (Pillow draft mode).

    Returns:
        An ``RGB`` image with EXIF orientation applied.

    Raises:
        TooLargeError: Over the byte or pixel limit.
        UnsupportedTypeError: Not an image type leafid can read.
        BadImageError: Truncated or corrupt image data.
    """
    if len(data) > limits.max_bytes:
        raise TooLargeError(f"file is {len(data)} bytes, over the limit of {limits.max_bytes}")
    if not data:
        raise BadImageError("file is empty")
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLargeError(f"image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        if _looks_like_heif(data[:16]) and not HEIF_AVAILABLE:
            raise UnsupportedTypeError(
                "HEIC/HEIF photo: install support with pip install 'leafid[heic]'"
            ) from exc
        raise UnsupportedTypeError("not a recognised image file") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"cannot read image header: {exc}") from exc

    width, height = img.size
    if width * height > limits.max_pixels:
        raise TooLargeError(
            f"image is {width}x{height} = {width * height} pixels, "
            f"over the limit of {limits.max_pixels}"
        )
    if width < 1 or height < 1:
        raise BadImageError("image has no pixels")
    try:
        if min_side > 0 and img.format == "JPEG":
            # draft() keeps both sides >= the requested size; orientation does not matter
            # because the request is square.
            img.draft("RGB", (min_side, min_side))
        img.load()  # first frame of multi-frame files
        upright = ImageOps.exif_transpose(img) or img
        return to_rgb(upright)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLargeError(f"image has too many pixels: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadImageError(f"cannot decode image: {exc}") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent areas become white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
