"""PatchCore-style patch features shared by memory-bank methods (PatchCore, PNI).

Locally aware patch embeddings, greedy k-centre coresets, chunked nearest-neighbour search and
scipy-equivalent Gaussian smoothing. Pure tensor functions: no file I/O, no harness calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F  # noqa: N812

DEFAULT_CHUNK_ELEMENTS = 1 << 24
"""Largest query x memory-bank distance block held at once (64 MiB of float32)."""


def locally_aware_features(
    feature_maps: Sequence[torch.Tensor], patch_size: int, projection: torch.Tensor
) -> torch.Tensor:
    """Locally aware patch embeddings on the finest grid of the given feature maps.

    Each map is averaged over a ``patch_size x patch_size`` neighbourhood (stride 1, zeros
    beyond the border, as the originals' unfolding does), coarser maps are resized
    bilinearly onto the finest grid, the maps are concatenated along channels and mapped
    by ``projection`` (see :func:`averaging_projection`).

    Args:
        feature_maps: ``B x C_i x h_i x w_i`` tensors.
        patch_size: Odd neighbourhood side (PatchCore: 3, PNI: 5).
        projection: ``D x sum(C_i)`` matrix.

    Returns:
        ``B x h x w x D`` embeddings.

    Raises:
        ValueError: For an even or non-positive ``patch_size``, or no feature maps.
    """
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size: expected a positive odd integer, got {patch_size}")
    if not feature_maps:
        raise ValueError("feature_maps: expected at least one B x C x H x W map, got none")
    grid = max((fmap.shape[-2:] for fmap in feature_maps), key=lambda size: size[0] * size[1])
    parts = []
    for fmap in feature_maps:
        fmap = F.avg_pool2d(fmap, kernel_size=patch_size, stride=1, padding=patch_size // 2)
        if fmap.shape[-2:] != grid:
            fmap = F.interpolate(fmap, size=tuple(grid), mode="bilinear", align_corners=False)
        parts.append(fmap)
    features = torch.cat(parts, dim=1)  # B x sum(C_i) x h x w
    features = features.permute(0, 2, 3, 1)  # B x h x w x sum(C_i)
    return features @ projection.T  # B x h x w x D


def averaging_projection(channels: Sequence[int], feature_dim: int, embed_dim: int) -> torch.Tensor:
    """The fixed linear map from concatenated layer features to the patch embedding.

    Each layer's ``C_i`` features are adaptively averaged to ``feature_dim`` values, the
    layers are concatenated, and the result is adaptively averaged to ``embed_dim``. Both
    steps are linear, so they collapse into one matrix.

    Args:
        channels: ``C_i`` of each layer, in concatenation order.
        feature_dim: Per-layer length after the first averaging.
        embed_dim: Final length.

    Returns:
        ``embed_dim x sum(C_i)`` matrix.
    """
    blocks = [_adaptive_average_matrix(count, feature_dim) for count in channels]
    per_layer = torch.block_diag(*blocks)  # L*feature_dim x sum(C_i)
    final = _adaptive_average_matrix(len(channels) * feature_dim, embed_dim)
    return final @ per_layer


def _adaptive_average_matrix(length: int, size: int) -> torch.Tensor:
    """``size x length`` matrix that does what ``adaptive_avg_pool1d`` does to a vector."""
    identity = torch.eye(length, dtype=torch.float64).unsqueeze(1)  # length x 1 x length
    pooled = F.adaptive_avg_pool1d(identity, size).squeeze(1)  # length x size
    return pooled.T.to(torch.float32)


def select_coreset(
    features: torch.Tensor,
    ratio: float,
    projection_dim: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Pick a coreset by k-center greedy search in a random projection.

    Args:
        features: ``N x D`` patch embeddings.
        ratio: Fraction to keep, in (0, 1]; ``int(N * ratio)`` patches (at least one).
        projection_dim: Dimension of the Gaussian random projection distances are measured
            in; no projection when ``D`` is not larger.
        generator: CPU generator for the projection and the start point.

    Returns:
        ``M`` indices into ``features`` (``M <= int(N * ratio)``; fewer only when every
        patch already coincides with a selected one).
    """
    count = features.shape[0]
    if ratio >= 1.0:
        return torch.arange(count, device=features.device)
    return coreset_order(features, max(1, int(count * ratio)), projection_dim, generator)


def coreset_order(
    features: torch.Tensor, count: int, projection_dim: int, generator: torch.Generator
) -> torch.Tensor:
    """The first ``count`` picks of k-center greedy search in a random projection.

    Any prefix of the result is itself a greedy coreset, so one search serves coresets of
    several sizes (PNI's embedding and distribution coresets).

    Args:
        features: ``N x D`` patch embeddings.
        count: How many to pick (clipped to ``N``).
        projection_dim: As in :func:`select_coreset`.
        generator: CPU generator for the projection and the start point.

    Returns:
        Up to ``count`` indices into ``features``, in the order picked.
    """
    reduced = features
    if features.shape[1] > projection_dim:
        matrix = torch.randn(features.shape[1], projection_dim, generator=generator)
        matrix = matrix.to(features.device, features.dtype) / math.sqrt(projection_dim)
        reduced = features @ matrix  # N x projection_dim
    start = int(torch.randint(features.shape[0], (1,), generator=generator))
    return greedy_coreset_indices(reduced, count, start)


def greedy_coreset_indices(features: torch.Tensor, count: int, start: int) -> torch.Tensor:
    """k-center greedy selection without an ``N x N`` distance matrix.

    Starting from ``start``, repeatedly adds the point farthest from everything selected so
    far. Only the ``N`` distances from each point to its nearest selected point are kept and
    lowered after each pick, so memory is ``O(N)`` beyond the features themselves.

    Args:
        features: ``N x D`` points.
        count: How many to select (clipped to ``N``).
        start: Index of the first selected point.

    Returns:
        Selected indices in the order picked, ``count`` of them or fewer when all remaining
        points coincide with selected ones.
    """
    squared_norms = features.pow(2).sum(dim=1)  # N

    def squared_distances_to(index: int) -> torch.Tensor:
        center = features[index]
        dots = features @ center  # N
        return (squared_norms - 2.0 * dots + squared_norms[index]).clamp_min_(0.0)

    count = min(count, features.shape[0])
    selected = [start]
    min_distances = squared_distances_to(start)
    min_distances[start] = 0.0
    for _ in range(count - 1):
        farthest = int(torch.argmax(min_distances))
        if min_distances[farthest] <= 0.0:
            break  # every remaining point coincides with a selected one
        selected.append(farthest)
        torch.minimum(min_distances, squared_distances_to(farthest), out=min_distances)
        min_distances[farthest] = 0.0
    return torch.tensor(selected, dtype=torch.long, device=features.device)


def nearest_neighbours(
    queries: torch.Tensor,
    bank: torch.Tensor,
    k: int = 1,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances to the ``k`` nearest bank rows, searched in bounded chunks.

    Args:
        queries: ``Q x D``.
        bank: ``M x D``.
        k: Neighbours per query (clipped to ``M``).
        chunk_elements: Largest ``rows x M`` distance block held at once.

    Returns:
        ``Q x k`` distances (ascending) and ``Q x k`` bank indices.
    """
    k = min(k, bank.shape[0])
    rows = max(1, chunk_elements // max(1, bank.shape[0]))
    distances, indices = [], []
    for start in range(0, queries.shape[0], rows):
        block = torch.cdist(queries[start : start + rows], bank)  # rows x M
        if k == 1:
            values, positions = block.min(dim=1, keepdim=True)
        else:
            values, positions = block.topk(k, dim=1, largest=False)
        distances.append(values)
        indices.append(positions)
    return torch.cat(distances), torch.cat(indices)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian smoothing with mirror borders, as ``scipy.ndimage.gaussian_filter``.

    Args:
        maps: ``B x H x W``.
        sigma: Standard deviation in pixels; 0 returns ``maps`` unchanged.
        truncate: Kernel radius in standard deviations.

    Returns:
        ``B x H x W`` smoothed maps.
    """
    if sigma <= 0:
        return maps
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.device, maps.dtype)

    height, width = maps.shape[-2:]
    rows = _mirror_indices(height, radius, maps.device)
    columns = _mirror_indices(width, radius, maps.device)
    padded = maps[:, rows][:, :, columns]  # B x H+2r x W+2r
    padded = padded.unsqueeze(1)  # B x 1 x H+2r x W+2r
    smoothed = F.conv2d(padded, kernel.view(1, 1, 1, -1))  # B x 1 x H+2r x W
    smoothed = F.conv2d(smoothed, kernel.view(1, 1, -1, 1))  # B x 1 x H x W
    return smoothed.squeeze(1)


def _mirror_indices(length: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a line padded by ``radius`` with half-sample mirroring (d c b a | a b c d)."""
    positions = torch.arange(-radius, length + radius, device=device)
    period = 2 * length
    folded = torch.remainder(positions, period)
    return torch.where(folded < length, folded, period - 1 - folded)
