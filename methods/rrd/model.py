"""RD++ additions to reverse distillation: the multi-projection layer, its losses, the noise.

Pure torch (the optimal-transport term uses geomloss, as the official code does).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

logger = logging.getLogger(__name__)

# Weights of the three projection-loss terms and their normaliser, as in the official code:
# (ssot + 0.01 * reconstruction + 0.1 * contrast) / 1.11.
SSOT_WEIGHT = 1.0
RECONSTRUCTION_WEIGHT = 0.01
CONTRAST_WEIGHT = 0.1

# Sinkhorn settings of the official code (geomloss.SamplesLoss arguments).
SINKHORN_SETTINGS = {
    "loss": "sinkhorn",
    "p": 2,
    "blur": 0.05,
    "reach": None,
    "diameter": 10000000,
    "scaling": 0.95,
    "truncate": 10,
    "debias": True,
    "backend": "tensorized",
}


class ProjectionLayer(nn.Module):
    """Four 3x3 convolutions (C, C/2, C/4, C/2, C), each with instance norm and leaky ReLU.

    Args:
        channels: Channels ``C`` of the teacher map it projects.

    ``forward`` maps ``B x C x H x W`` to ``B x C x H x W``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        half, quarter = max(1, channels // 2), max(1, channels // 4)
        widths = [channels, half, quarter, half, channels]
        layers: list[nn.Module] = []
        for in_channels, out_channels in zip(widths[:-1], widths[1:], strict=True):
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1),
                nn.InstanceNorm2d(out_channels),
                nn.LeakyReLU(),
            ]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project one teacher map."""
        return self.layers(features)


class MultiProjectionLayer(nn.Module):
    """One :class:`ProjectionLayer` per teacher scale (the MPL of RD++).

    Args:
        channels: Teacher channels ``(C1, C2, C3)``.

    ``forward`` maps a list of three ``B x C_i x H_i x W_i`` maps to projected maps of
    the same shapes.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.projections = nn.ModuleList(ProjectionLayer(int(c)) for c in channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Project each scale with its own layer."""
        return [project(f) for project, f in zip(self.projections, features, strict=True)]


@dataclass(frozen=True)
class ProjectionLosses:
    """The RD++ projection loss and its three terms (all scalars, summed over scales)."""

    total: torch.Tensor
    ssot: torch.Tensor
    reconstruction: torch.Tensor
    contrast: torch.Tensor


def sinkhorn_divergence(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Debiased Sinkhorn divergence between two point clouds with uniform weights.

    Args:
        first: ``N x D`` points.
        second: ``M x D`` points.

    Returns:
        Scalar; with the squared Euclidean cost halved (geomloss' ``p=2``), two single
        points ``x`` and ``y`` give ``|x - y|^2 / 2`` and equal clouds give 0.
    """
    import geomloss

    loss = geomloss.SamplesLoss(**SINKHORN_SETTINGS)
    return loss(first.contiguous(), second.contiguous())


def ssot_loss(normal_projected: Sequence[torch.Tensor], permutation: torch.Tensor) -> torch.Tensor:
    """Self-supervised optimal-transport compactness term, as the official code computes it.

    Each sample's projected map is flattened and soft-maxed; the batch (``B`` points in
    ``C H W`` dimensions) is compared with the same batch in the order ``permutation``.

    Args:
        normal_projected: Projected maps of normal images, ``B x C_i x H_i x W_i``.
        permutation: ``B`` indices (a shuffle of the batch).

    Returns:
        Sum over scales of the Sinkhorn divergence.
    """
    # NOTE: a shuffled batch with uniform weights is the same point cloud, so this term is
    # zero up to solver round-off and gives no gradient; the official code computes it the
    # same way, and it is kept for fidelity (see README).
    loss = normal_projected[0].new_zeros(())
    for projected in normal_projected:
        points = torch.softmax(projected.flatten(1), dim=-1)  # B x (C H W)
        loss = loss + sinkhorn_divergence(points, points[permutation])
    return loss


def reconstruction_loss(
    abnormal_projected: Sequence[torch.Tensor], normal_projected: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Mean per-position cosine distance between projected noisy and normal maps.

    Args:
        abnormal_projected: Projections of the noisy images' teacher maps.
        normal_projected: Projections of the clean images' teacher maps (same shapes).

    Returns:
        Sum over scales of ``mean(1 - cos)`` over batch and positions, in [0, 2] each.
    """
    loss = normal_projected[0].new_zeros(())
    for abnormal, normal in zip(abnormal_projected, normal_projected, strict=True):
        loss = loss + (1 - F.cosine_similarity(abnormal, normal, dim=1)).mean()
    return loss


def contrast_loss(
    noisy_teacher: Sequence[torch.Tensor], normal_projected: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The official "contrast" term: cosine-embedding loss with target +1 per sample.

    Args:
        noisy_teacher: Teacher maps of the noisy images, ``B x C_i x H_i x W_i``.
        normal_projected: Projections of the clean images' teacher maps (same shapes).

    Returns:
        Sum over scales of ``mean_b(1 - cos(flat(noisy_b), flat(normal_b)))``; equal to
        ``torch.nn.CosineEmbeddingLoss(margin=-0.5)`` with all targets 1, the official
        call (the margin only acts on targets -1, which the official code never passes).
    """
    loss = normal_projected[0].new_zeros(())
    for noisy, normal in zip(noisy_teacher, normal_projected, strict=True):
        similarity = F.cosine_similarity(noisy.flatten(1), normal.flatten(1), dim=1)
        loss = loss + (1 - similarity).mean()
    return loss


def projection_loss(
    noisy_teacher: Sequence[torch.Tensor],
    abnormal_projected: Sequence[torch.Tensor],
    normal_projected: Sequence[torch.Tensor],
    permutation: torch.Tensor,
    include_ssot: bool = True,
) -> ProjectionLosses:
    """Weighted RD++ projection loss ``(ssot + 0.01 recon + 0.1 contrast) / 1.11``.

    Args:
        noisy_teacher: Teacher maps of the noisy images, ``B x C_i x H_i x W_i``.
        abnormal_projected: Their projections (same shapes).
        normal_projected: Projections of the clean images' teacher maps (same shapes).
        permutation: Batch shuffle for the SSOT term.
        include_ssot: Compute the SSOT term; when false it is taken as 0, which it is up to
            round-off (see :func:`ssot_loss`), and the weights stay the same.
    """
    if include_ssot:
        ssot = ssot_loss(normal_projected, permutation)
    else:
        ssot = normal_projected[0].new_zeros(())
    reconstruction = reconstruction_loss(abnormal_projected, normal_projected)
    contrast = contrast_loss(noisy_teacher, normal_projected)
    weight_sum = SSOT_WEIGHT + RECONSTRUCTION_WEIGHT + CONTRAST_WEIGHT
    total = (
        SSOT_WEIGHT * ssot + RECONSTRUCTION_WEIGHT * reconstruction + CONTRAST_WEIGHT * contrast
    ) / weight_sum
    return ProjectionLosses(total, ssot, reconstruction, contrast)


# Noise of the official training set: a rectangle of fractal noise, sides drawn in
# [10, 32) pixels at 256 px, six octaves with persistence 0.6, the coarsest with a period of
# 32 pixels, added with weight 0.2 to the image in [0, 1] (no clipping).
NOISE_OCTAVES = 6
NOISE_PERSISTENCE = 0.6
NOISE_PERIOD_AT_256 = 32.0
NOISE_SIDE_AT_256 = (10, 32)


def fractal_noise(
    shape: tuple[int, int, int],
    generator: torch.Generator,
    octaves: int = NOISE_OCTAVES,
    persistence: float = NOISE_PERSISTENCE,
    period: float = NOISE_PERIOD_AT_256,
) -> torch.Tensor:
    """Octaves of 3-D gradient (Perlin) noise over (channel, row, column) positions.

    Each octave halves the period and multiplies the amplitude by ``persistence``, as the
    official code's ``rand_3d_octaves`` does with OpenSimplex noise.

    Args:
        shape: ``(C, H, W)`` of the output.
        generator: Source of the lattice gradients and offsets (CPU).
        octaves: Number of octaves.
        persistence: Amplitude ratio of successive octaves.
        period: Lattice spacing of the first octave, in positions.

    Returns:
        ``C x H x W`` float32 noise; each octave lies in about [-1, 1].
    """
    noise = torch.zeros(shape)
    amplitude = 1.0
    for _ in range(octaves):
        noise += amplitude * _gradient_noise(shape, period, generator)
        period /= 2
        amplitude *= persistence
    return noise


def add_noise_patches(
    images: torch.Tensor, generator: torch.Generator, strength: float = 0.2
) -> torch.Tensor:
    """One rectangle of fractal noise per image, at a random place, as RD++ trains with.

    Sizes scale with the image side ``S`` (the official values are for 256 px).

    Args:
        images: ``B x 3 x S x S`` in [0, 1].
        generator: Source of every random draw (CPU).
        strength: Weight of the noise (0.2 in the official code).

    Returns:
        ``B x 3 x S x S`` noisy images; values may leave [0, 1], as in the official code.
    """
    size = images.shape[-1]
    scale = size / 256
    low = max(1, round(NOISE_SIDE_AT_256[0] * scale))
    high = max(low + 1, round(NOISE_SIDE_AT_256[1] * scale))
    noisy = images.clone()
    for index in range(images.shape[0]):
        height, width = (int(v) for v in torch.randint(low, high, (2,), generator=generator))
        top = int(torch.randint(1, max(2, size - height), (1,), generator=generator))
        left = int(torch.randint(1, max(2, size - width), (1,), generator=generator))
        patch = fractal_noise(
            (images.shape[1], height, width), generator, period=NOISE_PERIOD_AT_256 * scale
        )
        region = noisy[index, :, top : top + height, left : left + width]
        region += strength * patch[:, : region.shape[1], : region.shape[2]].to(images)
    return noisy


def _gradient_noise(
    shape: tuple[int, int, int], period: float, generator: torch.Generator
) -> torch.Tensor:
    # Lattice coordinates of every position, shifted by a random offset so that the finest
    # octaves (period 1 or 2) do not sample the lattice points, where Perlin noise is 0.
    offsets = torch.rand(3, generator=generator)
    axes = [torch.arange(n, dtype=torch.float32) / period + offsets[i] for i, n in enumerate(shape)]
    cells = [axis.floor().long() for axis in axes]
    fractions = [axis - cell for axis, cell in zip(axes, cells, strict=True)]
    lattice = [int(cell.max()) + 2 for cell in cells]
    gradients = torch.randn(*lattice, 3, generator=generator)
    gradients = gradients / gradients.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    fz, fy, fx = torch.meshgrid(*fractions, indexing="ij")  # each C x H x W
    cz, cy, cx = torch.meshgrid(*cells, indexing="ij")
    fade = [t * t * t * (t * (6 * t - 15) + 10) for t in (fz, fy, fx)]
    noise = torch.zeros(shape)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                corner = gradients[cz + dz, cy + dy, cx + dx]  # C x H x W x 3
                dot = corner[..., 0] * (fz - dz) + corner[..., 1] * (fy - dy)
                dot = dot + corner[..., 2] * (fx - dx)
                weight = (fade[0] if dz else 1 - fade[0]) * (fade[1] if dy else 1 - fade[1])
                weight = weight * (fade[2] if dx else 1 - fade[2])
                noise += weight * dot
    return noise
