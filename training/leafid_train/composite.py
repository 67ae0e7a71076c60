"""Leaves on real backgrounds: cut lab leaves out of their plain backgrounds and paste them.

Lab sets photograph every leaf on white scanner glass or plain paper, so a model can
learn the background instead of the leaf. :func:`leaf_mask` finds the leaf from colour
and brightness alone (numpy and Pillow, no learned model): the background colour is the
median of the image's border, each pixel's distance from it is thresholded (Otsu), and
the mask is cleaned (small specks dropped, holes filled, edges smoothed).
:func:`composite` lays the cut-out leaf on a field frame or a generated soil, paper or
skin-like fill, turned, scaled, moved, shadowed, lit, tinted, blurred and re-encoded as
a phone photo would be. uint8 HWC in, uint8 HWC out, like :mod:`leafid_train.augment`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter

from leafid_train.augment import AugmentConfig, random_crop_box

# Frame of the image whose median colour is taken as the background's (share of the side).
BORDER = 0.04
# Side (pixels) of the coarse grid on which specks are dropped and holes filled.
COARSE = 96
# A piece of the mask smaller than this share of the largest piece is a speck.
SPECK = 0.08
# Shadows and lit patches of paper differ from it in brightness, not colour: a pixel's
# brightness difference counts this much (lighter, darker) beside its colour difference.
LIGHT_WEIGHT = (0.2, 0.12)
# Images whose colour channels differ less than this on average are greyscale (flavia).
GREY_SPREAD = 4.0
# Otsu's threshold is never below this distance (a plain image with noise only).
MIN_THRESHOLD = 14.0


@dataclass(frozen=True)
class Cutout:
    """Where the leaf is in one training array.

    Attributes:
        box: (left, top, right, bottom) of the leaf in the array.
        mask: uint8 (0 or 255) mask of the leaf inside ``box``.
        grey: The photo is greyscale (flavia): its composites are made grey too, as a
            grey leaf on a coloured background would be a shortcut of its own.
    """

    box: tuple[int, int, int, int]
    mask: np.ndarray
    grey: bool = False


@dataclass(frozen=True)
class CompositeConfig:
    """Strength of each change a composite makes.

    Attributes:
        leaf_side: Range of the leaf's longer side as a share of the output side.
        inside: Share of the leaf's box that stays inside the frame.
        field_share: Chance of a field frame as background (when there are any).
        background_scale: Range of the field frame crop's share of the frame's area.
        shadow: Chance of a drop shadow.
        light: Range of the overall brightness factor.
        gradient: Largest brightness change across the frame (uneven light).
        tint: Each channel's gain is drawn from ``1 ± tint``.
        blur: Chance of a blur, and the range of its radius in pixels.
        jpeg: Chance of a JPEG re-encode, and the range of its quality.
    """

    leaf_side: tuple[float, float] = (0.45, 1.0)
    inside: float = 0.8
    field_share: float = 0.6
    background_scale: tuple[float, float] = (0.3, 1.0)
    shadow: float = 0.5
    light: tuple[float, float] = (0.55, 1.25)
    gradient: float = 0.35
    tint: float = 0.12
    blur: tuple[float, float, float] = (0.5, 0.3, 1.8)
    jpeg: tuple[float, int, int] = (0.5, 30, 90)


@dataclass(frozen=True)
class Paste:
    """What a training set needs to show leaves on backgrounds.

    Attributes:
        cutouts: The leaf of each training array, None for arrays not to paste.
        frames: Field photos to take backgrounds from (may be empty: fills only).
        prob: Chance that an array with a cut-out is shown pasted.
        cfg: Strengths.
    """

    cutouts: Sequence[Cutout | None]
    frames: Sequence[np.ndarray]
    prob: float
    cfg: CompositeConfig = CompositeConfig()


def _opponent(arr: np.ndarray) -> np.ndarray:
    """Brightness and two colour-opponent axes (float32 H x W x 3), all on the 0-255 scale."""
    x = arr.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    return np.stack([(r + g + b) / 3, r - g, (r + g) / 2 - b], axis=-1)


def otsu(values: np.ndarray, bins: int = 128) -> float:
    """The threshold that best separates ``values`` into two classes (Otsu's method)."""
    hist, edges = np.histogram(values, bins=bins)
    p = hist.astype(np.float64) / max(1, hist.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1 - w0))
    between = np.nan_to_num(between[:-1], nan=-1.0)
    return float(edges[int(np.argmax(between)) + 1])


def _border(x: np.ndarray) -> np.ndarray:
    """The values of an image's border frame (:data:`BORDER` of its shorter side)."""
    k = max(1, round(BORDER * min(x.shape[:2])))
    rest = x.shape[2:]
    parts = [x[:k], x[-k:], x[k:-k, :k], x[k:-k, -k:]]
    return np.concatenate([p.reshape(-1, *rest) for p in parts])


def is_grey(arr: np.ndarray) -> bool:
    """Whether an image's colour channels differ by less than :data:`GREY_SPREAD` on average."""
    return float(np.abs(_opponent(arr)[..., 1:]).mean()) < GREY_SPREAD


def background_distance(arr: np.ndarray) -> np.ndarray:
    """Each pixel's colour distance from the background (the median of the image's border).

    Light on paper is uneven (shadows, bright patches), and lighting scales a colour as
    a whole: the background expected at a pixel is the border's colour scaled to that
    pixel's brightness, and brightness itself counts only :data:`LIGHT_WEIGHT` as much
    as colour (shadows least), unless the image is greyscale, where brightness is all
    there is.
    """
    opp = _opponent(arr)
    paper = np.median(_border(opp), axis=0)
    light = opp[..., 0] - paper[0]
    if is_grey(arr):
        return np.abs(light)
    lit = opp[..., :1] / max(paper[0], 1.0)
    colour = opp[..., 1:] - paper[1:] * lit
    light *= np.where(light > 0, *LIGHT_WEIGHT).astype(np.float32)
    return np.sqrt(light**2 + (colour**2).sum(axis=-1))


def _spread(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Label each 4-connected piece of ``allowed`` with the largest seed label in it."""
    labels = np.where(allowed, seed, 0)
    while True:
        grown = labels.copy()
        grown[1:] = np.maximum(grown[1:], labels[:-1])
        grown[:-1] = np.maximum(grown[:-1], labels[1:])
        grown[:, 1:] = np.maximum(grown[:, 1:], labels[:, :-1])
        grown[:, :-1] = np.maximum(grown[:, :-1], labels[:, 1:])
        grown = np.where(allowed, grown, 0)
        if np.array_equal(grown, labels):
            return labels
        labels = grown


def _coarse(mask: np.ndarray, step: int) -> np.ndarray:
    """Any-pixel-set pooling of a bool mask over ``step`` x ``step`` blocks."""
    h, w = mask.shape
    padded = np.zeros((-(-h // step) * step, -(-w // step) * step), dtype=bool)
    padded[:h, :w] = mask
    return padded.reshape(padded.shape[0] // step, step, -1, step).any(axis=(1, 3))


def _fine(coarse: np.ndarray, step: int, shape: tuple[int, int]) -> np.ndarray:
    """A coarse mask blown back up to ``shape``."""
    return np.repeat(np.repeat(coarse, step, axis=0), step, axis=1)[: shape[0], : shape[1]]


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Drop specks, fill holes and close pinholes of a rough foreground mask.

    Pieces are found on a coarse grid (any pixel of a block set sets the block, so thin
    stems stay joined to their leaf); pieces under :data:`SPECK` of the largest one go,
    and background that the image border cannot reach is a hole in the leaf.
    """
    step = max(1, math.ceil(max(mask.shape) / COARSE))
    coarse = _coarse(mask, step)
    ids = np.arange(1, coarse.size + 1, dtype=np.int64).reshape(coarse.shape)
    pieces = _spread(ids, coarse)
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    if sizes.max() == 0:
        return np.zeros_like(mask)
    kept = np.isin(pieces, np.flatnonzero(sizes >= SPECK * sizes.max()))
    edge = np.zeros(coarse.shape, dtype=np.int64)
    edge[[0, -1], :] = 1
    edge[:, [0, -1]] = 1
    outside = _spread(edge, ~kept) > 0
    leaf = (mask & _fine(kept, step, mask.shape)) | _fine(~kept & ~outside, step, mask.shape)
    img = Image.fromarray(leaf.astype(np.uint8) * 255)
    # close pinholes; no opening, which would cut thin stems off
    img = img.filter(ImageFilter.MaxFilter(5)).filter(ImageFilter.MinFilter(5))
    return np.asarray(img) > 127


def leaf_mask(arr: np.ndarray) -> np.ndarray:
    """Bool mask of the leaf in a photo of one leaf on a plain background (H x W)."""
    dist = background_distance(arr)
    threshold = max(otsu(dist), MIN_THRESHOLD)
    return clean_mask(dist > threshold)


def cut_out(
    arr: np.ndarray, smallest: float = 0.02, largest: float = 0.9, border: float = 0.1
) -> Cutout | None:
    """The leaf of a lab photo, or None when the mask is unusable.

    Args:
        arr: uint8 RGB array (H, W, 3).
        smallest: A mask under this share of the image is not a leaf.
        largest: A mask over this share is the whole photo (no plain background).
        border: A mask over this share of the image's border frame is a leaf cut by
            the frame, or a photo without a plain background (a field photo).
    """
    mask = leaf_mask(arr)
    share = float(mask.mean())
    if not smallest <= share <= largest or float(_border(mask).mean()) > border:
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = mask[top:bottom, left:right].astype(np.uint8) * 255
    return Cutout((int(left), int(top), int(right), int(bottom)), crop, is_grey(arr))


def fill(size: int, rng: np.random.Generator) -> np.ndarray:
    """A generated background: soil, paper, skin or foliage colours, plain or textured."""
    palette = np.array(
        [
            [96, 72, 50],  # soil
            [130, 104, 78],  # dry soil
            [60, 48, 38],  # wet soil
            [225, 220, 205],  # paper
            [185, 180, 170],  # grey card
            [215, 170, 140],  # light skin
            [150, 105, 80],  # dark skin
            [95, 110, 70],  # foliage
            [120, 120, 115],  # concrete
        ],
        dtype=np.float32,
    )
    base = palette[rng.integers(len(palette))] * rng.uniform(0.75, 1.2, 3)
    cells = int(rng.integers(2, 24))
    coarse = rng.normal(0, 1, (cells, cells, 1)) + rng.normal(0, 0.25, (cells, cells, 3))
    blotch = np.asarray(
        Image.fromarray(np.clip(coarse * 40 + 128, 0, 255).astype(np.uint8), "RGB").resize(
            (size, size), Image.Resampling.BICUBIC
        ),
        dtype=np.float32,
    )
    grain = rng.normal(0, 1, (size, size, 1)).astype(np.float32)
    texture = (blotch - 128) * rng.uniform(0, 0.8) + grain * rng.uniform(0, 14)
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def field_crop(
    frame: np.ndarray, size: int, rng: np.random.Generator, cfg: CompositeConfig
) -> np.ndarray:
    """A random square crop of a field frame, resized to ``size`` and maybe flipped."""
    img = Image.fromarray(frame)
    box = random_crop_box(img.width, img.height, rng, AugmentConfig(cfg.background_scale, (1, 1)))
    out = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=box))
    return out[:, ::-1] if rng.random() < 0.5 else out


def background(
    frames: Sequence[np.ndarray], size: int, rng: np.random.Generator, cfg: CompositeConfig
) -> np.ndarray:
    """A field frame crop (with chance ``cfg.field_share`` when there are frames), else a fill."""
    if frames and rng.random() < cfg.field_share:
        return field_crop(frames[int(rng.integers(len(frames)))], size, rng, cfg)
    return fill(size, rng)


def _inner_edge(alpha: Image.Image) -> Image.Image:
    """The alpha a pixel inside its edge (edge pixels still hold some paper), softened.

    Parts thinner than the erosion (stems) keep their full width.
    """
    inner = alpha.filter(ImageFilter.MinFilter(3))
    thin = ImageChops.subtract(alpha, inner.filter(ImageFilter.MaxFilter(3)))
    return ImageChops.lighter(inner, thin).filter(ImageFilter.GaussianBlur(0.7))


def _place(
    arr: np.ndarray, cut: Cutout, size: int, rng: np.random.Generator, cfg: CompositeConfig
) -> tuple[Image.Image, Image.Image, tuple[int, int]]:
    """The leaf and its alpha turned and scaled for a ``size`` frame, and where it goes."""
    left, top, right, bottom = cut.box
    leaf = Image.fromarray(np.ascontiguousarray(arr[top:bottom, left:right]))
    alpha = Image.fromarray(cut.mask)
    if rng.random() < 0.5:
        leaf = leaf.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        alpha = alpha.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(0, 360))
    alpha = alpha.rotate(angle, Image.Resampling.BILINEAR, expand=True)
    box = alpha.getbbox() or (0, 0, alpha.width, alpha.height)
    alpha = alpha.crop(box)
    leaf = leaf.rotate(angle, Image.Resampling.BILINEAR, expand=True).crop(box)
    side = size * rng.uniform(*cfg.leaf_side)
    scale = side / max(leaf.size)
    dims = (max(1, round(leaf.width * scale)), max(1, round(leaf.height * scale)))
    leaf = leaf.resize(dims, Image.Resampling.BILINEAR)
    alpha = _inner_edge(alpha.resize(dims, Image.Resampling.BILINEAR))
    slack = 1 - cfg.inside
    x = int(rng.uniform(-slack * dims[0], size - (1 - slack) * dims[0]))
    y = int(rng.uniform(-slack * dims[1], size - (1 - slack) * dims[1]))
    return leaf, alpha, (x, y)


def _light(x: np.ndarray, rng: np.random.Generator, cfg: CompositeConfig) -> np.ndarray:
    """Overall light, a light gradient across the frame and a colour cast (float HWC)."""
    size = x.shape[0]
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gradient = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
    gain = rng.uniform(*cfg.light) * (1 + rng.uniform(0, cfg.gradient) * gradient)
    tint = rng.uniform(1 - cfg.tint, 1 + cfg.tint, 3).astype(np.float32)
    return x * gain[..., None] * tint


def composite(
    arr: np.ndarray,
    cut: Cutout,
    frames: Sequence[np.ndarray],
    size: int,
    rng: np.random.Generator,
    cfg: CompositeConfig | None = None,
) -> np.ndarray:
    """The leaf of ``arr`` laid on a field frame or a generated fill, as a phone would see it.

    Args:
        arr: uint8 RGB lab photo (H, W, 3).
        cut: Its leaf (:func:`cut_out`).
        frames: Field photos to take backgrounds from (may be empty: fills only).
        size: Output side in pixels.
        rng: Source of randomness (seed it for reproducible epochs).
        cfg: Strengths.

    Returns:
        uint8 array (size, size, 3).
    """
    cfg = cfg or CompositeConfig()
    scene = Image.fromarray(background(frames, size, rng, cfg))
    leaf, alpha, (x, y) = _place(arr, cut, size, rng, cfg)
    if rng.random() < cfg.shadow:
        dx, dy = (int(v) for v in rng.integers(-size // 20, size // 20 + 1, 2))
        shade = alpha.filter(ImageFilter.GaussianBlur(float(rng.uniform(2, 8))))
        dark = Image.new("RGB", shade.size, (0, 0, 0))
        strength = float(rng.uniform(0.25, 0.6))
        shade = shade.point(lambda v: round(v * strength))
        scene.paste(dark, (x + dx, y + dy), shade)
    scene.paste(leaf, (x, y), alpha)
    out = _light(np.asarray(scene, dtype=np.float32), rng, cfg)
    img = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    chance, low, high = cfg.blur
    if rng.random() < chance:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(low, high))))
    chance, worst, best = cfg.jpeg
    if rng.random() < chance:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(worst, best + 1)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if cut.grey:
        img = img.convert("L").convert("RGB")
    return np.array(img)  # writable, as torch.from_numpy wants
