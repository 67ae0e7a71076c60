"""Hostile upload files for ``leafid loadtest --hostile-share``.

:func:`hostile_payloads` builds, in memory and the same every time, files a hostile or
careless client might post instead of a photo: small files that decode to huge images,
headers that claim absurd sizes, truncated and corrupt images, images in formats a
photo service has no reason to read, and bytes that are no image at all. The big
images are written directly (PNG rows compressed one at a time, a WebP whose pixels
take no bits), so building them needs neither the memory nor the time of the image.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

BIG_SIDE = 7000  # 49 MP: just under the service's default limit of 50 MP
BOMB_SIDE = 60_000  # 3.6 GP: over every sane pixel limit


@dataclass(frozen=True)
class HostilePayload:
    """One hostile file to upload.

    Attributes:
        name: Short identifier, used as the upload's file name stem and in reports.
        filename: The file name sent with the upload.
        content_type: The content type sent with the upload (may be a lie).
        data: The file's bytes.
    """

    name: str
    filename: str
    content_type: str
    data: bytes


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_gray16(width: int, height: int) -> bytes:
    """A flat 16-bit greyscale PNG, compressed row by row (tiny file, big image)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    row = b"\x00" + b"\x80\x00" * width  # filter type 0, then mid grey
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but holds one short row."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


class _BitWriter:
    """Bits packed least significant first, as WebP lossless wants them."""

    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def put(self, value: int, bits: int) -> None:
        self.value |= value << self.count
        self.count += bits

    def data(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


def webp_lossless_flat(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A lossless WebP of one colour, a few dozen bytes whatever its size.

    Every prefix code has a single symbol, so the pixels take no bits.
    """
    bits = _BitWriter()
    bits.put(0x2F, 8)  # VP8L signature
    bits.put(width - 1, 14)
    bits.put(height - 1, 14)
    bits.put(0, 1)  # alpha not used
    bits.put(0, 3)  # version
    bits.put(0, 1)  # no transform
    bits.put(0, 1)  # no colour cache
    bits.put(0, 1)  # no meta prefix codes
    red, green, blue = rgb
    for symbol in (green, red, blue, 255):  # green, red, blue, alpha prefix codes
        bits.put(1, 1)  # simple code
        bits.put(0, 1)  # one symbol
        bits.put(1, 1)  # of 8 bits
        bits.put(symbol, 8)
    bits.put(1, 1)  # distance code: simple, one symbol of 1 bit: 0
    bits.put(0, 1)
    bits.put(0, 1)
    bits.put(0, 1)
    data = bits.data()
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) % 2)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_header_bomb(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with the size in its frame header (SOF) replaced by ``width`` x ``height``.

    Raises:
        ValueError: No frame header found before the scan data.
    """
    pos = 2  # after SOI
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF:
        marker = jpeg[pos + 1]
        length = struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):  # baseline, extended, progressive frame
            size = struct.pack(">HH", height, width)
            return jpeg[: pos + 5] + size + jpeg[pos + 9 :]
        if marker == 0xDA:  # start of scan
            break
        pos += 2 + length
    raise ValueError("no JPEG frame header found")


def gif_header_bomb(width: int, height: int) -> bytes:
    """A GIF whose screen and only frame claim ``width`` x ``height`` with no pixel data."""
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", width, height, 0x80, 0, 0)  # 2-colour global palette
        + b"\x00\x00\x00\xff\xff\xff"
        + b","
        + struct.pack("<HHHHB", 0, 0, width, height, 0)
        + b"\x02\x01\x2c\x00"  # LZW minimum code size 2; one block: clear, end
        + b";"
    )


def bmp_header_bomb(width: int, height: int) -> bytes:
    """A 24-bit BMP header claiming ``width`` x ``height``, with no pixels after it."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def tiff_header_bomb(width: int, height: int) -> bytes:
    """A little-endian greyscale TIFF claiming ``width`` x ``height``, one byte of pixels."""
    tags = [  # (tag, type LONG=4 / SHORT=3, value)
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),  # bits per sample
        (259, 3, 1),  # no compression
        (262, 3, 1),  # black is zero
        (273, 4, 0),  # strip offset, filled in below
        (277, 3, 1),  # samples per pixel
        (278, 4, height),  # rows per strip
        (279, 4, width * height),  # strip byte count (a lie)
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    data_offset = 8 + ifd_size
    entries = b"".join(
        struct.pack("<HHII", tag, kind, 1, data_offset if tag == 273 else value)
        if kind == 4
        else struct.pack("<HHIHH", tag, kind, 1, value, 0)
        for tag, kind, value in tags
    )
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + b"\x00" * 5


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def hostile_payloads(jpeg: bytes, big_side: int = BIG_SIDE, seed: int = 0) -> list[HostilePayload]:
    """The hostile files, the same for the same arguments.

    Args:
        jpeg: A valid photo to damage (the load test's own JPEG).
        big_side: Width and height of the images that decode huge.
        seed: Seed of the random bytes and of the corruption.

    Returns:
        One payload per kind, in a fixed order.
    """
    rng = np.random.default_rng(seed)
    small = Image.new("RGB", (48, 32), (40, 160, 60))
    png = _encode(small, "PNG")
    corrupt = np.frombuffer(jpeg, dtype=np.uint8).copy()
    spots = rng.integers(2, min(len(jpeg), 600), 24)  # in the headers and the first scan data
    corrupt[spots] = rng.integers(0, 256, len(spots), dtype=np.uint8)
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # the IHDR chunk's CRC
    files = [
        ("gray16-huge", "png", "image/png", png_gray16(big_side, big_side)),
        (
            "webp-lossless-huge",
            "webp",
            "image/webp",
            webp_lossless_flat(big_side, big_side, (40, 160, 60)),
        ),
        ("png-header-bomb", "png", "image/png", png_header_bomb(BOMB_SIDE, BOMB_SIDE)),
        (
            "jpeg-header-bomb",
            "jpg",
            "image/jpeg",
            jpeg_header_bomb(jpeg, BOMB_SIDE // 2, BOMB_SIDE // 2),
        ),
        ("gif-header-bomb", "gif", "image/gif", gif_header_bomb(65_535, 65_535)),
        ("bmp-header-bomb", "bmp", "image/bmp", bmp_header_bomb(BOMB_SIDE, BOMB_SIDE)),
        ("tiff-header-bomb", "tif", "image/tiff", tiff_header_bomb(BOMB_SIDE, BOMB_SIDE)),
        ("jpeg-truncated", "jpg", "image/jpeg", jpeg[: len(jpeg) // 2]),
        ("png-truncated", "png", "image/png", png[: len(png) // 2]),
        ("jpeg-corrupt", "jpg", "image/jpeg", corrupt.tobytes()),
        ("png-bad-crc", "png", "image/png", bytes(bad_crc)),
        ("dds", "dds", "image/vnd-ms.dds", _encode(small, "DDS")),
        ("ico", "ico", "image/x-icon", _encode(small, "ICO")),
        ("pcx", "pcx", "image/x-pcx", _encode(small, "PCX")),
        ("empty", "jpg", "image/jpeg", b""),
        ("random-bytes", "jpg", "image/jpeg", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        ("text", "jpg", "image/jpeg", b"this is not an image\n" * 20),
        ("pdf", "pdf", "application/pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"),
        ("zip", "zip", "application/zip", b"PK\x03\x04" + bytes(26) + b"leaf.jpg"),
    ]
    return [
        HostilePayload(name, f"{name}.{ext}", content_type, data)
        for name, ext, content_type, data in files
    ]
