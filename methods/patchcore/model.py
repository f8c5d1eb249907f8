"""PatchCore in plain torch: patch embeddings, greedy coreset memory bank, nearest-neighbour maps.

No file I/O and no harness calls; :mod:`methods.patchcore` adapts it to the benchmark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from methods._patch_features import (
    DEFAULT_CHUNK_ELEMENTS,
    averaging_projection,
    gaussian_blur,
    greedy_coreset_indices,
    locally_aware_features,
    nearest_neighbours,
    select_coreset,
)

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
"""``progress(completed, total, description)``."""

__all__ = [
    "DEFAULT_CHUNK_ELEMENTS",
    "PatchCoreModel",
    "PatchCoreOutput",
    "PatchCoreSettings",
    "averaging_projection",
    "gaussian_blur",
    "greedy_coreset_indices",
    "nearest_neighbours",
    "reweighted_image_scores",
    "select_coreset",
]


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
        # Each patch feature becomes the mean of its 3 x 3 neighbourhood, as in the original.
        return locally_aware_features(self.extractor(images), 3, self.projection)

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


def _batches(count: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, count)) for start in range(0, count, size)]
