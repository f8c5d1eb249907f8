"""Self-supervised defect synthesis: Perlin masks, anomaly-source textures, opacity schedule.

Follows the DRAEM recipe the paper builds on (thresholded, rotated Perlin noise selects where
an augmented texture is blended into a normal image) with the paper's opacity strategies.
Pure torch: textures come in as tensors or through a callable; every draw uses the given
``torch.Generator`` so a seed fixes everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

TextureSource = Callable[[torch.Generator, int], Tensor]
"""``source(generator, size) -> 3 x size x size`` texture in [0, 1]."""

OPACITY_START = 1.0
OPACITY_END = 0.1
RANDOM_OPACITY_RANGE = (0.1, 0.9)
MASK_THRESHOLD = 0.5
MIN_MASK_COVERAGE = 0.005
_MAX_MASK_TRIES = 20
_MIN_PERIOD_PIXELS = 8


def random_uniform(generator: torch.Generator, low: float, high: float) -> float:
    """Float drawn uniformly from ``[low, high)``."""
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_int(generator: torch.Generator, low: int, high: int) -> int:
    """Integer drawn uniformly from ``[low, high)``."""
    return int(torch.randint(low, high, (), generator=generator))


def _fade(t: Tensor) -> Tensor:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(
    height: int,
    width: int,
    periods_y: float,
    periods_x: float,
    angle: float,
    generator: torch.Generator,
) -> Tensor:
    """Gradient (Perlin) noise on a lattice rotated by ``angle``.

    Args:
        height: Rows ``H``.
        width: Columns ``W``.
        periods_y: Lattice cells across the height.
        periods_x: Lattice cells across the width.
        angle: Rotation of the lattice in degrees.
        generator: Source of the random gradients.

    Returns:
        ``H x W`` float noise scaled by sqrt(2) to lie roughly in [-1, 1].
    """
    rows = torch.arange(height, dtype=torch.float32)[:, None] - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float32)[None, :] - (width - 1) / 2
    theta = math.radians(angle)
    # rotate pixel coordinates, then express them in lattice units: H x W each
    u = (math.cos(theta) * cols - math.sin(theta) * rows) * periods_x / width
    v = (math.sin(theta) * cols + math.cos(theta) * rows) * periods_y / height
    u = u - u.min()
    v = v - v.min()
    cells_u = int(u.max()) + 2
    cells_v = int(v.max()) + 2

    angles = torch.rand(cells_v, cells_u, generator=generator) * (2 * math.pi)
    gradients = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # Gv x Gu x 2
    u0 = u.floor().long()
    v0 = v.floor().long()
    fu = u - u0
    fv = v - v0

    def corner(dv: int, du: int) -> Tensor:
        g = gradients[v0 + dv, u0 + du]  # H x W x 2
        return g[..., 0] * (fu - du) + g[..., 1] * (fv - dv)

    su, sv = _fade(fu), _fade(fv)
    top = corner(0, 0) * (1 - su) + corner(0, 1) * su
    bottom = corner(1, 0) * (1 - su) + corner(1, 1) * su
    return math.sqrt(2.0) * (top * (1 - sv) + bottom * sv)


def max_scale_exponent(size: int) -> int:
    """Largest ``k`` with lattice ``2**k`` cells per side that keeps cells >= 8 px."""
    return max(0, int(math.log2(max(size, 1) / _MIN_PERIOD_PIXELS)))


def perlin_mask(
    size: int,
    generator: torch.Generator,
    threshold: float = MASK_THRESHOLD,
    min_coverage: float = MIN_MASK_COVERAGE,
) -> Tensor:
    """A binary blob mask: rotated Perlin noise above ``threshold``.

    The lattice has ``2**a`` by ``2**b`` cells with ``a, b`` drawn up to
    :func:`max_scale_exponent` (1 to 32 cells at 256 px, as in DRAEM), a rotation in
    [-90, 90) degrees. Masks covering less than ``min_coverage`` are drawn again.

    Args:
        size: Side ``S`` of the square mask.
        generator: Random source.
        threshold: Noise level above which a pixel is defective.
        min_coverage: Smallest accepted fraction of defective pixels.

    Returns:
        ``S x S`` bool mask.
    """
    top = max_scale_exponent(size)
    mask = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(_MAX_MASK_TRIES):
        periods_y = 2 ** random_int(generator, 0, top + 1)
        periods_x = 2 ** random_int(generator, 0, top + 1)
        angle = random_uniform(generator, -90.0, 90.0)
        noise = perlin_noise(size, size, periods_y, periods_x, angle, generator)
        mask = noise > threshold
        if mask.float().mean() >= min_coverage:
            return mask
    # NOTE: after many near-empty draws a small disc guarantees a non-empty defect.
    centre_y, centre_x = random_int(generator, 0, size), random_int(generator, 0, size)
    rows = torch.arange(size)[:, None]
    cols = torch.arange(size)[None, :]
    radius = max(2.0, size * 0.06)
    return mask | ((rows - centre_y) ** 2 + (cols - centre_x) ** 2 <= radius**2)


def augment_texture(texture: Tensor, generator: torch.Generator) -> Tensor:
    """Three randomly chosen photometric/geometric augmentations of an anomaly source.

    Args:
        texture: ``3 x S x S`` in [0, 1].
        generator: Random source.

    Returns:
        ``3 x S x S`` in [0, 1].
    """
    count = len(_AUGMENTATIONS)
    chosen = torch.randperm(count, generator=generator)[:3].tolist()
    for index in chosen:
        texture = _AUGMENTATIONS[index](texture, generator).clamp(0.0, 1.0)
    return texture


def _gamma(t: Tensor, g: torch.Generator) -> Tensor:
    return TF.adjust_gamma(t, random_uniform(g, 0.5, 2.0))


def _brightness(t: Tensor, g: torch.Generator) -> Tensor:
    return t * random_uniform(g, 0.8, 1.2) + random_uniform(g, -0.12, 0.12)


def _sharpness(t: Tensor, g: torch.Generator) -> Tensor:
    return TF.adjust_sharpness(t, random_uniform(g, 0.0, 2.0))


def _hue_saturation(t: Tensor, g: torch.Generator) -> Tensor:
    shifted = TF.adjust_hue(t, random_uniform(g, -0.14, 0.14))
    return TF.adjust_saturation(shifted, random_uniform(g, 0.5, 1.5))


def _solarize(t: Tensor, g: torch.Generator) -> Tensor:
    return TF.solarize(t, random_uniform(g, 0.125, 0.5))


def _posterize(t: Tensor, g: torch.Generator) -> Tensor:
    return TF.posterize(t, random_int(g, 3, 6))


def _invert(t: Tensor, g: torch.Generator) -> Tensor:
    return TF.invert(t)


def _autocontrast(t: Tensor, g: torch.Generator) -> Tensor:
    return TF.autocontrast(t)


def _equalize(t: Tensor, g: torch.Generator) -> Tensor:
    return TF.equalize(t)


def _rotate(t: Tensor, g: torch.Generator) -> Tensor:
    return TF.rotate(t, random_uniform(g, -45.0, 45.0), interpolation=TF.InterpolationMode.BILINEAR)


_AUGMENTATIONS: tuple[Callable[[Tensor, torch.Generator], Tensor], ...] = (
    _gamma,
    _brightness,
    _sharpness,
    _hue_saturation,
    _solarize,
    _posterize,
    _invert,
    _autocontrast,
    _equalize,
    _rotate,
)


def procedural_texture(generator: torch.Generator, size: int) -> Tensor:
    """A generated texture: coloured fractal noise, warped stripes, checks or speckle.

    Args:
        generator: Random source.
        size: Side ``S``.

    Returns:
        ``3 x S x S`` in [0, 1].
    """
    kind = random_int(generator, 0, 4)
    octaves = torch.zeros(size, size)
    for octave in range(4):
        periods = 2 ** (octave + 1)
        angle = random_uniform(generator, -90.0, 90.0)
        octaves += perlin_noise(size, size, periods, periods, angle, generator) / 2**octave
    octaves = (octaves - octaves.min()) / (octaves.max() - octaves.min() + 1e-8)  # S x S
    rows = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
    cols = torch.arange(size, dtype=torch.float32)[None, :].expand(size, size)
    frequency = random_uniform(generator, 3.0, 12.0) * 2 * math.pi / size
    if kind == 0:
        pattern = octaves
    elif kind == 1:
        pattern = 0.5 + 0.5 * torch.sin(frequency * (rows + cols * 0.3) + 6.0 * octaves)
    elif kind == 2:
        pattern = ((torch.sin(frequency * rows) * torch.sin(frequency * cols)) > 0).float()
        pattern = 0.8 * pattern + 0.2 * octaves
    else:
        speckle = torch.rand(size, size, generator=generator)
        pattern = 0.5 * octaves + 0.5 * (speckle > random_uniform(generator, 0.6, 0.95)).float()
    low = torch.rand(3, 1, 1, generator=generator)
    high = torch.rand(3, 1, 1, generator=generator)
    return (low + (high - low) * pattern[None]).clamp(0.0, 1.0)  # 3 x S x S


def is_grayscale(image: Tensor, tolerance: float = 1e-3) -> bool:
    """Whether the three channels of ``3 x H x W`` are equal (a gray image read as RGB)."""
    return bool((image - image.mean(dim=0, keepdim=True)).abs().max() <= tolerance)


def blend_defect(normal_image: Tensor, texture: Tensor, mask: Tensor, opacity: float) -> Tensor:
    """Blend ``texture`` into ``normal_image`` inside ``mask`` with the given opacity.

    ``x = I (1 - m) + m (opacity * T + (1 - opacity) * I)``; opacity 1 pastes the texture,
    opacity near 0 leaves the image almost unchanged.

    Args:
        normal_image: ``3 x S x S`` in [0, 1].
        texture: ``3 x S x S`` in [0, 1].
        mask: ``S x S`` bool.
        opacity: In [0, 1].

    Returns:
        ``3 x S x S`` in [0, 1].
    """
    weight = mask.to(normal_image.dtype)[None] * opacity  # 1 x S x S
    return normal_image * (1.0 - weight) + texture * weight


@dataclass(frozen=True)
class OpacitySchedule:
    """Which opacity each regeneration of the synthetic set uses.

    Attributes:
        mode: ``pos`` (progressive: 1.0 at the first regeneration falling linearly to 0.1 at
            the last), ``random`` (each sample uniform in [0.1, 0.9]) or ``fixed``.
        value: The opacity of ``fixed``.
        start: First opacity of ``pos``.
        end: Last opacity of ``pos``.
    """

    mode: str = "pos"
    value: float = 0.5
    start: float = OPACITY_START
    end: float = OPACITY_END

    def opacities(
        self, regeneration: int, regenerations: int, count: int, generator: torch.Generator
    ) -> Tensor:
        """Opacities ``count`` of regeneration ``regeneration`` (0-based) of ``regenerations``."""
        if self.mode == "pos":
            fraction = regeneration / max(regenerations - 1, 1)
            value = self.start + (self.end - self.start) * min(fraction, 1.0)
            return torch.full((count,), value)
        if self.mode == "random":
            low, high = RANDOM_OPACITY_RANGE
            return low + (high - low) * torch.rand(count, generator=generator)
        if self.mode == "fixed":
            return torch.full((count,), self.value)
        raise ValueError(f"opacity mode must be pos, random or fixed, got {self.mode!r}")


@dataclass
class SyntheticSet:
    """One regeneration's training material.

    Attributes:
        defective: ``K x 3 x S x S`` synthesised defective images in [0, 1].
        synthesis_masks: ``K x S x S`` bool, where each defect was blended; kept for
            inspection only and never given to a loss.
        random_masks: ``K x S x S`` bool, independent Perlin masks (the "real" masks).
        opacities: ``K`` opacity used per sample.
    """

    defective: Tensor
    synthesis_masks: Tensor
    random_masks: Tensor
    opacities: Tensor


def make_synthetic_set(
    normal_images: Tensor,
    source: TextureSource,
    opacities: Tensor,
    generator: torch.Generator,
) -> SyntheticSet:
    """Synthesise ``K = len(opacities)`` defective images and ``K`` unrelated masks.

    Args:
        normal_images: ``N x 3 x S x S`` in [0, 1].
        source: Anomaly-source textures.
        opacities: ``K`` blend opacities.
        generator: Random source.

    Returns:
        The :class:`SyntheticSet`.
    """
    size = normal_images.shape[-1]
    defective, synthesis_masks, random_masks = [], [], []
    for opacity in opacities.tolist():
        image = normal_images[random_int(generator, 0, normal_images.shape[0])]
        texture = augment_texture(source(generator, size), generator)
        if is_grayscale(image):
            texture = texture.mean(dim=0, keepdim=True).expand(3, -1, -1)
        mask = perlin_mask(size, generator)
        defective.append(blend_defect(image, texture, mask, opacity))
        synthesis_masks.append(mask)
        random_masks.append(perlin_mask(size, generator))
    return SyntheticSet(
        defective=torch.stack(defective),
        synthesis_masks=torch.stack(synthesis_masks),
        random_masks=torch.stack(random_masks),
        opacities=opacities.clone(),
    )
