"""Generated corpora of bad and of unusual-but-valid image files, for the fault tests.

``make_bad_corpus(dir)`` writes files leafid must refuse with a typed error (truncated,
corrupt, header-only bombs, non-images named ``.jpg``, symlink loops, a FIFO, ...);
``make_unusual_corpus(dir)`` writes odd but valid photos it must classify (1x1, CMYK,
16-bit, palette+alpha, animated, EXIF-rotated, wrong extension, extreme aspect ratios,
...); ``make_hostile_corpus(dir)`` writes what a hostile client would send (a file of
every format Pillow reads, decompression and CPU bombs of each accepted format, mutated
headers, seeded random mutations). All return one :class:`Case` per file. Not collected
by pytest (no ``test_`` prefix); tests import it as ``from fault_corpus import ...``.

Run ``python tests/fault_corpus.py OUT_DIR`` to write the sets to ``OUT_DIR/bad``,
``OUT_DIR/unusual`` and ``OUT_DIR/hostile`` (with an ``index.tsv`` each) for manual checks.

File names: one valid and one bad file have names that are not UTF-8 (Linux only), one
valid file has a newline in its name (POSIX). The CLI writes such a path with the
undecodable bytes and control characters escaped as ``\\xNN``
(:func:`leafid.output.display_path`); :attr:`Case.row_path` is that form.

Damage that is *not* detected, so not in the bad corpus: bits flipped in a JPEG's scan
data (libjpeg only warns; Pillow returns garbled pixels), a PNG whose only fault is a
wrong IDAT CRC (Pillow does not check it), a JPEG ended early by an EOI marker in
its scan data (libjpeg fills in the rest).
Such files are classified like any photo (the answer may be "unknown").
"""

from __future__ import annotations

import io
import os
import stat
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import TINY_COLOURS, noisy
from leafid.images import AVIF_AVAILABLE, HEIF_AVAILABLE

RED = TINY_COLOURS["rubra"]
GREEN = TINY_COLOURS["viridis"]
BLUE = TINY_COLOURS["caerulea"]
BOMB_SIDE = 20_000

# Error codes (leafid.errors) a bad case may be reported with.
BAD = frozenset({"bad_image"})
UNSUPPORTED = frozenset({"unsupported_type"})
TOO_LARGE = frozenset({"too_large"})
NOT_FOUND = frozenset({"not_found"})
HTTP_STATUS = {"bad_image": 400, "unsupported_type": 415, "too_large": 413}


@dataclass(frozen=True)
class Case:
    """One file of a corpus.

    Attributes:
        name: Short identifier (test ids, ``index.tsv``).
        path: The file on disk (may be a symlink, a FIFO, or have a non-UTF-8 name).
        data: The bytes to upload to the HTTP service; None for cases that only exist
            as file-system objects (symlinks, FIFO, unreadable file).
        errors: Error codes accepted for a bad case; empty for a valid one.
        slug: The class a valid case must be classified as (its colour), or None when
            the answer is not checked (grey or mixed images).
        note: What the case is.
        answer_ok: A normal answer is accepted too (a mutated file that may still
            decode); ``errors`` lists the accepted errors.
    """

    name: str
    path: Path
    data: bytes | None
    errors: frozenset[str] = field(default_factory=frozenset)
    slug: str | None = None
    note: str = ""
    answer_ok: bool = False

    @property
    def row_path(self) -> str:
        """The ``path`` the CLI writes (non-UTF-8 bytes and control characters as ``\\xNN``)."""
        text = os.fsencode(self.path).decode("utf-8", "backslashreplace")
        return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c for c in text)

    @property
    def upload_name(self) -> str:
        """A printable file name for multipart uploads."""
        return Path(self.row_path).name


# --- encoders -------------------------------------------------------------------------


def _enc(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _photo(
    colour: tuple[int, int, int], size: tuple[int, int] = (64, 48), seed: int = 0
) -> Image.Image:
    return noisy(colour, size, seed)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_raw(width: int, height: int, depth: int, colour_type: int, rows: bytes | None) -> bytes:
    """A PNG from scratch; ``rows`` are the raw scanlines (filter byte included) or None."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    body = PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
    if rows is not None:
        body += _chunk(b"IDAT", zlib.compress(rows))
    return body + _chunk(b"IEND", b"")


def png16_rgb(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write these)."""
    w, h = size
    px = np.empty((h, w, 3), dtype=">u2")
    px[...] = [c * 257 for c in colour]
    rows = b"".join(b"\x00" + px[y].tobytes() for y in range(h))
    return png_raw(w, h, 16, 2, rows)


def png16_grey(level: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A 16-bit greyscale PNG with a gradient around ``level`` (0-65535)."""
    w, h = size
    px = np.clip(level + np.arange(w, dtype=np.int64)[None, :] * 100, 0, 65535)
    px = np.broadcast_to(px, (h, w)).astype(">u2")
    rows = b"".join(b"\x00" + px[y].tobytes() for y in range(h))
    return png_raw(w, h, 16, 0, rows)


def jpeg_sof_bomb(side: int) -> bytes:
    """A JPEG header (SOI, SOF0) claiming ``side`` x ``side`` pixels, with no image data."""
    sof = struct.pack(">BHHB", 8, side, side, 3) + b"".join(bytes([i, 0x11, 0]) for i in (1, 2, 3))
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


def gif_bomb(side: int) -> bytes:
    """A GIF header and image descriptor of ``side`` x ``side``, no pixel data."""
    head = b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\x00" * 6
    desc = b"\x2c" + struct.pack("<HHHHB", 0, 0, side, side, 0) + b"\x08"
    return head + desc + b"\x00\x3b"


def bmp_bomb(side: int) -> bytes:
    """A BMP header of ``side`` x ``side`` 24-bit pixels and almost no data."""
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0)
    size = 14 + len(info) + 16
    return b"BM" + struct.pack("<IHHI", size, 0, 0, 14 + len(info)) + info + b"\x00" * 16


def webp_bomb() -> bytes:
    """A WebP VP8X header with the largest canvas (16384 x 16384) and no frames."""
    vp8x = bytes([0x10, 0, 0, 0]) + (16383).to_bytes(3, "little") * 2
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_bomb(side: int) -> bytes:
    """A little-endian TIFF whose only IFD claims ``side`` x ``side`` RGB pixels."""
    tags = [
        (256, 4, 1, side),  # ImageWidth, LONG
        (257, 4, 1, side),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 2),  # Photometric: RGB
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 3),  # SamplesPerPixel
        (278, 4, 1, side),  # RowsPerStrip
        (279, 4, 1, side * side * 3),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def exif_rotated_jpeg(colour: tuple[int, int, int]) -> bytes:
    """A 64x32 JPEG with EXIF orientation 6 (shown rotated 90 degrees)."""
    img = _photo(colour, (64, 32), seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _enc(img, "JPEG", quality=90, exif=exif.tobytes())


def _jpeg_scan_start(data: bytes) -> int:
    """Offset of the first byte after the JPEG SOS header."""
    i = 2
    while i + 4 <= len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:
            return i + 2 + length
        i += 2 + length
    raise ValueError("no SOS marker")


def corrupt_jpeg_scan(data: bytes) -> bytes:
    """Put a second SOF marker in the middle of a JPEG's scan data (a fatal libjpeg error).

    Flipping bits in the scan data is not enough: libjpeg only warns about bad Huffman
    codes and Pillow returns the garbled pixels.
    """
    mid = (_jpeg_scan_start(data) + len(data)) // 2
    return data[:mid] + b"\xff\xc0" + data[mid:]


def corrupt_jpeg_huffman(data: bytes) -> bytes:
    """Overwrite the code counts of a JPEG's first Huffman table with 0xFF."""
    out = bytearray(data)
    i = data.index(b"\xff\xc4")
    out[i + 5 : i + 21] = b"\xff" * 16
    return bytes(out)


def corrupt_png_idat(data: bytes) -> bytes:
    """Flip bytes inside the IDAT (zlib) stream, keeping the chunk's CRC (now wrong)."""
    out = bytearray(data)
    start = data.index(b"IDAT") + 4
    for k in range(start + 4, start + 40, 3):
        out[k] ^= 0xFF
    return bytes(out)


def bad_ihdr_crc(data: bytes) -> bytes:
    """A PNG whose IHDR CRC does not match."""
    out = bytearray(data)
    out[29] ^= 0xFF  # last byte of the IHDR chunk's CRC
    return bytes(out)


# --- non-images ------------------------------------------------------------------------

ELF_HEADER = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x02\x00\x3e\x00" + b"\x00" * 44
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48">'
    b'<rect width="64" height="48" fill="red"/></svg>\n'
)
HTML = b"<!DOCTYPE html><html><body><img src='leaf.jpg'></body></html>\n"
FAKE_HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


def _zip_bytes() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("leaf.jpg", _enc(_photo(RED), "JPEG"))
    return buf.getvalue()


# --- the corpora -------------------------------------------------------------------------


def _write(root: Path, name: str | bytes, data: bytes) -> Path:
    path = Path(os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(name))))
    path.write_bytes(data)
    return path


def non_utf8_names_supported(root: Path) -> bool:
    """True where file names may be arbitrary bytes (POSIX file systems, not macOS APFS)."""
    if os.name != "posix" or sys.platform == "darwin":
        return False
    probe = os.path.join(os.fsencode(root), b"probe\xff.tmp")
    try:
        with open(probe, "wb"):
            pass
    except OSError:
        return False
    os.unlink(probe)
    return True


def make_bad_corpus(root: Path) -> list[Case]:
    """Write files leafid must refuse, one per :class:`Case`, into ``root``.

    Every case has at least one accepted error code; the ones with ``data=None`` exist
    only as file-system objects (symlinks, FIFO, unreadable file) and are skipped over
    HTTP.
    """
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, fname: str | bytes, data: bytes, errors: frozenset[str], note: str) -> None:
        cases.append(Case(name, _write(root, fname, data), data, errors, None, note))

    jpeg = _enc(_photo(RED), "JPEG", quality=90)
    png = _enc(_photo(GREEN), "PNG")
    webp = _enc(_photo(BLUE), "WEBP", quality=80)
    gif = _enc(_photo(RED).convert("P"), "GIF")
    for frac in (0.02, 0.1, 0.5, 0.9, 0.99):
        cut = max(3, int(len(jpeg) * frac))
        add(f"jpeg_cut_{frac}", f"jpeg_cut_{frac}.jpg", jpeg[:cut], BAD | UNSUPPORTED, "truncated")
    for frac in (0.05, 0.5, 0.9):
        add(f"png_cut_{frac}", f"png_cut_{frac}.png", png[: int(len(png) * frac)], BAD, "truncated")
    for frac in (0.1, 0.5, 0.9):
        add(
            f"webp_cut_{frac}",
            f"webp_cut_{frac}.webp",
            webp[: int(len(webp) * frac)],
            BAD,
            "truncated",
        )
    add("gif_cut", "gif_cut.gif", gif[: len(gif) // 2], BAD, "truncated")
    add("png_signature_only", "sig_only.png", PNG_SIGNATURE, BAD, "signature, nothing else")
    add("jpeg_soi_only", "soi_only.jpg", b"\xff\xd8\xff", BAD, "SOI marker only")
    add(
        "jpeg_scan_corrupt",
        "scan_corrupt.jpg",
        corrupt_jpeg_scan(jpeg),
        BAD,
        "SOF marker in the middle of the scan data",
    )
    add(
        "jpeg_huffman_corrupt",
        "huffman_corrupt.jpg",
        corrupt_jpeg_huffman(jpeg),
        BAD,
        "Huffman table overwritten",
    )
    add(
        "png_idat_corrupt",
        "idat_corrupt.png",
        corrupt_png_idat(png),
        BAD,
        "bytes flipped in IDAT (zlib error, CRC mismatch)",
    )
    add("png_ihdr_crc", "ihdr_crc.png", bad_ihdr_crc(png), BAD, "IHDR CRC mismatch")
    add("png_zero_width", "zero_width.png", png_raw(0, 10, 8, 2, None), BAD, "IHDR width 0")
    add("empty", "empty.jpg", b"", BAD, "zero bytes")
    add(
        "png_bomb",
        "bomb.png",
        png_raw(BOMB_SIDE, BOMB_SIDE, 8, 2, None),
        TOO_LARGE,
        "20000x20000 IHDR, no data",
    )
    add("gif_bomb", "bomb.gif", gif_bomb(BOMB_SIDE), TOO_LARGE, "20000x20000 GIF header")
    add("bmp_bomb", "bomb.bmp", bmp_bomb(BOMB_SIDE), TOO_LARGE, "20000x20000 BMP header")
    add("jpeg_bomb", "bomb.jpg", jpeg_sof_bomb(BOMB_SIDE), TOO_LARGE, "20000x20000 SOF0")
    add("tiff_bomb", "bomb.tif", tiff_bomb(BOMB_SIDE), TOO_LARGE, "20000x20000 TIFF IFD")
    add("webp_bomb", "bomb.webp", webp_bomb(), TOO_LARGE, "16384x16384 VP8X canvas")
    add("fake_heic", "fake.heic", FAKE_HEIC, UNSUPPORTED | BAD, "ftypheic box, no image")
    for name, data in {
        "text": b"these are not the pixels you are looking for\n",
        "html": HTML,
        "pdf": PDF,
        "zip": _zip_bytes(),
        "elf": ELF_HEADER,
        "json": b'{"image": "leaf.jpg", "pixels": [1, 2, 3]}\n',
        "svg": SVG,
        "random": np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    }.items():
        add(f"{name}_as_jpg", f"{name}.jpg", data, UNSUPPORTED, f"{name} named .jpg")
    if non_utf8_names_supported(root):
        add(
            "non_utf8_name_truncated",
            b"trunc\xfe\xff.jpg",
            jpeg[: len(jpeg) // 2],
            BAD,
            "non-UTF-8 file name, truncated JPEG",
        )

    def fs_case(name: str, path: Path, errors: frozenset[str], note: str) -> None:
        cases.append(Case(name, path, None, errors, None, note))

    if hasattr(os, "symlink"):
        a, b = root / "loop_a.jpg", root / "loop_b.jpg"
        a.symlink_to(b.name)
        b.symlink_to(a.name)
        fs_case("symlink_loop_a", a, BAD, "symlink loop")
        fs_case("symlink_loop_b", b, BAD, "symlink loop")
        dangling = root / "dangling.jpg"
        dangling.symlink_to("no-such-file.jpg")
        fs_case("dangling_symlink", dangling, NOT_FOUND, "symlink to nothing")
    if hasattr(os, "mkfifo"):
        fifo = root / "fifo.jpg"
        os.mkfifo(fifo)
        fs_case("fifo", fifo, BAD, "a FIFO named .jpg (must not block)")
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads mode-000 files anyway
        locked = _write(root, "unreadable.jpg", jpeg)
        locked.chmod(0)
        fs_case("unreadable", locked, BAD, "mode 000")
    return cases


def unreadable_skip_reason() -> str | None:
    """Why the mode-000 case is not in the corpus here, or None when it is."""
    if not hasattr(os, "geteuid"):
        return "no POSIX permissions on this platform"
    if os.geteuid() == 0:
        return "running as root, which can read mode-000 files"
    return None


def make_unusual_corpus(root: Path) -> list[Case]:
    """Write odd but valid photos, one per :class:`Case`, into ``root``.

    Cases with a ``slug`` are one colour of the tiny test model's classes and must be
    classified as it; the rest must be classified (a normal row) with any answer.
    """
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, fname: str | bytes, data: bytes, slug: str | None, note: str) -> None:
        cases.append(Case(name, _write(root, fname, data), data, frozenset(), slug, note))

    red, green, blue = _photo(RED), _photo(GREEN, seed=1), _photo(BLUE, seed=2)
    add(
        "one_pixel_png", "one_pixel.png", _enc(Image.new("RGB", (1, 1), RED), "PNG"), "rubra", "1x1"
    )
    add(
        "one_pixel_jpeg",
        "one_pixel.jpg",
        _enc(Image.new("RGB", (1, 1), GREEN), "JPEG", quality=95),
        "viridis",
        "1x1",
    )
    add(
        "cmyk_jpeg",
        "cmyk.jpg",
        _enc(blue.convert("CMYK"), "JPEG", quality=90),
        "caerulea",
        "CMYK JPEG",
    )
    add("png16_rgb", "rgb16.png", png16_rgb(GREEN), "viridis", "16-bit RGB PNG")
    add("png16_grey", "grey16.png", png16_grey(30_000), None, "16-bit greyscale PNG")
    palette = red.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    add(
        "palette_alpha_png",
        "palette_alpha.png",
        _enc(palette, "PNG", transparency=0),
        None,
        "palette with a transparent index",
    )
    rgba = red.convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 8))
    add("rgba_png", "rgba.png", _enc(rgba, "PNG"), "rubra", "RGBA, a transparent corner")
    frames = [_photo(BLUE, seed=i).convert("P") for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    add("animated_gif", "animated.gif", gif.getvalue(), "caerulea", "3 frames")
    add("exif_rotated", "exif_rotated.jpg", exif_rotated_jpeg(RED), "rubra", "EXIF orientation 6")
    add("png_named_jpg", "really_png.jpg", _enc(green, "PNG"), "viridis", "PNG named .jpg")
    add(
        "jpeg_named_png",
        "really_jpeg.png",
        _enc(blue, "JPEG", quality=90),
        "caerulea",
        "JPEG named .png",
    )
    add("wide", "wide.jpg", _enc(_photo(RED, (4000, 20)), "JPEG", quality=85), "rubra", "4000x20")
    add(
        "tall",
        "tall.jpg",
        _enc(_photo(GREEN, (20, 4000)), "JPEG", quality=85),
        "viridis",
        "20x4000",
    )
    add("la_png", "la.png", _enc(Image.new("LA", (40, 30), (90, 200)), "PNG"), None, "grey + alpha")
    add("grey_jpeg", "grey.jpg", _enc(red.convert("L"), "JPEG", quality=90), None, "greyscale")
    add(
        "progressive_jpeg",
        "progressive.jpg",
        _enc(blue, "JPEG", quality=90, progressive=True),
        "caerulea",
        "progressive",
    )
    webp_alpha = green.convert("RGBA")
    webp_alpha.paste((0, 0, 0, 0), (0, 0, 6, 6))
    add(
        "webp_lossless_alpha",
        "lossless_alpha.webp",
        _enc(webp_alpha, "WEBP", lossless=True),
        "viridis",
        "lossless WebP with alpha",
    )
    add("webp_lossy", "lossy.webp", _enc(red, "WEBP", quality=60), "rubra", "lossy WebP")
    add("tiff", "plain.tif", _enc(blue, "TIFF"), "caerulea", "uncompressed TIFF")
    add("tiff_lzw", "lzw.tiff", _enc(red, "TIFF", compression="tiff_lzw"), "rubra", "LZW TIFF")
    add(
        "tiff_float",
        "float.tif",
        _enc(Image.new("F", (30, 20), 0.25), "TIFF"),
        None,
        "32-bit float greyscale TIFF",
    )
    add("bmp", "plain.bmp", _enc(green, "BMP"), "viridis", "24-bit BMP")
    add("one_bit_png", "bilevel.png", _enc(red.convert("1"), "PNG"), None, "1-bit")
    add("upper_case_ext", "LEAF.JPEG", _enc(red, "JPEG"), "rubra", "upper-case extension")
    add("unicode_name", "feuille é 葉 .jpg", _enc(green, "JPEG"), "viridis", "non-ASCII name")
    if non_utf8_names_supported(root):
        add("non_utf8_name", b"leaf\xff.jpg", _enc(blue, "JPEG"), "caerulea", "non-UTF-8 file name")
    if os.name == "posix":
        add("newline_name", "new\nline.jpg", _enc(red, "JPEG"), "rubra", "a newline in the name")
    heic = _heic_bytes(red)
    if heic is not None:
        add("heic", "leaf.heic", heic, "rubra", "HEIC (pillow-heif)")
    return cases


def _heic_bytes(img: Image.Image) -> bytes | None:
    """A HEIC encoding of ``img``, or None without pillow-heif's encoder."""
    try:
        import pillow_heif
    except ImportError:
        return None
    buf = io.BytesIO()
    try:
        pillow_heif.from_pillow(img.resize((64, 64))).save(buf, format="HEIF", quality=90)
    except Exception:  # no HEVC encoder in this libheif build
        return None
    return buf.getvalue()


# --- the hostile corpus ------------------------------------------------------------------

ANY_ERROR = BAD | UNSUPPORTED | TOO_LARGE
# Formats Pillow reads that leafid does not accept, each written by Pillow's own encoder.
PLUGIN_FORMATS = {
    "BLP": "P",
    "DDS": "RGB",
    "DIB": "RGB",
    "EPS": "RGB",
    "ICNS": "RGB",
    "ICO": "RGB",
    "IM": "RGB",
    "JPEG2000": "RGB",
    "MSP": "1",
    "PALM": "P",
    "PCX": "RGB",
    "PDF": "RGB",
    "PPM": "RGB",
    "QOI": "RGB",
    "SGI": "RGB",
    "SPIDER": "F",
    "TGA": "RGB",
    "XBM": "1",
}


def fits_header(*cards: tuple[str, str]) -> bytes:
    """A FITS header: one 80-byte card per keyword and value, then END."""
    text = "".join(f"{key:<8}= {value:>20}".ljust(80) for key, value in cards)
    return (text + "END".ljust(80)).encode("ascii")


# Formats Pillow only reads: a minimal file of each, written by hand.
HAND_MADE_FORMATS = {
    "FITS": fits_header(
        ("SIMPLE", "T"), ("BITPIX", "8"), ("NAXIS", "2"), ("NAXIS1", "4"), ("NAXIS2", "4")
    )
    + bytes(2880),
    "SUN": struct.pack(">8I", 0x59A66A95, 4, 4, 8, 16, 1, 0, 0) + bytes(16),
    "XPM": b'/* XPM */\nstatic char *x[] = {\n"2 2 1 1",\n". c #ff0000",\n"..",\n".."};\n',
    "PSD": b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 4, 4, 8, 3) + bytes(64),
    "GBR": struct.pack(">IIIII", 28, 2, 4, 4, 1) + b"GIMP" + struct.pack(">I", 100) + bytes(16),
    "XVTHUMB": b"P7 332\n#XVVERSION:\n#END_OF_COMMENTS\n4 4 255\n" + bytes(16),
    "MCIDAS": bytes(256),
    "WMF": b"\xd7\xcd\xc6\x9a" + bytes(60),
    "FLI": struct.pack("<IHHHHH", 128, 0xAF11, 1, 4, 4, 8) + bytes(128),
}


def plugin_file(fmt: str) -> bytes:
    """A small file of a format leafid does not accept (:data:`PLUGIN_FORMATS`, ...)."""
    if fmt in HAND_MADE_FORMATS:
        return HAND_MADE_FORMATS[fmt]
    img = _photo(RED, (16, 16)).convert(PLUGIN_FORMATS[fmt])
    with warnings.catch_warnings():
        # Pillow deprecates some old formats' writers; such files still exist
        warnings.simplefilter("ignore", DeprecationWarning)
        return _enc(img, fmt)


def png_flat(width: int, height: int, depth: int, colour_type: int, row: bytes) -> bytes:
    """A PNG whose every scanline is ``row`` (filter byte included), compressed as it goes.

    A big flat image compresses ~1000:1: the classic PNG decompression bomb.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    packer = zlib.compressobj(9)
    rows_per_chunk = max(1, (1 << 20) // len(row))
    idat = b"".join(
        packer.compress(row * min(rows_per_chunk, height - y))
        for y in range(0, height, rows_per_chunk)
    )
    idat += packer.flush()
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_text_bomb(chunks: int) -> bytes:
    """A small PNG with ``chunks`` zTXt chunks of 1 MB of zeros each (~1 KB compressed)."""
    png = _enc(_photo(GREEN), "PNG")
    ztxt = _chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"\x00" * (1 << 20), 9))
    at = png.index(b"IDAT") - 4
    return png[:at] + ztxt * chunks + png[at:]


def tiff_header(width: int, height: int, bits: int, samples: int, sample_format: int) -> bytes:
    """A TIFF whose only IFD claims an uncompressed image, with no pixel data."""
    photometric = 2 if samples == 3 else 1
    tags = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, 1),
        (262, 3, 1, photometric),
        (273, 4, 1, 8),
        (277, 3, 1, samples),
        (278, 4, 1, height),
        (279, 4, 1, width * height * samples * bits // 8),
        (339, 3, 1, sample_format),
    ]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def bmp_rle8(width: int, height: int, body: bytes) -> bytes:
    """An 8-bit RLE-compressed BMP with a grey palette and ``body`` as its RLE data."""
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    head = struct.pack("<IHHI", offset + len(body), 0, 0, offset)
    return b"BM" + head + info + palette + body


def jpeg_with_scans(extra: int, size: tuple[int, int] = (256, 256)) -> bytes:
    """A progressive JPEG with its last scan repeated ``extra`` more times (a CPU bomb)."""
    data = _enc(_photo(RED, size), "JPEG", quality=90, progressive=True)
    end = data.rindex(b"\xff\xd9")
    last = data[data.rindex(b"\xff\xda") : end]
    return data[:end] + last * extra + data[end:]


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose SOF0 claims ``width`` x ``height`` (its scan data is for the old size)."""
    at = data.index(b"\xff\xc0") + 5
    return data[:at] + struct.pack(">HH", height, width) + data[at + 4 :]


def tiff_ifd_loop(data: bytes) -> bytes:
    """A little-endian TIFF whose first IFD names itself as the next one."""
    first = struct.unpack("<I", data[4:8])[0]
    count = struct.unpack("<H", data[first : first + 2])[0]
    at = first + 2 + 12 * count
    return data[:at] + struct.pack("<I", first) + data[at + 4 :]


def _animated(fmt: str, frames: int, **kwargs: object) -> bytes:
    images = [
        _photo(BLUE, (32, 24), seed=i).convert("P" if fmt == "GIF" else "RGB")
        for i in range(frames)
    ]
    buf = io.BytesIO()
    images[0].save(buf, fmt, save_all=True, append_images=images[1:], **kwargs)
    return buf.getvalue()


def mutate(data: bytes, seed: int) -> bytes:
    """``data`` with a few seeded random bit flips, a cut or an inserted run."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    kind = seed % 3
    if kind == 0:
        for at in rng.integers(0, len(out), 1 + seed % 8):
            out[at] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:
        del out[int(rng.integers(len(out) // 4, len(out))) :]
    else:
        at = int(rng.integers(0, min(len(out), 64)))
        out[at:at] = rng.integers(0, 256, 1 + seed % 32, dtype=np.uint8).tobytes()
    return bytes(out)


def make_hostile_corpus(root: Path) -> list[Case]:
    """Write what a hostile client would send, one file per :class:`Case`, into ``root``.

    Every Pillow plugin leafid does not accept (415 each), bombs of each accepted format
    (over the pixel or decode-cost limits: 413 from the header; just within them: an
    answer), CPU bombs (JPEG scans, RLE BMP), header tricks, and seeded mutations of
    small files of every format (any typed outcome). Names end in an image extension, so
    ``leafid classify FOLDER`` takes every file. The expectations hold for the default
    :class:`~leafid.images.ImageLimits` and the service's defaults.
    """
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(
        name: str,
        data: bytes,
        errors: frozenset[str],
        note: str,
        ext: str = "jpg",
        answer_ok: bool = False,
    ) -> None:
        path = _write(root, f"{name}.{ext}", data)
        cases.append(Case(name, path, data, errors, None, note, answer_ok))

    small = {fmt: plugin_file(fmt) for fmt in [*PLUGIN_FORMATS, *HAND_MADE_FORMATS]}
    for fmt, data in small.items():
        how = "written by Pillow" if fmt in PLUGIN_FORMATS else "header, made by hand"
        add(f"plugin_{fmt.lower()}", data, UNSUPPORTED, f"{fmt} {how}")

    # decompression bombs of each accepted format, over a limit: refused from the header
    add(
        "png_grey16_7000",
        png_flat(7000, 7000, 16, 0, b"\x00" + b"\x80\x00" * 7000),
        TOO_LARGE,
        "7000x7000 16-bit grey PNG, ~100 KB",
        "png",
    )
    add(
        "png_rgba16_7000",
        png_raw(7000, 7000, 16, 6, None),
        TOO_LARGE,
        "7000x7000 16-bit RGBA IHDR",
        "png",
    )
    add(
        "png_bilevel_80mp",
        png_raw(8940, 8940, 1, 0, None),
        TOO_LARGE,
        "8940x8940 1-bit IHDR (RGB copy over the cost limit)",
        "png",
    )
    add(
        "webp_lossless_7000",
        _enc(Image.new("RGB", (7000, 7000), GREEN), "WEBP", lossless=True),
        TOO_LARGE,
        "7000x7000 lossless WebP, ~2 KB",
        "webp",
    )
    add("gif_8000", gif_bomb(8000), TOO_LARGE, "8000x8000 GIF header", "gif")
    add(
        "tiff_float_6000",
        tiff_header(6000, 6000, 32, 1, 3),
        TOO_LARGE,
        "6000x6000 float TIFF header",
        "tif",
    )
    add(
        "tiff_grey16_9000",
        tiff_header(9000, 9000, 16, 1, 1),
        TOO_LARGE,
        "9000x9000 16-bit TIFF header",
        "tif",
    )
    add(
        "bmp_rle_8000",
        bmp_rle8(8000, 8000, b"\x00\x01"),
        TOO_LARGE,
        "8000x8000 RLE8 BMP, end of bitmap at once",
        "bmp",
    )
    add(
        "jpeg_progressive_444_7000",
        _enc(Image.new("RGB", (7000, 7000), RED), "JPEG", progressive=True, subsampling=0),
        TOO_LARGE,
        "7000x7000 progressive 4:4:4 JPEG (coefficients over the cost limit)",
    )
    add("jpeg_scans_1000", jpeg_with_scans(1000), TOO_LARGE, "a progressive JPEG of 1010 scans")
    add(
        "bmp_rle_cpu",
        bmp_rle8(4000, 4000, b"\x01\x05" * 1_500_000),
        TOO_LARGE,
        "3 MB of one-pixel RLE runs (Pillow decodes RLE in Python)",
        "bmp",
    )
    add("png_text_bomb", png_text_bomb(70), BAD, "70 zTXt chunks of 1 MB each", "png")

    # just within the limits: decoded, and answered
    add(
        "png_rgb_7000",
        png_flat(7000, 7000, 8, 2, b"\x00" + bytes(GREEN) * 7000),
        frozenset(),
        "7000x7000 RGB PNG, ~200 KB",
        "png",
    )
    add(
        "png_grey_6500",
        png_flat(6500, 6500, 8, 0, b"\x00" + b"\x60" * 6500),
        frozenset(),
        "6500x6500 grey PNG",
        "png",
    )
    add(
        "jpeg_progressive_7000",
        _enc(Image.new("RGB", (7000, 7000), RED), "JPEG", progressive=True),
        frozenset(),
        "7000x7000 progressive 4:2:0 JPEG",
    )
    add(
        "webp_3000",
        _enc(Image.new("RGB", (3000, 3000), BLUE), "WEBP", lossless=True),
        frozenset(),
        "3000x3000 lossless WebP",
        "webp",
    )
    add(
        "gif_6000",
        _enc(Image.new("P", (6000, 6000), 5), "GIF"),
        frozenset(),
        "6000x6000 GIF",
        "gif",
    )
    add(
        "tiff_deflate_5000",
        _enc(Image.new("RGB", (5000, 5000), GREEN), "TIFF", compression="tiff_deflate"),
        frozenset(),
        "5000x5000 deflate TIFF",
        "tif",
    )
    add(
        "tiff_jpeg_4000",
        _enc(_photo(GREEN, (4000, 3000)), "TIFF", compression="jpeg"),
        frozenset(),
        "4000x3000 JPEG-compressed TIFF",
        "tif",
    )
    add("jpeg_scans_16", jpeg_with_scans(6), frozenset(), "16 scans: the most accepted")
    add("bmp_rle_short", bmp_rle8(3000, 3000, b"\x00\x01"), BAD, "RLE8 BMP, no pixels", "bmp")

    # header tricks
    jpeg = _enc(_photo(RED, (64, 64)), "JPEG", quality=90)
    add(
        "jpeg_claims_7000",
        jpeg_with_size(jpeg, 7000, 7000),
        BAD,
        "64x64 scan data, SOF0 claims 7000x7000 (libjpeg may fill in the rest)",
        answer_ok=True,
    )
    add(
        "jpeg_app_flood",
        jpeg[:2] + _chunk_app(4000) + jpeg[2:],
        frozenset(),
        "4000 APP segments before the frame",
    )
    add("gif_frames_300", _animated("GIF", 300, duration=10), frozenset(), "300 frames", "gif")
    add("webp_frames_100", _animated("WEBP", 100, duration=10), frozenset(), "100 frames", "webp")
    add(
        "png_frames_100", _animated("PNG", 100, duration=10), frozenset(), "APNG, 100 frames", "png"
    )
    add("tiff_pages_100", _animated("TIFF", 100), frozenset(), "100 pages", "tif")
    add(
        "tiff_ifd_loop",
        tiff_ifd_loop(_enc(_photo(BLUE), "TIFF")),
        frozenset(),
        "next IFD is itself",
        "tif",
    )
    palette = png_raw(64, 48, 8, 3, (b"\x00" + b"\xff" * 64) * 48)
    at = palette.index(b"IDAT") - 4
    short_plte = palette[:at] + _chunk(b"PLTE", bytes(GREEN) * 2) + palette[at:]
    add(
        "png_index_past_palette",
        short_plte,
        BAD,
        "indices past a 2-colour PLTE",
        "png",
        answer_ok=True,
    )
    add("png_no_plte", palette, BAD, "palette PNG without PLTE", "png", answer_ok=True)
    add(
        "mpo",
        _enc(_photo(RED), "MPO", save_all=True, append_images=[_photo(BLUE)]),
        frozenset(),
        "two-picture MPO (a JPEG)",
    )
    add(
        "heic_damaged",
        FAKE_HEIC + b"\x00" * 64,
        BAD if HEIF_AVAILABLE else UNSUPPORTED,
        "ftypheic box, no image",
        "heic",
    )
    add(
        "avif_damaged",
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1" + bytes(64),
        BAD if AVIF_AVAILABLE else UNSUPPORTED,
        "ftypavif box, no image",
        "heic",
    )

    # seeded random mutations of small files of every format
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"):
        small[fmt] = _enc(_photo(GREEN, (48, 32)).convert("P" if fmt == "GIF" else "RGB"), fmt)
    for i, (fmt, data) in enumerate(sorted(small.items())):
        for k in range(2 if fmt in ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP") else 1):
            add(
                f"mutated_{fmt.lower()}_{k}",
                mutate(data, 7 * i + k),
                ANY_ERROR,
                f"{fmt} with seeded mutations",
                answer_ok=True,
            )
    return cases


def _chunk_app(count: int) -> bytes:
    """``count`` empty-ish APP15 segments."""
    return (b"\xff\xef" + struct.pack(">H", 6) + b"leaf") * count


def describe(path: Path) -> str:
    """``file``-like kind of a corpus entry (for ``index.tsv``)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISFIFO(st.st_mode):
        return "fifo"
    return "file"


def main(argv: list[str]) -> int:
    """Write the corpora under ``argv[0]``."""
    if len(argv) != 1:
        sys.stderr.write("usage: python tests/fault_corpus.py OUT_DIR\n")
        return 2
    out = Path(argv[0])
    makers = (
        ("bad", make_bad_corpus),
        ("unusual", make_unusual_corpus),
        ("hostile", make_hostile_corpus),
    )
    for part, maker in makers:
        cases = maker(out / part)
        lines = ["name\tfile\tkind\terrors\tslug\tnote"]
        for c in cases:
            errors = ",".join(sorted(c.errors))
            lines.append(
                f"{c.name}\t{c.upload_name}\t{describe(c.path)}\t{errors}\t{c.slug or ''}\t{c.note}"
            )
        (out / part / "index.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        sys.stdout.write(f"{len(cases)} {part} cases in {out / part}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
