"""PNI's normal-feature models: neighbourhood MLP, per-position histogram and the score.

Pure torch, no file I/O. Shapes: ``N`` images, ``D`` feature channels, ``H x W`` patch
grid, ``P`` scored positions, ``E`` embedding-coreset entries, ``K`` distribution-coreset
entries.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class NeighbourhoodMLP(nn.Module):
    """MLP that maps the features around a patch to logits over distribution-coreset entries.

    Each hidden block is linear, batch norm, ReLU and dropout, as in PNI.

    Args:
        in_features: Length of the concatenated neighbour features (neighbours x ``D``).
        num_entries: ``K``, the size of the distribution coreset.
        hidden: Width of every hidden layer.
        num_layers: Linear layers in total (at least 2: input and output).
        dropout: Dropout probability after each hidden block.

    Raises:
        ValueError: When ``num_layers`` is below 2 or a size is not positive.
    """

    def __init__(
        self,
        in_features: int,
        num_entries: int,
        hidden: int,
        num_layers: int,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers must be at least 2 (input and output), got {num_layers}")
        if min(in_features, num_entries, hidden) < 1:
            message = (
                f"sizes must be positive, got in_features={in_features}, "
                f"num_entries={num_entries}, hidden={hidden}"
            )
            raise ValueError(message)
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers - 1):
            blocks += [
                nn.Linear(width, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
            ]
            width = hidden
        blocks.append(nn.Linear(width, num_entries))
        self.layers = nn.Sequential(*blocks)

    def forward(self, neighbours: torch.Tensor) -> torch.Tensor:
        """Return logits ``B x K`` for neighbour features ``B x in_features``."""
        return self.layers(neighbours)


def neighbour_offsets(radius: int) -> torch.Tensor:
    """Offsets ``(dy, dx)`` of the ``(2r+1)^2 - 1`` neighbours of a patch, row-major.

    Returns:
        ``M x 2`` long tensor, the centre left out.
    """
    span = torch.arange(-radius, radius + 1)
    grid = torch.stack(torch.meshgrid(span, span, indexing="ij"), dim=-1).reshape(-1, 2)
    return grid[(grid != 0).any(dim=1)]


def gather_neighbours(
    padded_features: torch.Tensor,
    image_index: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    radius: int,
) -> torch.Tensor:
    """Concatenate the features around given patches.

    Args:
        padded_features: ``N x D x (H + 2r) x (W + 2r)`` features, zero-padded by ``r``.
        image_index: ``B`` image of each patch.
        rows: ``B`` row of each patch on the unpadded grid.
        cols: ``B`` column of each patch on the unpadded grid.
        radius: ``r``.

    Returns:
        ``B x (M * D)`` neighbour features, neighbour-major (``M`` from
        :func:`neighbour_offsets`).
    """
    offsets = neighbour_offsets(radius).to(rows.device)
    neighbour_rows = rows[:, None] + radius + offsets[None, :, 0]  # B x M
    neighbour_cols = cols[:, None] + radius + offsets[None, :, 1]  # B x M
    channels_last = padded_features.permute(0, 2, 3, 1)  # N x H' x W' x D
    gathered = channels_last[image_index[:, None], neighbour_rows, neighbour_cols]  # B x M x D
    return gathered.reshape(gathered.shape[0], -1)


def position_histogram(assignments: torch.Tensor, num_entries: int, radius: int) -> torch.Tensor:
    """Per-position distribution of coreset entries, p(c | position).

    Every training patch votes for its nearest coreset entry at its own position and at
    the positions within ``radius`` of it (a box window clipped at the grid border), so
    nearby positions share evidence; each position's votes are then normalised.

    Args:
        assignments: ``N x H x W`` nearest-entry index of each training patch.
        num_entries: ``E``, the number of coreset entries.
        radius: Half-width of the smoothing window.

    Returns:
        ``(H * W) x E`` probabilities; every row sums to 1.
    """
    _, height, width = assignments.shape
    one_hot_counts = torch.zeros(num_entries, height * width, device=assignments.device)
    positions = torch.arange(height * width, device=assignments.device).expand_as(
        assignments.reshape(assignments.shape[0], -1)
    )
    one_hot_counts.index_put_(
        (assignments.reshape(-1), positions.reshape(-1)),
        torch.ones(assignments.numel(), device=assignments.device),
        accumulate=True,
    )
    counts = one_hot_counts.reshape(1, num_entries, height, width)  # 1 x E x H x W
    window = 2 * radius + 1
    # Sum over the window; zero padding clips it at the border.
    smoothed = F.avg_pool2d(counts, window, stride=1, padding=radius, count_include_pad=True)
    smoothed = smoothed * window * window
    per_position = smoothed[0].reshape(num_entries, -1).T  # HW x E
    return per_position / per_position.sum(dim=1, keepdim=True)


def thresholded_score(
    distances: torch.Tensor, allowed: torch.Tensor, prob_gamma: float
) -> torch.Tensor:
    """``-log max_c p(phi | c)`` over the allowed coreset entries of each position.

    ``p(phi | c) = gamma * exp(-gamma * ||phi - c||)``, so the score is
    ``gamma * d_min - log(gamma)``. Where no entry is allowed the farthest entry is used,
    which marks the position as highly anomalous (no normal feature is plausible there).

    Args:
        distances: ``P x E`` Euclidean distances to the embedding coreset.
        allowed: ``P x E`` boolean, entries whose prior passed the threshold.
        prob_gamma: ``gamma``.

    Returns:
        ``P`` anomaly scores.
    """
    masked = distances.masked_fill(~allowed, float("inf"))
    nearest = masked.min(dim=1).values
    farthest = distances.max(dim=1).values
    nearest = torch.where(torch.isinf(nearest), farthest, nearest)
    return prob_gamma * nearest - math.log(prob_gamma)


def pni_scores(
    distances: torch.Tensor,
    neighbour_probs: torch.Tensor,
    position_probs: torch.Tensor,
    emb_to_dist: torch.Tensor,
    tau_neighbourhood: float,
    tau_position: float,
    prob_gamma: float,
) -> torch.Tensor:
    """PNI anomaly score of each position from both kinds of prior.

    An embedding-coreset entry ``c`` counts as a plausible normal feature under the
    neighbourhood prior when ``p(dist(c) | neighbours) > tau_neighbourhood`` (``dist(c)`` is
    its nearest distribution-coreset entry) and under the position prior when
    ``p(c | position) > tau_position``. Each prior gives ``-log`` of the likelihood of the
    nearest plausible entry; the score is their mean, i.e. ``-log`` of the geometric mean
    of the two likelihoods (how the reference implementation combines them).

    Args:
        distances: ``P x E`` distances to the embedding coreset.
        neighbour_probs: ``P x K`` temperature-scaled softmax of the neighbourhood MLP.
        position_probs: ``P x E`` per-position histogram rows.
        emb_to_dist: ``E`` nearest distribution-coreset entry of each embedding entry.
        tau_neighbourhood: Threshold on neighbourhood probabilities.
        tau_position: Threshold on position probabilities.
        prob_gamma: ``gamma`` of :func:`thresholded_score`.

    Returns:
        ``P`` scores, higher = more anomalous.
    """
    allowed_by_neighbours = neighbour_probs[:, emb_to_dist] > tau_neighbourhood  # P x E
    allowed_by_position = position_probs > tau_position  # P x E
    neighbour_score = thresholded_score(distances, allowed_by_neighbours, prob_gamma)
    position_score = thresholded_score(distances, allowed_by_position, prob_gamma)
    return 0.5 * (neighbour_score + position_score)
