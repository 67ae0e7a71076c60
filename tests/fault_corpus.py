"""Generated corpora of bad and of unusual-but-valid image files, for the fault tests.

``make_bad_corpus(dir)`` writes files leafid must refuse with a typed error (truncated,
corrupt, header-only bombs, non-images named ``.jpg``, symlink loops, a FIFO, ...);
``make_unusual_corpus(dir)`` writes odd but valid photos it must classify (1x1, CMYK,
16-bit, palette+alpha, animated, EXIF-rotated, wrong extension, extreme aspect ratios,
...); ``make_hostile_corpus(dir)`` writes what a hostile client would send (a file of
every format Pillow reads, decompression and CPU bombs of each accepted format, mutated
headers, seeded random mutations). All return one :class:`Case` per file. Not collected by pytest (no ``test_``
prefix); tests import it as ``from fault_corpus import ...``.

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
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import TINY_COLOURS, noisy

RED = TINY_COLOURS["rubra"]
GREEN = TINY_COLOURS["viridis"]
BLUE = TINY_COLOURS["caerulea"]
BOMB_SIDE = 20_000

# Error codes (leafid.errors) a bad case may be reported with.
BAD = frozenset({"bad_image"})
UNSUPPORTED = frozenset({"unsupported_type"})
TOO_LARGE = frozenset({"too_large"})
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
        fs_case("dangling_symlink", dangling, BAD, "symlink to nothing")
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
