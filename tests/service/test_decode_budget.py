"""The decode budget: accepted formats only, decode cost checked from the header, per
request and across threads, and the memory and CPU one request of the worst files takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fault_corpus import (
    HAND_MADE_FORMATS,
    PLUGIN_FORMATS,
    Case,
    _chunk,
    jpeg_with_scans,
    make_hostile_corpus,
    plugin_file,
    png_flat,
)
from PIL import Image, ImageFile

from conftest import encode, noisy
from leafid import images
from leafid.classifier import Classifier
from leafid.errors import (
    BadImageError,
    ImageError,
    InvalidRequestError,
    TooLargeError,
    UnsupportedTypeError,
)
from leafid.images import (
    HEIF_AVAILABLE,
    MAX_JPEG_SCANS,
    DecodeBudget,
    ImageLimits,
    accepted_formats,
    decode,
    to_rgb,
)
from leafid.results import Prediction

LIMITS = ImageLimits()
MiB = 1024 * 1024


@pytest.mark.parametrize("fmt", sorted(PLUGIN_FORMATS) + sorted(HAND_MADE_FORMATS))
def test_other_pillow_formats_are_unsupported_and_never_opened(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = plugin_file(fmt)
    Image.init()
    tried: list[str] = []
    for name, (factory, accept) in list(Image.OPEN.items()):
        if name not in accepted_formats():

            def spy(*args: object, _name: str = name, _f: object = factory) -> object:
                tried.append(_name)
                return _f(*args)  # type: ignore[operator]

            monkeypatch.setitem(Image.OPEN, name, (spy, accept))
    with pytest.raises(UnsupportedTypeError):
        decode(data, LIMITS)
    assert tried == []


def test_accepted_formats() -> None:
    got = accepted_formats()
    assert got[:6] == ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
    assert ("HEIF" in got) == HEIF_AVAILABLE


def test_damaged_heic_is_bad_image() -> None:
    if not HEIF_AVAILABLE:
        pytest.skip("pillow-heif is not installed")
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    with pytest.raises(BadImageError, match="damaged HEIC"):
        decode(data, LIMITS)


def test_cost_is_checked_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    # the file: 7000x7000 16-bit grey, ~100 KB, ~1.3 GB to decode before
    data = png_flat(7000, 7000, 16, 0, b"\x00" + b"\x80\x00" * 7000)
    assert len(data) < 200_000

    def no_loading(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_loading)
    with pytest.raises(TooLargeError, match=r"7000x7000 I;16 pixels needs 327.1 MiB"):
        decode(data, LIMITS)


@pytest.mark.parametrize(
    ("mode", "per_pixel"),
    [("RGB", 4), ("L", 5), ("P", 5), ("RGBA", 8), ("I;16", 7), ("F", 9), ("1", 5)],
)
def test_decode_cost_per_mode(mode: str, per_pixel: int) -> None:
    img = Image.new(mode, (40, 30))
    fmt = "TIFF" if mode in ("I;16", "F") else "PNG"
    data = encode(img, fmt)
    just = 40 * 30 * per_pixel
    decode(data, ImageLimits(max_decode_bytes=just))
    with pytest.raises(TooLargeError, match="to decode"):
        decode(data, ImageLimits(max_decode_bytes=just - 1))


def test_webp_costs_its_decoder_buffers() -> None:
    data = encode(Image.new("RGB", (40, 30)), "WEBP", lossless=True)
    decode(data, ImageLimits(max_decode_bytes=40 * 30 * 16))
    with pytest.raises(TooLargeError):
        decode(data, ImageLimits(max_decode_bytes=40 * 30 * 16 - 1))


def test_drafted_jpeg_costs_its_reduced_size_and_progressive_its_coefficients() -> None:
    photo = noisy((10, 200, 10), (2000, 1600))
    baseline = encode(photo, quality=85)
    progressive = encode(photo, quality=85, progressive=True)
    small = ImageLimits(max_decode_bytes=2 * MiB)
    assert min(decode(baseline, small, min_side=256).size) >= 256  # drafted: ~1 MB
    with pytest.raises(TooLargeError):
        decode(baseline, small)  # full size: 12.8 MB
    with pytest.raises(TooLargeError):
        decode(progressive, small, min_side=256)  # 2000x1600 4:2:0 coefficients: 9.6 MB
    assert decode(progressive, ImageLimits(max_decode_bytes=11 * MiB), min_side=256)


def test_jpeg_scan_limit() -> None:
    assert images._jpeg_scans(encode(noisy((1, 2, 3)))) == 1
    at_limit = jpeg_with_scans(MAX_JPEG_SCANS - 10)
    assert images._jpeg_scans(at_limit) == MAX_JPEG_SCANS
    assert decode(at_limit, LIMITS).size == (256, 256)
    with pytest.raises(TooLargeError, match="scans"):
        decode(jpeg_with_scans(MAX_JPEG_SCANS - 9), LIMITS)


def test_a_sequential_jpeg_whose_first_scan_is_whole_is_not_walked() -> None:
    data = encode(noisy((1, 2, 3), (400, 300)))
    sos, eoi = data.index(b"\xff\xda"), data.rindex(b"\xff\xd9")
    repeated = data[:eoi] + data[sos:eoi] * 40 + b"\xff\xd9"  # 40 more copies of its scan
    assert images._jpeg_scans(repeated, progressive=True) == 41  # the full walk
    assert images._jpeg_scans(repeated, progressive=False) == 1  # stops at the first scan
    # libjpeg refuses a second scan of a sequential image: no decoding work is repeated
    start = time.process_time()
    with pytest.raises(BadImageError):
        decode(repeated, LIMITS)
    assert time.process_time() - start < 1.0


def test_jpeg_scans_in_an_exif_thumbnail_are_not_counted() -> None:
    thumb = encode(noisy((1, 2, 3), (16, 16)), progressive=True)
    exif = b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb
    data = encode(noisy((1, 2, 3)))
    assert images._jpeg_scans(data[:2] + exif + data[2:]) == 1


def test_rle_bmp_size_limit() -> None:
    from fault_corpus import bmp_rle8

    runs = b"\x01\x05" * 200
    assert decode(bmp_rle8(200, 1, runs), LIMITS).size == (200, 1)
    big = bmp_rle8(4000, 4000, b"\x01\x05" * (images.MAX_RLE_BMP_BYTES // 2))
    with pytest.raises(TooLargeError, match="RLE"):
        decode(big, LIMITS)


def test_png_exif_after_the_pixels_is_counted_when_found() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    plain = encode(Image.new("RGB", (40, 30), (200, 0, 0)), "PNG")
    end = plain.rindex(b"IEND") - 4
    data = plain[:end] + _chunk(b"eXIf", exif.tobytes()[6:]) + plain[end:]
    assert decode(data, LIMITS).size == (30, 40)  # rotated
    with pytest.raises(TooLargeError):
        decode(data, ImageLimits(max_decode_bytes=40 * 30 * 4))  # the rotated copy too


def test_limits_validation() -> None:
    with pytest.raises(InvalidRequestError):
        ImageLimits(max_decode_bytes=0)
    with pytest.raises(InvalidRequestError, match="at least max_decode_bytes"):
        ImageLimits(max_decode_bytes=10, max_request_decode_bytes=9)


def test_decode_budget_spends_until_empty() -> None:
    budget = DecodeBudget(ImageLimits(max_decode_bytes=10, max_request_decode_bytes=10))
    budget.spend(6)
    with pytest.raises(TooLargeError, match="decoding budget left"):
        budget.spend(5)
    budget.spend(4)
    assert budget.left == 0


def test_each_image_past_a_requests_budget_gets_its_own_error(tiny_model: Path) -> None:
    big = encode(noisy((220, 30, 30), (400, 300)), "PNG")  # costs 480,000 bytes
    tiny = encode(noisy((30, 40, 210), (40, 30)), "PNG")  # 4,800
    limits = ImageLimits(max_decode_bytes=500_000, max_request_decode_bytes=1_000_000)
    clf = Classifier(tiny_model, limits=limits)
    answers = clf.classify_images([big, big, big, tiny, b"not an image", big])
    kinds = [type(a).__name__ for a in answers]
    assert kinds == [
        "Prediction",
        "Prediction",
        "TooLargeError",
        "Prediction",
        "UnsupportedTypeError",
        "TooLargeError",
    ]
    assert "decoding budget" in str(answers[2])
    # each request has its own budget
    assert isinstance(clf.classify_images([big])[0], Prediction)
    assert all(isinstance(clf.try_load(big), np.ndarray) for _ in range(3))  # no budget


def test_memory_gate_makes_big_decodes_take_turns() -> None:
    gate = images._MemoryGate()
    held: list[int] = []
    inside = 0
    lock = threading.Lock()

    def work(cost: int) -> None:
        nonlocal inside
        with gate.hold(cost, capacity=10):
            with lock:
                inside += cost
                held.append(inside)
            time.sleep(0.02)
            with lock:
                inside -= cost

    threads = [threading.Thread(target=work, args=(c,)) for c in (6, 6, 6, 3, 1, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert max(held) <= 10
    # small ones run alongside a big one
    held.clear()
    pair = [threading.Thread(target=work, args=(c,)) for c in (6, 3)]
    for t in pair:
        t.start()
    for t in pair:
        t.join(timeout=10)
    assert max(held) == 9


def test_to_rgb_in_strips_equals_the_whole_image_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "_STRIP_PIXELS", 1000)  # many strips, one partial
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    want = np.clip(every.astype(np.float64) / 65535 * 255 + 0.5, 0, 255).astype(np.uint8)
    got = np.asarray(to_rgb(Image.fromarray(every)))
    assert (got == want[..., None]).all()
    rng = np.random.default_rng(3)
    for arr, top in (
        (rng.integers(-300, 70_000, (123, 77)).astype(np.int32), 65535.0),
        (rng.integers(0, 200, (123, 77)).astype(np.int32), 255.0),
        (rng.random((123, 77)).astype(np.float32), 1.0),
        ((rng.random((123, 77)) * 90).astype(np.float32), 255.0),
    ):
        want = np.clip(arr.astype(np.float64) / top * 255 + 0.5, 0, 255).astype(np.uint8)
        mode = "I" if arr.dtype == np.int32 else "F"
        got = np.asarray(to_rgb(Image.fromarray(arr, mode)))
        assert (got == want[..., None]).all(), (mode, top)
    pal = Image.fromarray(rng.integers(0, 8, (123, 77)).astype(np.uint8), "L").convert("P")
    pal.putpalette(list(rng.integers(0, 256, 768)))
    pal.info["transparency"] = 3
    whole = Image.alpha_composite(
        Image.new("RGBA", pal.size, (255, 255, 255, 255)), pal.convert("RGBA")
    ).convert("RGB")
    assert np.array_equal(np.asarray(to_rgb(pal)), np.asarray(whole))
    cmyk = Image.fromarray(rng.integers(0, 256, (123, 77, 4)).astype(np.uint8), "CMYK")
    assert np.array_equal(np.asarray(to_rgb(cmyk)), np.asarray(cmyk.convert("RGB")))


# --- fuzzing ---------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SMALL_FILES = {
    fmt: plugin_file(fmt) for fmt in ("DDS", "SPIDER", "TGA", "PCX", "SGI", "ICO", "QOI")
} | {
    fmt: encode(noisy((30, 200, 40), (24, 16)).convert("P" if fmt == "GIF" else "RGB"), fmt)
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")
}


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SMALL_FILES[draw(st.sampled_from(sorted(SMALL_FILES)))])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "big"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[max(1, at) :]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:  # a big number where a size may be
            data[at : at + 4] = draw(st.sampled_from([b"\xff\xff\xff\x7f", b"\x00\x00\x7f\xff"]))
    return bytes(data)


@pytest.mark.filterwarnings(r"ignore::UserWarning:PIL\..*")
@pytest.mark.filterwarnings(r"ignore::RuntimeWarning")
@given(data=mutated())
@settings(
    max_examples=int(os.environ.get("LEAFID_FUZZ_EXAMPLES", "100")) * 3,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
def test_mutated_files_of_every_format_decode_or_raise_an_image_error(data: bytes) -> None:
    try:
        img = decode(data, LIMITS, min_side=36)
    except ImageError:
        return
    assert img.mode == "RGB" and img.width >= 1 and img.height >= 1


# --- what one request of the worst files takes --------------------------------------------

# The costliest files the limits let through (decoded in full), then bombs refused from
# their headers. A request of 16 of them is the worst a client can send.
WORST = [
    "png_grey_6500",
    "png_rgb_7000",
    "gif_6000",
    "tiff_deflate_5000",
    "jpeg_progressive_7000",
    "webp_3000",
    "tiff_jpeg_4000",
    "jpeg_scans_16",
]
REFUSED = ["png_grey16_7000", "webp_lossless_7000", "jpeg_scans_1000", "bmp_rle_cpu"]

MEASURE = """
import glob, json, sys, time
from leafid.classifier import Classifier
from leafid.errors import ImageError

def mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

model, warm, *paths = sys.argv[1:]
clf = Classifier(model)
# what a first request loads (onnxruntime's buffers, Pillow's plugins) is not the request's
clf.classify_images(sorted(glob.glob(warm + "/*")))
base, rss, cpu = mb("VmHWM:"), mb("VmRSS:"), time.process_time()
answers = clf.classify_images(paths)
print(json.dumps({
    "rss_added_mb": mb("VmHWM:") - base,
    "rss_kept_mb": mb("VmRSS:") - rss,
    "cpu_s": time.process_time() - cpu,
    "answers": [a.code if isinstance(a, ImageError) else "ok" for a in answers],
}))
"""


MEASURE_CLI = """
import json, sys, time
from leafid.cli import main

def mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

model, warm, out, *paths = sys.argv[1:]
common = ["--model", model, "--decode-threads", "4", "--format", "jsonl", "-o", out]
main(["classify", warm, *common])  # loads what a first run loads
base, rss, cpu = mb("VmHWM:"), mb("VmRSS:"), time.process_time()
status = main(["classify", *paths, *common])
rows = [json.loads(line) for line in open(out)]
print(json.dumps({
    "rss_added_mb": mb("VmHWM:") - base,
    "rss_kept_mb": mb("VmRSS:") - rss,
    "cpu_s": time.process_time() - cpu,
    "status": status,
    "answers": [r["error"]["type"] if "error" in r else "ok" for r in rows],
}))
"""


@pytest.fixture
def warm(tmp_path: Path) -> Path:
    """A folder with a small file of each accepted format."""
    folder = tmp_path / "warm"
    folder.mkdir()
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif")):
        (folder / f"warm.{ext}").write_bytes(encode(noisy((1, 2, 3)), fmt))
    (folder / "warm.gif").write_bytes(encode(noisy((1, 2, 3)).convert("P"), "GIF"))
    (folder / "warm.bmp").write_bytes(encode(noisy((1, 2, 3)), "BMP"))
    return folder


@pytest.fixture(scope="module")
def worst(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return {c.name: c for c in make_hostile_corpus(tmp_path_factory.mktemp("hostile"))}


def _measure(script: str, *args: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result: dict[str, object] = json.loads(proc.stdout)
    sys.stderr.write(f"{result}\n")  # the figures, shown with pytest -s
    return result


NEEDS_PROC = pytest.mark.skipif(
    not os.path.exists("/proc/self/status"), reason="peak RSS is read from Linux /proc"
)


@NEEDS_PROC
@pytest.mark.parametrize("mix", ["each_worst_twice", "the_worst_16_times", "with_bombs"])
def test_one_request_of_the_worst_files_is_bounded(
    mix: str, worst: dict[str, Case], tiny_model: Path, warm: Path
) -> None:
    names = {
        "each_worst_twice": WORST * 2,
        "the_worst_16_times": ["png_grey_6500"] * 16,
        "with_bombs": (WORST + REFUSED) * 2,
    }[mix][:16]
    result = _measure(MEASURE, tiny_model, warm, *[worst[n].path for n in names])
    answers = result["answers"]
    assert isinstance(answers, list) and len(answers) == 16
    assert set(answers) <= {"ok", "too_large"}
    assert answers[0] == "ok"
    assert isinstance(result["rss_added_mb"], float) and result["rss_added_mb"] <= 300
    assert isinstance(result["cpu_s"], float) and result["cpu_s"] <= 5.0


@NEEDS_PROC
def test_a_cli_batch_of_the_worst_files_is_bounded_in_memory(
    worst: dict[str, Case], tiny_model: Path, warm: Path, tmp_path: Path
) -> None:
    # four decode threads: the memory gate makes the big decodes take turns. The CLI
    # has no request budget (a batch is not a request: what it refuses would depend on
    # which thread finished first), so each file is decoded and CPU is not bounded here.
    paths = [worst[n].path for n in WORST + REFUSED]
    result = _measure(MEASURE_CLI, tiny_model, warm, tmp_path / "out.jsonl", *paths)
    assert result["status"] == 1
    assert result["answers"] == ["ok"] * len(WORST) + ["too_large"] * len(REFUSED)
    assert isinstance(result["rss_added_mb"], float) and result["rss_added_mb"] <= 300
