"""Decoding photos into RGB Pillow images, within limits and with typed errors.

Handles what real photos need: EXIF orientation, JPEG draft-mode decoding (a 12 MP
JPEG is decoded at reduced scale when only ~256 px are needed), CMYK, palette with
transparency, LA/RGBA (composited on white), 16-bit and greyscale, multi-frame files
(first frame) and HEIC when ``pillow-heif`` is installed.

Only the formats in :func:`accepted_formats` are ever opened; any other file, even one
Pillow could read, is an :class:`~leafid.errors.UnsupportedTypeError`. Each image's
decode cost (the memory its decoding takes, estimated from the
header) is checked against :class:`ImageLimits` before a pixel is decoded, and Pillow's
errors are turned into typed errors in one place.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError, _imaging, features

from leafid.errors import (
    BadImageError,
    ImageError,
    ImageNotFoundError,
    InvalidRequestError,
    TooLargeError,
    UnsupportedTypeError,
)
from leafid.extras import optional

log = logging.getLogger(__name__)

MiB = 1024 * 1024

# Pillow only warns between MAX_IMAGE_PIXELS and twice that; leafid refuses instead.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
# Pillow allocates a big image in blocks of this size. glibc gives blocks under 32 MiB
# from its heaps, which keep freed memory (one heap per decoding thread); bigger blocks
# are mapped and go back to the system as soon as the image is freed.
_imaging.set_block_size(max(_imaging.get_block_size(), 64 * 1024 * 1024))

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
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")
_AVIF_BRANDS = (b"avif", b"avis")

# A progressive JPEG from a camera or an encoder has about 10 scans; each scan decodes
# every block of its components again, so a small file of thousands of scans costs
# minutes of CPU.
MAX_JPEG_SCANS = 16
# Pillow decodes RLE-compressed BMPs in Python, about 0.2 s of CPU per MB of file.
MAX_RLE_BMP_BYTES = 2 * MiB
# Rows converted at a time by to_rgb: its temporary arrays stay a few MB at any width.
_STRIP_PIXELS = 1 << 20


def _register_heif() -> bool:
    pillow_heif = optional("pillow_heif")  # the [heic] extra
    if pillow_heif is None:
        return False
    pillow_heif.register_heif_opener()
    return True


HEIF_AVAILABLE = _register_heif()


AVIF_AVAILABLE = features.check("avif")


def accepted_formats() -> tuple[str, ...]:
    """The Pillow formats leafid opens; no other Pillow plugin is ever tried.

    JPEG (and MPO, the multi-picture JPEG of some cameras), PNG, WebP, TIFF, BMP, GIF,
    HEIF/HEIC when ``pillow-heif`` is installed and AVIF when Pillow was built with it.
    """
    optional_ones = (("HEIF", HEIF_AVAILABLE), ("AVIF", AVIF_AVAILABLE))
    return ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF") + tuple(
        name for name, present in optional_ones if present
    )


@dataclass(frozen=True)
class ImageLimits:
    """Limits applied before an image is decoded.

    Attributes:
        max_bytes: Largest accepted file size in bytes.
        max_pixels: Largest accepted width * height (read from the header).
        max_decode_bytes: Largest decode cost of one image: the memory its decoding
            takes, estimated from the header.
        max_request_decode_bytes: Largest decode cost of all the images of one request
            (one :class:`DecodeBudget`); decoding time grows with it.
    """

    max_bytes: int = 30 * MiB
    max_pixels: int = 80_000_000
    max_decode_bytes: int = 224 * MiB
    max_request_decode_bytes: int = 1024 * MiB

    def __post_init__(self) -> None:
        # Pillow refuses images over MAX_IMAGE_PIXELS (an error, see above) before
        # leafid's own check runs, so a larger limit could never take effect.
        pillow = Image.MAX_IMAGE_PIXELS
        sizes = (self.max_bytes, self.max_pixels, self.max_decode_bytes)
        if min(sizes) < 1 or self.max_request_decode_bytes < 1:
            raise InvalidRequestError("image limits must be >= 1")
        if pillow is not None and self.max_pixels > pillow:
            raise InvalidRequestError(
                f"max_pixels {self.max_pixels} is over Pillow's limit of {pillow} pixels"
            )
        if self.max_request_decode_bytes < self.max_decode_bytes:
            raise InvalidRequestError(
                "max_request_decode_bytes must be at least max_decode_bytes (one image)"
            )


class DecodeBudget:
    """The decode cost one request may still spend on its images.

    Shared by the images of one request (an HTTP request, a call of
    :meth:`~leafid.classifier.Classifier.classify_images`): once it is spent, each
    further image is refused with its own :class:`~leafid.errors.TooLargeError`, and the
    images decoded so far are answered. Safe to share between threads.
    """

    def __init__(self, limits: ImageLimits) -> None:
        self.left = limits.max_request_decode_bytes
        self._lock = threading.Lock()

    def spend(self, cost: int) -> None:
        """Take ``cost`` bytes from the budget.

        Raises:
            TooLargeError: Less than ``cost`` is left (nothing is taken).
        """
        with self._lock:
            if cost > self.left:
                raise TooLargeError(
                    f"image needs {_mb(cost)} to decode, and this request has "
                    f"{_mb(self.left)} of its decoding budget left"
                )
            self.left -= cost


class _MemoryGate:
    """Holds the decode cost of the decodes in progress in this process.

    A decode waits while others are in progress and its cost would take the total over
    the capacity, so threads decoding big images take turns instead of adding up.
    """

    def __init__(self) -> None:
        self._held = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, cost: int, capacity: int) -> Iterator[None]:
        with self._changed:
            while self._held and self._held + cost > capacity:
                self._changed.wait()
            self._held += cost
        try:
            yield
        finally:
            with self._changed:
                self._held -= cost
                self._changed.notify_all()


_DECODING = _MemoryGate()


def _mb(size: int) -> str:
    return f"{size / MiB:.1f} MiB"


def _looks_like_heif(head: bytes) -> bool:
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _signature_format(head: bytes) -> str | None:
    for magic, name in _SIGNATURES.items():
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _AVIF_BRANDS:
        return "AVIF" if AVIF_AVAILABLE else None
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
        ImageNotFoundError: The file does not exist (or is a symlink to nothing).
        BadImageError: The file cannot be read (not a regular file, no permission, a
            symlink loop).
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
    except FileNotFoundError as exc:
        raise ImageNotFoundError("file not found") from exc
    except OSError as exc:
        raise BadImageError(f"cannot read file: {exc.strerror or exc}") from exc
    if len(data) > limits.max_bytes:
        raise TooLargeError(f"file is over the limit of {limits.max_bytes} bytes")
    return data


# --- decode cost ----------------------------------------------------------------------


def _bytes_per_pixel(mode: str) -> int:
    """Bytes per pixel of a Pillow image of this mode (RGB is stored in 4)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


# Memory a format's decoder holds next to the Pillow image, in bytes per pixel:
# libwebp's canvases and the frame it hands over, libheif's and libavif's decoded
# planes (measured with tests/service/test_decode_budget.py).
_DECODER_BYTES_PER_PIXEL = {"WEBP": 12, "HEIF": 4, "AVIF": 5}
_GREY_LEVEL_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _jpeg_scans(data: bytes, progressive: bool = True) -> int:
    """The number of scans (SOS markers) of a JPEG's first image, thumbnails not counted.

    Walks the marker segments (skipping their payloads, where an EXIF thumbnail lives)
    and the entropy-coded data of each scan up to the next marker. A sequential
    (``progressive`` false) JPEG whose first scan holds every component is whole after
    it (libjpeg refuses a second scan), so its scan data, nearly all of the file, is not
    walked: that is most photos, and the walk would cost them a few percent of decoding.
    """
    scans, pos, components = 0, 2, 0
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return scans  # not a marker: damaged, the decoder will say so
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            return scans
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            pos += 2
            continue
        if marker in _SOF_MARKERS and pos + 9 < len(data):
            components = data[pos + 9]
        if marker == 0xDA and not progressive and pos + 4 < len(data):
            if scans == 0 and data[pos + 4] == components:
                return 1
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # SOS: skip to the next marker after the scan data
            scans += 1
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                return scans
            pos = found.start()
    return scans


# Start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC): their segment gives the
# number of components after precision, height and width.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

# A marker in entropy-coded data: 0xFF then a byte other than 0x00 (stuffing), a
# restart marker (0xD0-0xD7) or another 0xFF (fill).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_coefficient_bytes(img: Image.Image, size: tuple[int, int]) -> int:
    """Memory libjpeg holds for the DCT coefficients of a full-size multi-scan JPEG."""
    layers = getattr(img, "layer", [])
    if not layers:
        return 6 * size[0] * size[1]
    h_max = max(layer[1] for layer in layers) or 1
    v_max = max(layer[2] for layer in layers) or 1
    total = 0
    for _, h, v, _ in layers:
        blocks_x = -(-size[0] * h // (h_max * 8))
        blocks_y = -(-size[1] * v // (v_max * 8))
        total += blocks_x * blocks_y * 64 * 2
    return total


def _is_rle_bmp(img: Image.Image) -> bool:
    tiles = getattr(img, "tile", [])
    return img.format == "BMP" and any(tile.codec_name == "bmp_rle" for tile in tiles)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation known without decoding pixels (1 when not known yet).

    PNG keeps EXIF in a chunk that may follow the pixel data, and Pillow decodes the
    image to look for it: a PNG's orientation is only known after loading.
    """
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    return int(img.getexif().get(ExifTags.Base.Orientation, 1))


def _decode_cost(img: Image.Image, full_size: tuple[int, int], scans: int) -> int:
    """Memory decoding an opened image into upright RGB takes, estimated from its header.

    The Pillow image at the size it will be decoded at (after draft); an RGB copy if
    its mode is not RGB, and 8-bit levels on the way if it has 16 or 32 bits; a
    transposed copy if EXIF rotates it; what the format's decoder holds besides; and
    for a progressive or multi-scan JPEG the coefficients of the whole image (libjpeg
    keeps them even when decoding at a reduced scale).

    Args:
        img: An opened image, not loaded (draft already applied, if any).
        full_size: The image's size before draft.
        scans: The number of scans if a JPEG.
    """
    width, height = img.size
    per_pixel = _bytes_per_pixel(img.mode)
    if img.mode != "RGB":
        per_pixel += 4
    if img.mode in _GREY_LEVEL_MODES:
        per_pixel += 1  # the 8-bit levels made on the way to RGB
    if _orientation(img) != 1:
        per_pixel += _bytes_per_pixel(img.mode)
    per_pixel += _DECODER_BYTES_PER_PIXEL.get(str(img.format), 0)
    if _is_rle_bmp(img):
        per_pixel += 2  # Pillow's RLE decoder builds the pixels in a bytearray, then copies
    cost = width * height * per_pixel
    if img.format in ("JPEG", "MPO") and (img.info.get("progressive") or scans > 1):
        cost += _jpeg_coefficient_bytes(img, full_size)
    return cost


def _check_cost(cost: int, limits: ImageLimits, img: Image.Image, size: tuple[int, int]) -> None:
    if cost > limits.max_decode_bytes:
        raise TooLargeError(
            f"{img.format} image of {size[0]}x{size[1]} {img.mode} pixels needs {_mb(cost)} "
            f"to decode, over the limit of {_mb(limits.max_decode_bytes)}"
        )


# --- decoding ---------------------------------------------------------------------------


@contextmanager
def _pillow_errors(doing: str) -> Iterator[None]:
    """Pillow's exceptions while ``doing`` become leafid's typed errors.

    The one mapping of Pillow's errors: a malformed file can make Pillow raise almost
    anything, and every failure must be an :class:`~leafid.errors.ImageError`.
    """
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLargeError(f"image has too many pixels: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadImageError(f"cannot {doing}: {exc}") from exc
    except Exception as exc:
        raise _unplanned(exc) from exc


def _unidentified(data: bytes) -> ImageError:
    """Why Pillow found no accepted format in ``data``."""
    if _looks_like_heif(data[:16]):
        if not HEIF_AVAILABLE:
            return UnsupportedTypeError(
                "HEIC/HEIF photo: install support with pip install 'leafid[heic]'"
            )
        return BadImageError("damaged HEIC/HEIF file: cannot read its header")
    kind = _signature_format(data[:16])
    if kind is not None:
        return BadImageError(f"damaged {kind} file: cannot read its header")
    return UnsupportedTypeError("not a recognised image file")


def _open(data: bytes, limits: ImageLimits, min_side: int) -> tuple[Image.Image, int]:
    """Open an image of an accepted format (header only) and check it against ``limits``.

    Returns:
        The image, drafted down for ``min_side`` if a JPEG, and its decode cost.
    """
    if len(data) > limits.max_bytes:
        raise TooLargeError(f"file is {len(data)} bytes, over the limit of {limits.max_bytes}")
    if not data:
        raise BadImageError("file is empty")
    with _pillow_errors("read image header"):
        try:
            img = Image.open(io.BytesIO(data), formats=accepted_formats())
        except UnidentifiedImageError as exc:
            raise _unidentified(data) from exc
        width, height = img.size
        if width * height > limits.max_pixels:
            raise TooLargeError(
                f"image is {width}x{height} = {width * height} pixels, "
                f"over the limit of {limits.max_pixels}"
            )
        if width < 1 or height < 1:
            raise BadImageError("image has no pixels")
        scans = 0
        if img.format in ("JPEG", "MPO"):
            scans = _jpeg_scans(data, progressive=bool(img.info.get("progressive")))
            if scans > MAX_JPEG_SCANS:
                raise TooLargeError(f"JPEG has {scans} scans, over the limit of {MAX_JPEG_SCANS}")
        if _is_rle_bmp(img) and len(data) > MAX_RLE_BMP_BYTES:
            raise TooLargeError(
                f"RLE-compressed BMP of {len(data)} bytes, over the limit of {MAX_RLE_BMP_BYTES}"
            )
        if min_side > 0 and img.format == "JPEG":
            # draft() keeps both sides >= the requested size; orientation does not matter
            # because the request is square.
            img.draft("RGB", (min_side, min_side))
        cost = _decode_cost(img, (width, height), scans)
    _check_cost(cost, limits, img, (width, height))
    return img, cost


@contextmanager
def decoded(
    data: bytes, limits: ImageLimits, min_side: int = 0, budget: DecodeBudget | None = None
) -> Iterator[Image.Image]:
    """Decode image bytes into an upright RGB image, held for the ``with`` block.

    The image's decode cost (the memory its decoding takes, estimated from the header)
    is checked against ``limits`` and taken from ``budget`` before any pixel is
    decoded. Until the block ends it counts against the decodes this process runs at
    the same time: threads decoding big images take turns (see ``max_decode_bytes``).
    Errors of the block itself pass through unchanged.

    Args:
        data: The encoded file.
        limits: Byte, pixel and decode-cost limits.
        min_side: If > 0, JPEGs may be decoded at a reduced scale as long as both
            sides stay at least this large (Pillow draft mode).
        budget: The request's budget to take the cost from, if any.

    Yields:
        An ``RGB`` image with EXIF orientation applied.

    Raises:
        TooLargeError: Over the byte, pixel or decode-cost limit, or the budget is spent.
        UnsupportedTypeError: Not an image type leafid reads.
        BadImageError: Truncated or corrupt image data, and any unplanned exception
            Pillow raises on a malformed file: every failure is an ImageError.
    """
    img, cost = _open(data, limits, min_side)
    if budget is not None:
        budget.spend(cost)
    with _DECODING.hold(cost, limits.max_decode_bytes):
        with _pillow_errors("decode image"):
            rgb = _load_rgb(img, limits, cost)
        del img  # from here on only the RGB image is needed
        yield rgb


def _load_rgb(img: Image.Image, limits: ImageLimits, cost: int) -> Image.Image:
    """Decode an opened image into upright RGB."""
    counted = _orientation(img) != 1
    img.load()  # first frame of multi-frame files
    if not counted and _orientation(img) != 1:
        # a PNG whose EXIF follows its pixels: its transposed copy was not counted
        extra = img.width * img.height * _bytes_per_pixel(img.mode)
        _check_cost(cost + extra, limits, img, img.size)
    ImageOps.exif_transpose(img, in_place=True)
    return to_rgb(img)


def decode(
    data: bytes, limits: ImageLimits, min_side: int = 0, budget: DecodeBudget | None = None
) -> Image.Image:
    """Decode image bytes into an upright RGB image (see :func:`decoded`).

    Raises:
        TooLargeError: Over the byte, pixel or decode-cost limit, or the budget is spent.
        UnsupportedTypeError: Not an image type leafid reads.
        BadImageError: Truncated or corrupt image data (every failure is an ImageError).
    """
    with decoded(data, limits, min_side, budget) as img:
        return img


def _unplanned(exc: Exception) -> BadImageError:
    """The error for an exception Pillow was not documented to raise (a malformed file)."""
    log.debug("unexpected error decoding an image", exc_info=exc)
    return BadImageError(f"cannot decode image: {type(exc).__name__}: {exc}")


def _strips(img: Image.Image) -> Iterator[tuple[int, Image.Image]]:
    """The image as horizontal strips of about ``_STRIP_PIXELS``: (top row, strip)."""
    rows = max(1, _STRIP_PIXELS // img.width)
    for top in range(0, img.height, rows):
        yield top, img.crop((0, top, img.width, min(img.height, top + rows)))


def _grey_levels(img: Image.Image) -> Image.Image:
    """An I;16, I or F image scaled to 8-bit L, one strip at a time."""
    mode = img.mode
    if mode.startswith("I;16"):
        top = 65535.0
    else:
        peak = np.max([np.asarray(strip).max(initial=0) for _, strip in _strips(img)], initial=0)
        if peak > 255:
            top = 65535.0
        elif mode == "F" and peak <= 1.0:
            top = 1.0  # float images in [0, 1]
        else:
            top = 255.0
    out = Image.new("L", img.size)
    for y, strip in _strips(img):
        arr = np.asarray(strip, dtype=np.float64)
        levels = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        out.paste(Image.fromarray(levels, mode="L"), (0, y))
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent areas become white.

    Works one strip of rows at a time, so the only full-size image made is the RGB one.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _GREY_LEVEL_MODES:
        img = _grey_levels(img)
    out = Image.new("RGB", img.size)
    for y, strip in _strips(img):
        out.paste(_strip_to_rgb(strip), (0, y))
    return out


def _strip_to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
