"""Decoding of real-world image files, each case made synthetically."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import encode, noisy, solid
from leafid.errors import BadImageError, ImageNotFoundError, TooLargeError, UnsupportedTypeError
from leafid.images import ImageLimits, decode, read_bytes

LIMITS = ImageLimits()


def png_with_header_size(width: int, height: int) -> bytes:
    """A small PNG whose IHDR claims width x height (a decompression-bomb header)."""
    data = encode(Image.new("L", (8, 8)), "PNG")
    ihdr_start = 8 + 4 + 4  # signature, length, b"IHDR"
    body = bytearray(data[ihdr_start : ihdr_start + 13])
    body[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)))
    return data[:ihdr_start] + bytes(body) + crc + data[ihdr_start + 17 :]


def test_rgb_jpeg_decodes():
    img = decode(encode(noisy((200, 30, 30))), LIMITS)
    assert img.mode == "RGB" and img.size == (64, 48)


def test_big_jpeg_uses_draft_mode_but_keeps_min_side():
    data = encode(noisy((10, 200, 10), (4000, 3000)), quality=85)
    img = decode(data, LIMITS, min_side=256)
    assert img.mode == "RGB"
    assert min(img.size) >= 256
    assert img.size[0] < 4000  # decoded at reduced scale
    assert decode(data, LIMITS).size == (4000, 3000)  # no min_side: full size


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 30, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    data = encode(img, quality=95, exif=exif.tobytes())
    out = decode(data, LIMITS)
    assert out.size == (20, 60)
    top = np.asarray(out)[2, 10]
    assert top[2] > 200 and top[0] < 60  # blue half is now on top


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)))  # red in CMYK
    out = np.asarray(decode(data, LIMITS))
    assert out.shape == (16, 16, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    out = np.asarray(decode(encode(img, "PNG"), LIMITS))
    assert (out == 255).all()


def test_la_and_palette_with_transparency():
    la = Image.new("LA", (10, 10), (0, 0))
    assert (np.asarray(decode(encode(la, "PNG"), LIMITS)) == 255).all()
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    assert (np.asarray(decode(encode(pal, "PNG", transparency=0), LIMITS)) == 255).all()


def test_16_bit_greyscale_is_scaled_not_clipped():
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    out = np.asarray(decode(data, LIMITS))
    assert out.shape == (8, 8, 3)
    assert 120 <= out.mean() <= 135  # half of full scale, not saturated 255


def test_greyscale_and_bilevel():
    assert decode(encode(Image.new("L", (5, 5), 7), "PNG"), LIMITS).mode == "RGB"
    assert decode(encode(Image.new("1", (5, 5), 1), "PNG"), LIMITS).mode == "RGB"


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    out = np.asarray(decode(buf.getvalue(), LIMITS))
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 60


def test_webp_decodes():
    assert decode(encode(solid((1, 2, 3)), "WEBP"), LIMITS).size == (64, 48)


def test_truncated_jpeg_is_bad_image():
    data = encode(noisy((100, 100, 100), (256, 256)))
    with pytest.raises(BadImageError):
        decode(data[: len(data) // 2], LIMITS)


def test_zero_bytes_is_bad_image():
    with pytest.raises(BadImageError, match="empty"):
        decode(b"", LIMITS)


def test_text_named_jpg_is_unsupported_type():
    with pytest.raises(UnsupportedTypeError):
        decode(b"hello, I am not a picture\n" * 10, LIMITS)


def test_heic_header_without_extra_names_the_extra(monkeypatch):
    monkeypatch.setattr("leafid.images.HEIF_AVAILABLE", False)
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(UnsupportedTypeError, match=r"leafid\[heic\]"):
        decode(data, LIMITS)


def test_bomb_header_is_too_large_not_a_warning():
    with pytest.raises(TooLargeError):
        decode(png_with_header_size(20000, 20000), LIMITS)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(TooLargeError, match="pixels"):
        decode(png_with_header_size(3000, 3000), ImageLimits(max_pixels=1_000_000))


def test_byte_limit():
    data = encode(noisy((1, 1, 1)))
    with pytest.raises(TooLargeError):
        decode(data, ImageLimits(max_bytes=len(data) - 1))


def test_read_bytes_errors(tmp_path):
    with pytest.raises(ImageNotFoundError, match="file not found"):
        read_bytes(tmp_path / "missing.jpg", LIMITS)
    with pytest.raises(BadImageError):
        read_bytes(tmp_path, LIMITS)  # a directory
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 100)
    with pytest.raises(TooLargeError):
        read_bytes(big, ImageLimits(max_bytes=10))


def test_float_image_in_unit_range_is_scaled():
    arr = np.full((8, 8), 0.5, dtype=np.float32)
    out = np.asarray(decode(encode(Image.fromarray(arr, mode="F"), "TIFF"), LIMITS))
    assert 120 <= out.mean() <= 135


def test_limits_above_pillows_own_guard_are_refused():
    from leafid.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="Pillow"):
        ImageLimits(max_pixels=Image.MAX_IMAGE_PIXELS + 1)
    with pytest.raises(InvalidRequestError):
        ImageLimits(max_bytes=0)


def test_unplanned_pillow_exception_is_bad_image(odd_image):
    with pytest.raises(BadImageError, match="cannot decode image: IndexError: tile index"):
        decode(odd_image, LIMITS)
