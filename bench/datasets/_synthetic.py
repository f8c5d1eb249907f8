"""Textures and defects of the embedded default dataset, drawn with numpy and OpenCV.

Every function takes a ``numpy.random.Generator``, so one seed fixes every pixel. Defects
are shapes (strokes, polygons with a wavy outline, ellipses) painted over the clean image;
none is made by blending noise, which the self-supervised methods use to fake defects.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

SUPERSAMPLE = 4
"""Shapes are drawn at this many times the image size and averaged down: soft edges."""

MIN_ALPHA = 0.3
"""Coverage below this is dropped, so the mask is exactly the set of changed pixels."""

CONTRASTS = (0.14, 0.28, 0.5)
"""Defect strength for the low, medium and high contrast level."""


@dataclass(frozen=True)
class TextureKind:
    """One texture class: how to draw a clean image and whether it is gray."""

    draw: Callable[[np.random.Generator, int], np.ndarray]
    gray: bool
    description: str


# --- noise helpers -------------------------------------------------------------------------


def _smooth_noise(
    rng: np.random.Generator, size: int, sigma: float, sigma_y: float | None = None
) -> np.ndarray:
    """White noise blurred by a Gaussian, rescaled to mean 0 and std 1; ``H x W`` float32."""
    noise = rng.standard_normal((size, size)).astype(np.float32)
    blurred = cv2.GaussianBlur(
        noise, (0, 0), sigmaX=sigma, sigmaY=sigma_y or sigma, borderType=cv2.BORDER_REFLECT
    )
    return (blurred - blurred.mean()) / max(float(blurred.std()), 1e-6)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``y, x``, each ``H x W`` float32."""
    coordinates = np.arange(size, dtype=np.float32)
    return np.meshgrid(coordinates, coordinates, indexing="ij")


# --- textures ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _photo(name: str) -> np.ndarray:
    """A CC0 texture photo that scikit-image ships (512 x 512 gray) as float32 in [0, 1]."""
    import skimage.data

    return getattr(skimage.data, name)().astype(np.float32) / 255.0


def _photo_crop(rng: np.random.Generator, size: int, name: str) -> np.ndarray:
    """A crop of a photo, slightly rotated, scaled and maybe mirrored; ``H x W``.

    The small affine change keeps a test crop from repeating a training crop pixel for
    pixel, which would flatter methods that memorise patches.
    """
    photo = _photo(name)
    angle = rng.uniform(-4.0, 4.0)
    scale = rng.uniform(0.85, 1.15) * size / 256  # same field of view at any size
    margin = 0.5 * size / scale * 1.08  # half the rotated window, in photo pixels
    centre_x = rng.uniform(margin, photo.shape[1] - margin)
    centre_y = rng.uniform(margin, photo.shape[0] - margin)
    matrix = cv2.getRotationMatrix2D((centre_x, centre_y), angle, scale)
    matrix[:, 2] += (size / 2 - centre_x, size / 2 - centre_y)
    crop = cv2.warpAffine(
        photo, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.clip(crop, 0.0, 1.0)


def _weave(rng: np.random.Generator, size: int) -> np.ndarray:
    """Plain-weave fabric: blue warp over beige weft in a checker of crossings; ``H x W x 3``."""
    y, x = _grid(size)
    period = rng.uniform(9.5, 10.5) * size / 256
    u = x + rng.uniform(0, period) + 1.2 * _smooth_noise(rng, size, 12 * size / 256)
    v = y + rng.uniform(0, period) + 1.2 * _smooth_noise(rng, size, 12 * size / 256)
    warp_index, weft_index = np.floor(u / period), np.floor(v / period)
    across_warp = np.sin(np.pi * (u / period - warp_index)) ** 0.6  # thread's round profile
    across_weft = np.sin(np.pi * (v / period - weft_index)) ** 0.6
    warp_on_top = (warp_index + weft_index) % 2 == 0
    shade = np.where(
        warp_on_top,
        across_warp * (0.7 + 0.3 * across_weft),
        across_weft * (0.7 + 0.3 * across_warp),
    )

    # each thread is dyed a little differently
    threads = int(size / period) + 8
    warp_tone = 1 + rng.normal(0, 0.05, threads)[(warp_index.astype(int) % threads)]
    weft_tone = 1 + rng.normal(0, 0.05, threads)[(weft_index.astype(int) % threads)]
    warp_colour = np.array([0.22, 0.32, 0.58], dtype=np.float32)
    weft_colour = np.array([0.82, 0.76, 0.60], dtype=np.float32)
    colour = np.where(
        warp_on_top[..., None],
        warp_colour * warp_tone[..., None],
        weft_colour * weft_tone[..., None],
    )  # H x W x 3
    fibres = 0.035 * _smooth_noise(rng, size, 0.7)
    image = colour * (0.35 + 0.65 * shade)[..., None] + fibres[..., None]
    return np.clip(image, 0.0, 1.0)


def _wood(rng: np.random.Generator, size: int) -> np.ndarray:
    """Wood grain: distorted growth rings with dark late wood and fine streaks; ``H x W x 3``."""
    y, x = _grid(size)
    scale = size / 256
    centre_x = rng.uniform(-700, -350) * scale  # far left: rings run top to bottom
    centre_y = rng.uniform(-0.5, 1.5) * size
    radius = np.sqrt((x - centre_x) ** 2 + (0.22 * (y - centre_y)) ** 2)
    radius += 9 * scale * _smooth_noise(rng, size, 32 * scale)
    radius += 0.6 * scale * _smooth_noise(rng, size, 3 * scale)
    ring = (radius / (rng.uniform(12, 17) * scale)) % 1.0
    late_wood = np.clip((ring - 0.55) / 0.35, 0.0, 1.0) ** 2  # dark band closing each ring
    streaks = _smooth_noise(rng, size, 0.7 * scale, 12 * scale)  # thin vertical fibres
    light = np.array([0.86, 0.67, 0.46], dtype=np.float32)
    dark = np.array([0.52, 0.32, 0.17], dtype=np.float32)
    image = light * (1 - late_wood[..., None]) + dark * late_wood[..., None]
    image = image * (1 + 0.06 * streaks[..., None])
    image = image * (1 + 0.04 * _smooth_noise(rng, size, 30 * scale)[..., None])
    return np.clip(image, 0.0, 1.0)


def _tiles(rng: np.random.Generator, size: int) -> np.ndarray:
    """Terrazzo floor tiles with grout lines, mottled tops and stone chips; ``H x W x 3``."""
    y, x = _grid(size)
    scale = size / 256
    tile = 64 * scale
    grout = 3 * scale
    shifted_x = x + rng.uniform(0, tile)
    shifted_y = y + rng.uniform(0, tile)
    tile_x, tile_y = np.floor(shifted_x / tile), np.floor(shifted_y / tile)
    in_x, in_y = shifted_x - tile_x * tile, shifted_y - tile_y * tile
    edge = np.minimum(np.minimum(in_x, tile - in_x), np.minimum(in_y, tile - in_y))

    tiles_across = int(size / tile) + 3
    tone = (1 + rng.normal(0, 0.04, (tiles_across, tiles_across))).astype(np.float32)
    tile_tone = tone[tile_y.astype(int) % tiles_across, tile_x.astype(int) % tiles_across]
    base = np.array([0.80, 0.76, 0.68], dtype=np.float32)
    image = base * tile_tone[..., None]
    image = image * (1 + 0.04 * _smooth_noise(rng, size, 6 * scale)[..., None])

    chips = _smooth_noise(rng, size, 1.3 * scale)
    image = np.where((chips > 2.1)[..., None], image * 0.45, image)  # dark chips
    image = np.where((chips < -2.3)[..., None], np.minimum(image * 1.2, 1.0), image)

    bevel = np.clip(edge / (2.5 * scale), 0.0, 1.0) * 0.15 + 0.85  # darker near the grout
    image = image * bevel[..., None]
    grout_colour = np.array([0.46, 0.44, 0.41], dtype=np.float32)
    grout_noise = 1 + 0.06 * _smooth_noise(rng, size, 1.0)
    image = np.where((edge < grout / 2)[..., None], grout_colour * grout_noise[..., None], image)
    return np.clip(image, 0.0, 1.0)


TEXTURES: dict[str, TextureKind] = {
    "brick": TextureKind(
        functools.partial(_photo_crop, name="brick"), True, "brick wall photo (gray)"
    ),
    "gravel": TextureKind(
        functools.partial(_photo_crop, name="gravel"), True, "gravel photo (gray)"
    ),
    "weave": TextureKind(_weave, False, "plain-weave fabric, two thread colours"),
    "woodgrain": TextureKind(_wood, False, "wood grain with growth rings"),
    "tiles": TextureKind(_tiles, False, "terrazzo tiles with grout lines"),
}
"""The default dataset's classes in report order."""


# --- shapes --------------------------------------------------------------------------------


def _coverage(size: int, draw: Callable[[np.ndarray, float], None]) -> np.ndarray:
    """Draw a white shape on a supersampled canvas and average down: ``H x W`` in [0, 1].

    ``draw(canvas, factor)`` receives the canvas and the factor to multiply coordinates by.
    """
    canvas = np.zeros((size * SUPERSAMPLE, size * SUPERSAMPLE), dtype=np.uint8)
    draw(canvas, float(SUPERSAMPLE))
    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def _to_canvas(points: np.ndarray, factor: float) -> np.ndarray:
    """Image coordinates (pixel centres) to integer canvas coordinates, ``N x 1 x 2``."""
    return np.round((points + 0.5) * factor - 0.5).astype(np.int32).reshape(-1, 1, 2)


def _stroke(size: int, points: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a polyline through ``points`` (``N x 2``, x then y) of ``width`` pixels."""

    def draw(canvas: np.ndarray, factor: float) -> None:
        thickness = max(1, round(width * factor))
        cv2.polylines(canvas, [_to_canvas(points, factor)], False, 255, thickness, cv2.LINE_8)

    return _coverage(size, draw)


def _blob(
    rng: np.random.Generator, size: int, centre: np.ndarray, radius: float, roughness: float
) -> np.ndarray:
    """Coverage of a closed shape whose radius varies with a few random harmonics."""
    angles = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    wobble = np.zeros_like(angles)
    for harmonic in range(2, 7):
        amplitude = roughness * rng.uniform(0.3, 1.0) / harmonic
        wobble += amplitude * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
    radii = radius * np.clip(1 + wobble, 0.35, None)
    points = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)

    def draw(canvas: np.ndarray, factor: float) -> None:
        cv2.fillPoly(canvas, [_to_canvas(points, factor)], 255, cv2.LINE_8)

    return _coverage(size, draw)


def _ellipse(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """Coverage of an ellipse with random axis ratio and angle."""
    axes = (radius, radius * rng.uniform(0.55, 1.0))
    angle = rng.uniform(0, 180)

    def draw(canvas: np.ndarray, factor: float) -> None:
        centre_canvas = tuple(int(v) for v in np.round((centre + 0.5) * factor - 0.5))
        axes_canvas = tuple(max(1, round(a * factor)) for a in axes)
        cv2.ellipse(canvas, centre_canvas, axes_canvas, angle, 0, 360, 255, -1, cv2.LINE_8)

    return _coverage(size, draw)


def _curve(rng: np.random.Generator, centre: np.ndarray, length: float) -> np.ndarray:
    """A gently bent quadratic curve of about ``length`` pixels through ``centre``; ``N x 2``."""
    direction = rng.uniform(0, np.pi)
    offset = np.array([np.cos(direction), np.sin(direction)]) * length / 2
    bend = np.array([-offset[1], offset[0]]) * rng.uniform(-0.4, 0.4)
    start, end, control = centre - offset, centre + offset, centre + bend
    t = np.linspace(0, 1, max(8, int(length)))[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def _random_walk(rng: np.random.Generator, centre: np.ndarray, steps: int) -> np.ndarray:
    """A jagged path of ``steps`` 3-pixel steps starting near ``centre``; ``N x 2``."""
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.35, steps))
    moves = 3.0 * np.stack([np.cos(heading), np.sin(heading)], axis=1)
    path = centre + np.cumsum(moves, axis=0)
    return np.vstack([centre, path]) - (path[-1] - centre) / 2  # centre the path


def _wave(rng: np.random.Generator, size: int, centre: np.ndarray, length: float) -> np.ndarray:
    """A long sinuous line, like a loose thread, ``length`` pixels long; ``N x 2``."""
    t = np.linspace(-0.5, 0.5, max(16, int(length)))
    wavelength = rng.uniform(0.15, 0.4) * size
    amplitude = rng.uniform(1.5, 6.0) * size / 256
    along = t * length
    across = amplitude * np.sin(2 * np.pi * along / wavelength + rng.uniform(0, 2 * np.pi))
    direction = rng.uniform(0, np.pi)
    unit = np.array([np.cos(direction), np.sin(direction)])
    normal = np.array([-unit[1], unit[0]])
    return centre + along[:, None] * unit + across[:, None] * normal


# --- defects -------------------------------------------------------------------------------

DefectPainter = Callable[
    [np.random.Generator, np.ndarray, int, int, bool], tuple[np.ndarray, np.ndarray]
]
"""``paint(rng, clean, contrast_level, size_level, gray) -> (alpha, target)``.

``clean`` and ``target`` are ``H x W x 3`` float32 in [0, 1]; ``alpha`` is ``H x W``
coverage in [0, 1]. The defective image is ``clean * (1 - alpha) + target * alpha``.
"""


def _chromatic_shift(rng: np.random.Generator, gray: bool) -> np.ndarray:
    """A unit colour direction: brightness for gray images, hue change for colour ones."""
    if gray:
        return np.full(3, rng.choice([-1.0, 1.0]), dtype=np.float32)
    direction = rng.normal(size=3)
    direction -= direction.mean()  # orthogonal to the gray axis: hue, not brightness
    return (direction / np.linalg.norm(direction) * np.sqrt(3)).astype(np.float32)


def _scratch(
    rng: np.random.Generator, clean: np.ndarray, contrast: int, size_level: int, gray: bool
) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    length = (40, 90, 170)[size_level] * size / 256 * rng.uniform(0.8, 1.2)
    alpha = _stroke(size, _curve(rng, _centre(rng, size), length), rng.uniform(1.0, 2.0))
    sign = 1.0 if rng.random() < 0.7 else -1.0  # most scratches catch the light
    return alpha, clean + sign * CONTRASTS[contrast] * 1.3


def _hole(
    rng: np.random.Generator, clean: np.ndarray, contrast: int, size_level: int, gray: bool
) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    radius = (4, 8, 15)[size_level] * size / 256 * rng.uniform(0.8, 1.25)
    alpha = _blob(rng, size, _centre(rng, size), radius, roughness=0.35)
    darkness = (0.45, 0.65, 0.9)[contrast]
    return alpha, clean * (1 - darkness)


def _stain(
    rng: np.random.Generator, clean: np.ndarray, contrast: int, size_level: int, gray: bool
) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    radius = (10, 20, 34)[size_level] * size / 256 * rng.uniform(0.8, 1.25)
    shape = _blob(rng, size, _centre(rng, size), radius, roughness=0.5)
    # a stain is densest inside and fades towards its rim, then stops at MIN_ALPHA
    alpha = cv2.GaussianBlur(shape, (0, 0), radius / 4) * shape
    alpha = alpha / max(float(alpha.max()), 1e-6) * (0.5, 0.75, 1.0)[contrast]
    if gray:
        tint = np.full(3, rng.uniform(0.35, 0.6), dtype=np.float32)
    else:
        tint = np.array([0.78, 0.60, 0.38], dtype=np.float32) * rng.uniform(0.55, 0.9)
    if rng.random() < 0.3:  # a bleached stain instead of a dark one
        return alpha, clean + (1 - clean) * 0.6
    return alpha, clean * tint


def _crack(
    rng: np.random.Generator, clean: np.ndarray, contrast: int, size_level: int, gray: bool
) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    steps = int((14, 28, 50)[size_level] * size / 256 * rng.uniform(0.8, 1.2))
    centre = _centre(rng, size)
    path = _random_walk(rng, centre, steps)
    alpha = _stroke(size, path, rng.uniform(1.0, 1.8))
    if rng.random() < 0.5:  # a side branch from a point on the crack
        branch_start = path[rng.integers(len(path) // 4, 3 * len(path) // 4)]
        branch = _random_walk(rng, branch_start, max(3, steps // 3))
        branch += branch_start - branch[0]
        alpha = np.maximum(alpha, _stroke(size, branch, 1.0))
    return alpha, clean * (1 - (0.4, 0.6, 0.85)[contrast])


def _colour_spot(
    rng: np.random.Generator, clean: np.ndarray, contrast: int, size_level: int, gray: bool
) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    radius = (5, 10, 18)[size_level] * size / 256 * rng.uniform(0.8, 1.25)
    alpha = _ellipse(rng, size, _centre(rng, size), radius)
    shift = _chromatic_shift(rng, gray) * CONTRASTS[contrast]
    return alpha, clean + shift


def _thread(
    rng: np.random.Generator, clean: np.ndarray, contrast: int, size_level: int, gray: bool
) -> tuple[np.ndarray, np.ndarray]:
    size = clean.shape[0]
    length = (0.35, 0.6, 0.95)[size_level] * size * rng.uniform(0.9, 1.1)
    path = _wave(rng, size, _centre(rng, size), length)
    alpha = _stroke(size, path, rng.uniform(1.5, 3.0) * size / 256)
    mean_colour = clean.reshape(-1, 3).mean(axis=0)
    sign = 1.0 if mean_colour.mean() < 0.55 else -1.0  # stand out from the background
    thread_colour = np.clip(mean_colour + sign * CONTRASTS[contrast] * 1.2, 0.0, 1.0)
    return alpha, np.broadcast_to(thread_colour, clean.shape) * 0.85 + clean * 0.15


def _centre(rng: np.random.Generator, size: int) -> np.ndarray:
    margin = 0.12 * size
    return rng.uniform(margin, size - margin, 2)


DEFECTS: dict[str, DefectPainter] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "crack": _crack,
    "color": _colour_spot,
    "thread": _thread,
}
"""Defect kinds (test folder names) of the default dataset."""


def paint_defect(
    rng: np.random.Generator,
    clean: np.ndarray,
    kind: str,
    contrast: int,
    size_level: int,
    gray: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of ``kind`` on a clean uint8 image.

    The mask is exactly the set of pixels the defect may change: outside it the result
    equals ``clean`` byte for byte. Draws are repeated (from the same generator) until the
    defect covers at least 12 pixels and changes them by 3 % on average.

    Args:
        rng: Generator every random choice comes from.
        clean: ``H x W x 3`` uint8 image.
        kind: A key of :data:`DEFECTS`.
        contrast: 0 (low), 1 (medium) or 2 (high).
        size_level: 0 (small), 1 (medium) or 2 (large).
        gray: Keep the result gray (equal channels).

    Returns:
        ``(image, mask)``: ``H x W x 3`` uint8 and ``H x W`` bool.
    """
    painter = DEFECTS[kind]
    clean_float = clean.astype(np.float32) / 255.0
    size = clean.shape[0]
    min_area = max(12, math.ceil(12 * (size / 256) ** 2))
    for _ in range(50):
        alpha, target = painter(rng, clean_float, contrast, size_level, gray)
        alpha = np.where(alpha >= MIN_ALPHA, alpha, 0.0).astype(np.float32)
        mask = alpha > 0
        if int(mask.sum()) < min_area:
            continue
        if gray:
            target = np.repeat(target.mean(axis=2, keepdims=True), 3, axis=2)
        blended = clean_float * (1 - alpha[..., None]) + np.clip(target, 0, 1) * alpha[..., None]
        image = clean.copy()
        image[mask] = np.round(blended[mask] * 255.0).astype(np.uint8)
        change = np.abs(image[mask].astype(np.float32) - clean[mask]).mean() / 255.0
        if change >= 0.03:
            return image, mask
    raise RuntimeError(f"could not draw a visible {kind} defect in 50 tries")
