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
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from leafid.errors import BadImageError, InvalidRequestError, TooLargeError, UnsupportedTypeError
from leafid.extras import optional

log = logging.getLogger(__name__)

# Pillow only warns between MAX_IMAGE_PIXELS and twice that; leafid refuses instead.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

# Signatures of formats leafid reads: a file that starts with one but that Pillow cannot
# identify is a damaged image (400), not a file of another type (415).
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif")


def _register_heif() -> bool:
    pillow_heif = optional("pillow_heif")  # the [heic] extra
    if pillow_heif is None:
        return False
    pillow_heif.register_heif_opener()
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

    def __post_init__(self) -> None:
        # Pillow refuses images over MAX_IMAGE_PIXELS (an error, see above) before
        # leafid's own check runs, so a larger limit could never take effect.
        pillow = Image.MAX_IMAGE_PIXELS
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise InvalidRequestError("image limits must be >= 1")
        if pillow is not None and self.max_pixels > pillow:
            raise InvalidRequestError(
                f"max_pixels {self.max_pixels} is over Pillow's limit of {pillow} pixels"
            )


def _looks_like_heif(head: bytes) -> bool:
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _signature_format(head: bytes) -> str | None:
    for magic, name in _SIGNATURES.items():
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return None


def _open_nonblocking(path: str, flags: int) -> int:
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused after fstat).
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def read_bytes(path: str | os.PathLike[str], limits: ImageLimits) -> bytes:
    """Read a regular file, refusing it before reading if it is over ``limits.max_bytes``.

    FIFOs, devices, sockets and directories are refused without reading from them (a
    FIFO would block, ``/dev/zero`` would never end).

    Raises:
        TooLargeError: The file is too big.
        BadImageError: The file cannot be read (missing, not a regular file, no
            permission, a symlink loop).
    """
    try:
        with open(path, "rb", opener=_open_nonblocking) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise BadImageError("cannot read file: not a regular file")
            if st.st_size > limits.max_bytes:
                raise TooLargeError(
                    f"file is {st.st_size} bytes, over the limit of {limits.max_bytes}"
                )
            data = f.read(limits.max_bytes + 1)  # a file that grew since fstat is caught
    except OSError as exc:
        raise BadImageError(f"cannot read file: {exc.strerror or exc}") from exc
    if len(data) > limits.max_bytes:
        raise TooLargeError(f"file is over the limit of {limits.max_bytes} bytes")
    return data


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
        BadImageError: Truncated or corrupt image data, and any unplanned exception
            Pillow raises on a malformed file: every failure is an ImageError.
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
        kind = _signature_format(data[:16])
        if kind is not None:
            raise BadImageError(f"damaged {kind} file: cannot read its header") from exc
        raise UnsupportedTypeError("not a recognised image file") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"cannot read image header: {exc}") from exc
    except Exception as exc:
        raise _unplanned(exc) from exc

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
    except Exception as exc:
        raise _unplanned(exc) from exc


def _unplanned(exc: Exception) -> BadImageError:
    """The error for an exception Pillow was not documented to raise (a malformed file)."""
    log.debug("unexpected error decoding an image", exc_info=exc)
    return BadImageError(f"cannot decode image: {type(exc).__name__}: {exc}")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent areas become white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max(initial=0)
        if mode.startswith("I;16") or peak > 255:
            top = 65535.0
        elif mode == "F" and peak <= 1.0:
            top = 1.0  # float images in [0, 1]
        else:
            top = 255.0
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
