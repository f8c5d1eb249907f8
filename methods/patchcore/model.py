"""PatchCore in plain torch: patch embeddings, greedy coreset memory bank, nearest-neighbour maps.

No file I/O and no harness calls; :mod:`methods.patchcore` adapts it to the benchmark.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
"""``progress(completed, total, description)``."""

DEFAULT_CHUNK_ELEMENTS = 1 << 24
"""Largest query x memory-bank distance block held at once (64 MiB of float32)."""


@dataclass(frozen=True)
class PatchCoreSettings:
    """Resolved hyper-parameters of one PatchCore model.

    Attributes:
        feature_dim: Length each layer's patch features are averaged to (the original's
            "pretrain embed dimension").
        embed_dim: Length of the final patch embedding (the original's "target embed
            dimension").
        coreset_ratio: Fraction of training patches kept in the memory bank, in (0, 1].
        projection_dim: Dimension of the random projection the coreset selection works in.
        num_neighbors: Memory-bank neighbours used to reweight the image score.
        image_size: Side the images are resized to before the backbone.
        sigma: Standard deviation, in pixels at ``image_size``, of the Gaussian that
            smooths the anomaly map (0 turns smoothing off).
        batch_size: Images per backbone forward pass.
        chunk_elements: Largest distance block computed at once in the neighbour search.
    """

    feature_dim: int = 1024
    embed_dim: int = 1024
    coreset_ratio: float = 0.1
    projection_dim: int = 128
    num_neighbors: int = 9
    image_size: int = 256
    sigma: float = 4.0
    batch_size: int = 8
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS


@dataclass(frozen=True)
class PatchCoreOutput:
    """What :class:`PatchCoreModel` returns for a batch.

    Attributes:
        anomaly_map: ``B x H x W`` smoothed patch distances at the input resolution.
        image_score: ``B`` reweighted maximum patch distance (the paper's image score).
        patch_score: ``B x h x w`` nearest-neighbour distance of each patch.
    """

    anomaly_map: torch.Tensor
    image_score: torch.Tensor
    patch_score: torch.Tensor


class PatchCoreModel(nn.Module):
    """Memory bank of locally aware patch features and the anomaly maps it gives.

    Args:
        extractor: Frozen module mapping ``B x 3 x S x S`` images in [0, 1] to a list of
            ``B x C_i x h_i x w_i`` feature maps; it must expose ``channels`` (the ``C_i``).
        settings: Hyper-parameters.
    """

    memory_bank: torch.Tensor
    projection: torch.Tensor

    def __init__(self, extractor: nn.Module, settings: PatchCoreSettings) -> None:
        super().__init__()
        self.extractor = extractor
        self.settings = settings
        channels = list(extractor.channels)
        projection = averaging_projection(channels, settings.feature_dim, settings.embed_dim)
        self.register_buffer("projection", projection, persistent=False)
        self.register_buffer("memory_bank", torch.empty(0, settings.embed_dim))

    @property
    def is_fitted(self) -> bool:
        """Whether the memory bank holds any patch."""
        return self.memory_bank.shape[0] > 0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Locally aware patch embeddings of images already at ``image_size``.

        Args:
            images: ``B x 3 x S x S`` in [0, 1].

        Returns:
            ``B x h x w x D`` embeddings on the finest feature grid of the chosen layers.
        """
        feature_maps = self.extractor(images)
        grid = max((fmap.shape[-2:] for fmap in feature_maps), key=lambda size: size[0] * size[1])
        parts = []
        for fmap in feature_maps:
            # Each patch feature becomes the mean of its 3 x 3 neighbourhood (zeros beyond the
            # border, as the original's unfolding does), then coarser maps go onto the grid.
            fmap = F.avg_pool2d(fmap, kernel_size=3, stride=1, padding=1)
            if fmap.shape[-2:] != grid:
                fmap = F.interpolate(fmap, size=tuple(grid), mode="bilinear", align_corners=False)
            parts.append(fmap)
        features = torch.cat(parts, dim=1)  # B x sum(C_i) x h x w
        features = features.permute(0, 2, 3, 1)  # B x h x w x sum(C_i)
        return features @ self.projection.T  # B x h x w x D

    def fit(
        self,
        normal_images: torch.Tensor,
        generator: torch.Generator,
        progress: Progress | None = None,
    ) -> None:
        """Fill the memory bank from normal images.

        Args:
            normal_images: ``N x 3 x H x W`` in [0, 1].
            generator: CPU generator for the coreset's random projection and start point.
            progress: Optional callback ``(completed, total, description)``.
        """
        batches = _batches(normal_images.shape[0], self.settings.batch_size)
        embeddings = []
        with torch.no_grad():
            for done, (start, stop) in enumerate(batches, start=1):
                images = self._prepare(normal_images[start:stop])
                embedding = self.embed(images)  # b x h x w x D
                embeddings.append(embedding.reshape(-1, embedding.shape[-1]))
                if progress is not None:
                    progress(done, len(batches), "patchcore: embedding normal images")
            bank = torch.cat(embeddings)  # N*h*w x D
            del embeddings

            indices = select_coreset(
                bank, self.settings.coreset_ratio, self.settings.projection_dim, generator
            )
            self.memory_bank = bank[indices].contiguous()
        if progress is not None:
            progress(len(batches), len(batches), "patchcore: memory bank ready")
        logger.info(
            "patchcore memory bank: %d of %d patches, %d dims",
            self.memory_bank.shape[0],
            bank.shape[0],
            bank.shape[1],
        )

    def forward(self, images: torch.Tensor) -> PatchCoreOutput:
        """Anomaly maps and image scores.

        Args:
            images: ``B x 3 x H x W`` in [0, 1], any size.

        Returns:
            Maps at ``H x W``, image scores and raw patch scores.
        """
        if not self.is_fitted:
            raise RuntimeError("PatchCoreModel has an empty memory bank; call fit() first")
        height, width = images.shape[-2:]
        maps, scores, patches = [], [], []
        for start, stop in _batches(images.shape[0], self.settings.batch_size):
            embedding = self.embed(self._prepare(images[start:stop]))  # b x h x w x D
            batch, grid_h, grid_w, dim = embedding.shape
            queries = embedding.reshape(-1, dim)  # b*h*w x D
            distances, nearest = nearest_neighbours(
                queries, self.memory_bank, 1, self.settings.chunk_elements
            )
            patch_score = distances[:, 0].reshape(batch, grid_h, grid_w)
            image_score = reweighted_image_scores(
                queries.reshape(batch, grid_h * grid_w, dim),
                patch_score.reshape(batch, -1),
                nearest[:, 0].reshape(batch, -1),
                self.memory_bank,
                self.settings.num_neighbors,
            )
            maps.append(self._to_map(patch_score, (height, width)))
            scores.append(image_score)
            patches.append(patch_score)
        return PatchCoreOutput(torch.cat(maps), torch.cat(scores), torch.cat(patches))

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Move to the model's device and resize to ``image_size`` (bilinear, antialiased)."""
        images = images.to(self.memory_bank.device, torch.float32)
        size = self.settings.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        return images

    def _to_map(self, patch_score: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``B x h x w`` patch scores -> ``B x H x W`` smoothed map at the input size."""
        side = self.settings.image_size
        anomaly_map = F.interpolate(
            patch_score.unsqueeze(1), size=(side, side), mode="bilinear", align_corners=False
        ).squeeze(1)  # B x S x S
        anomaly_map = gaussian_blur(anomaly_map, self.settings.sigma)
        if (side, side) != size:
            anomaly_map = F.interpolate(
                anomaly_map.unsqueeze(1), size=size, mode="bilinear", align_corners=False
            ).squeeze(1)
        return anomaly_map


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
    target = max(1, int(count * ratio))

    reduced = features
    if features.shape[1] > projection_dim:
        matrix = torch.randn(features.shape[1], projection_dim, generator=generator)
        matrix = matrix.to(features.device, features.dtype) / math.sqrt(projection_dim)
        reduced = features @ matrix  # N x projection_dim
    start = int(torch.randint(count, (1,), generator=generator))
    return greedy_coreset_indices(reduced, target, start)


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


def reweighted_image_scores(
    queries: torch.Tensor,
    patch_scores: torch.Tensor,
    nearest: torch.Tensor,
    bank: torch.Tensor,
    num_neighbors: int,
) -> torch.Tensor:
    """Image scores of the paper's Eq. 7: the largest patch distance, damped where dense.

    For the most anomalous patch ``p*`` with nearest bank entry ``m*`` at distance ``s*``,
    the score is ``(1 - softmax(d(p*, N_b(m*)))[m*]) * s*``, where ``N_b(m*)`` are the
    ``num_neighbors`` bank entries nearest to ``m*`` (``m*`` itself included).

    Args:
        queries: ``B x P x D`` patch embeddings.
        patch_scores: ``B x P`` distance of each patch to its nearest bank entry.
        nearest: ``B x P`` index of that entry.
        bank: ``M x D`` memory bank.
        num_neighbors: ``b`` above (clipped to ``M``).

    Returns:
        ``B`` image scores.
    """
    best_score, best_patch = patch_scores.max(dim=1)  # B, B
    rows = torch.arange(queries.shape[0], device=queries.device)
    anomalous_patch = queries[rows, best_patch]  # B x D
    anchor = bank[nearest[rows, best_patch]]  # B x D
    _, support = nearest_neighbours(anchor, bank, num_neighbors)  # B x b
    support_distances = torch.linalg.vector_norm(
        anomalous_patch.unsqueeze(1) - bank[support], dim=-1
    )  # B x b
    # The anchor is its own nearest neighbour, so it sits in column 0 of the support.
    weight = 1.0 - torch.softmax(support_distances, dim=1)[:, 0]
    return weight * best_score


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


def _batches(count: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, count)) for start in range(0, count, size)]
