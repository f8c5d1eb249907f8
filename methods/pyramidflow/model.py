"""PyramidFlow's invertible pyramid and its normalising flow, in pure torch.

A Laplacian-style pyramid splits a feature map into levels; coupling layers update one
level from its neighbouring levels; every scale and 1x1 mixing step is volume-normalised.
Shapes: ``B`` images, ``C`` channels, level ``l`` is ``B x C x H/2^l x W/2^l``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

Pyramid = list[torch.Tensor]

VOLUME_NORM_DIMS = {"CVN": (0, 1), "SVN": (0, 2, 3)}
"""Channel volume normalisation averages over batch and channels (one mean per position);
spatial volume normalisation over batch and positions (one mean per channel)."""


class LaplacianPyramid(nn.Module):
    """Pyramid whose levels are band-pass residuals and, last, a coarse low-pass image.

    Going down blurs with a 5x5 binomial kernel (zero padding) and takes the 2x2 maximum;
    going up repeats pixels (nearest) and blurs. :meth:`compose` inverts
    :meth:`decompose` exactly, whatever the blur, because each residual is stored.

    Args:
        num_levels: Number of levels (at least 2).
    """

    def __init__(self, num_levels: int) -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"num_levels must be at least 2, got {num_levels}")
        self.num_levels = num_levels
        taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        self.register_buffer("kernel", torch.outer(taps, taps) / 256.0, persistent=False)

    def _blur(self, images: torch.Tensor) -> torch.Tensor:
        channels = images.shape[1]
        weight = self.kernel.to(images.dtype).expand(channels, 1, 5, 5)
        return F.conv2d(images, weight, padding=2, groups=channels)

    def _down(self, images: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self._blur(images), kernel_size=2, stride=2)

    def _up(self, images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self._blur(F.interpolate(images, size=tuple(size), mode="nearest"))

    def decompose(self, images: torch.Tensor) -> Pyramid:
        """Split ``B x C x H x W`` into ``num_levels`` levels, finest first.

        Raises:
            ValueError: When ``H`` or ``W`` is not divisible by ``2^(num_levels - 1)``.
        """
        factor = 2 ** (self.num_levels - 1)
        if images.shape[-1] % factor or images.shape[-2] % factor:
            message = (
                f"feature map {tuple(images.shape[-2:])} is not divisible by {factor}, "
                f"which {self.num_levels} pyramid levels need"
            )
            raise ValueError(message)
        gaussian = [images]
        for _ in range(self.num_levels - 1):
            gaussian.append(self._down(gaussian[-1]))
        levels = [
            fine - self._up(coarse, fine.shape[-2:])
            for fine, coarse in zip(gaussian[:-1], gaussian[1:], strict=True)
        ]
        levels.append(gaussian[-1])
        return levels

    def compose(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Rebuild ``B x C x H x W`` from the levels (the inverse of :meth:`decompose`)."""
        image = levels[-1]
        for residual in reversed(levels[:-1]):
            image = residual + self._up(image, residual.shape[-2:])
        return image


class VolumeNorm(nn.Module):
    """Subtract the mean log-scale so a transform keeps its volume (PyramidFlow's VN).

    In training the mean is taken over ``dims`` of the batch and tracked with momentum
    0.1; in evaluation the tracked mean is subtracted, so the map is a fixed function.
    The tracked mean takes the shape of the batch mean on the first training step (a
    per-position mean for CVN), and loading a state dict adopts the saved shape.

    Args:
        dims: Axes averaged over, see :data:`VOLUME_NORM_DIMS`.
    """

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims
        self.momentum = 0.1
        self.register_buffer("running_mean", torch.zeros(1, 1, 1, 1))

    def forward(self, log_scale: torch.Tensor) -> torch.Tensor:
        """Return ``log_scale`` minus its (batch or tracked) mean; same shape."""
        if self.training:
            batch_mean = log_scale.mean(dim=self.dims, keepdim=True)
            with torch.no_grad():
                self.running_mean = (
                    1 - self.momentum
                ) * self.running_mean + self.momentum * batch_mean.detach()
            return log_scale - batch_mean
        return log_scale - self.running_mean

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        key = prefix + "running_mean"
        if key in state_dict:
            self.running_mean = torch.zeros_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class InvertibleConv1x1(nn.Module):
    """Channel mixing ``W = P L (U + diag(sign * exp(s)))`` with ``sum(s) = 0`` (volume norm).

    The LU form makes the inverse and determinant cheap; centring ``s`` makes
    ``log|det W| = 0``, PyramidFlow's volume normalisation of the 1x1 convolution.

    Args:
        channels: ``C``.
        generator: Random source of the orthogonal initialisation.
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        random = torch.randn(channels, channels, generator=generator, dtype=torch.float64)
        orthogonal, _ = torch.linalg.qr(random)
        permutation, lower, upper = torch.linalg.lu(orthogonal)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation.float())
        self.register_buffer("sign", torch.sign(diagonal).float())
        self.register_buffer("upper_mask", torch.triu(torch.ones(channels, channels), 1))
        self.lower = nn.Parameter(lower.float())
        self.log_diagonal = nn.Parameter(diagonal.abs().log().float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())

    def weight(self) -> torch.Tensor:
        """The ``C x C`` mixing matrix."""
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.upper_mask.T + eye
        log_diagonal = self.log_diagonal - self.log_diagonal.mean()
        upper = self.upper * self.upper_mask + torch.diag(self.sign * torch.exp(log_diagonal))
        return self.permutation @ lower @ upper

    def log_abs_det(self) -> torch.Tensor:
        """``log|det W|`` (zero up to rounding, by the volume normalisation)."""
        log_diagonal = self.log_diagonal - self.log_diagonal.mean()
        return log_diagonal.sum()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Mix channels of ``B x C x H x W``."""
        return F.conv2d(inputs, self.weight()[:, :, None, None])

    def inverse(self, outputs: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`forward`."""
        inverse = torch.linalg.inv(self.weight().double()).to(outputs.dtype)
        return F.conv2d(outputs, inverse[:, :, None, None])


class PyramidCoupling(nn.Module):
    """Affine coupling that updates one pyramid level from its neighbouring levels.

    ``z_target = W (exp(s) * x_target + t)`` with ``(s, t)`` computed from the condition
    levels, which pass through unchanged, so the step is invertible. Three layouts occur
    (the paper's Fig. 3): a coarser condition is upsampled (nearest) to the target and the
    network runs there; a single finer condition is processed at its own resolution, its
    log-scale volume-normalised there, and both outputs subsampled to the target; a finer
    and a coarser condition are both resized (nearest) to the target and concatenated.

    Args:
        target: Index of the level that changes.
        conditions: Indices of the levels it depends on (one or two neighbours).
        channels: ``C``.
        kernel_size: Size of the two convolutions of the scale/shift network.
        volume_norm: ``"CVN"`` or ``"SVN"``.
        clamp: Bound of the log-scale, applied softly with ``atan``.
        generator: Random source of the 1x1 convolution's initialisation.
    """

    def __init__(
        self,
        target: int,
        conditions: tuple[int, ...],
        channels: int,
        kernel_size: int,
        volume_norm: str,
        clamp: float = 2.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.target = target
        self.conditions = conditions
        self.clamp = clamp
        # A single finer condition: run at its resolution, then subsample the output.
        self.net_at_condition = len(conditions) == 1 and conditions[0] < target
        in_channels = channels * len(conditions)
        hidden = 2 * channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size, padding=kernel_size // 2, bias=False),
            nn.LeakyReLU(),
            nn.Conv2d(hidden, 2 * channels, kernel_size, padding=kernel_size // 2, bias=False),
        )
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity
        self.volume_norm = VolumeNorm(VOLUME_NORM_DIMS[volume_norm])
        self.mix = InvertibleConv1x1(channels, generator)

    def _scale_shift(
        self, levels: Sequence[torch.Tensor], size: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-scale and shift ``B x C x h x w`` for a target of spatial ``size``."""
        size = tuple(size)
        if self.net_at_condition:
            raw = self.net(levels[self.conditions[0]])  # B x 2C x 2h x 2w
        else:
            inputs = [F.interpolate(levels[i], size=size, mode="nearest") for i in self.conditions]
            raw = self.net(torch.cat(inputs, dim=1))  # B x 2C x h x w
        raw_log_scale, shift = raw.chunk(2, dim=1)
        # Soft clamp to (-clamp, clamp): 2/pi * atan keeps the scale away from 0 and inf.
        log_scale = self.clamp * (2 / math.pi) * torch.atan(raw_log_scale / self.clamp)
        log_scale = self.volume_norm(log_scale)
        if self.net_at_condition:
            # As in the official code, normalised at the finer level, then subsampled; the
            # volume is then preserved only approximately (see the README).
            log_scale = F.interpolate(log_scale, size=size, mode="nearest")
            shift = F.interpolate(shift, size=size, mode="nearest")
        return log_scale, shift

    def forward(self, levels: Pyramid, log_det: torch.Tensor) -> tuple[Pyramid, torch.Tensor]:
        """Transform the target level; return new levels and ``log_det + log|det J|`` (``B``)."""
        target = levels[self.target]
        log_scale, shift = self._scale_shift(levels, target.shape[-2:])
        changed = self.mix(torch.exp(log_scale) * target + shift)
        pixels = target.shape[-1] * target.shape[-2]
        step_log_det = log_scale.flatten(1).sum(dim=1) + pixels * self.mix.log_abs_det()
        return _replace(levels, self.target, changed), log_det + step_log_det

    def inverse(self, levels: Pyramid) -> Pyramid:
        """Undo :meth:`forward` (the conditions are unchanged, so ``(s, t)`` recompute)."""
        changed = self.mix.inverse(levels[self.target])
        log_scale, shift = self._scale_shift(levels, changed.shape[-2:])
        return _replace(levels, self.target, (changed - shift) * torch.exp(-log_scale))


def _replace(levels: Pyramid, index: int, value: torch.Tensor) -> Pyramid:
    return [value if i == index else level for i, level in enumerate(levels)]


def coupling_layout(num_levels: int, num_stack: int) -> list[tuple[int, tuple[int, ...]]]:
    """``(target, conditions)`` of every coupling, in order.

    Each stack first updates the odd levels from their even neighbours, then level 0
    from level 1 and the even levels from their odd neighbours, so information flows
    both up and down the pyramid; a level with a coarser neighbour uses both neighbours.
    """
    layout: list[tuple[int, tuple[int, ...]]] = []

    def add(target: int) -> None:
        if target + 1 < num_levels:
            layout.append((target, (target - 1, target + 1)))
        else:
            layout.append((target, (target - 1,)))

    for _ in range(num_stack):
        for target in range(1, num_levels, 2):
            add(target)
        layout.append((0, (1,)))
        for target in range(2, num_levels, 2):
            add(target)
    return layout


class SemiInvertibleProjection(nn.Module):
    """Fixed 1x1 projection of images to ``C >= 3`` channels with orthonormal columns.

    Used in place of a pretrained encoder; its left inverse is the transpose, so images
    can be recovered from the features exactly.

    Args:
        in_channels: Image channels (3).
        out_channels: ``C``.
        generator: Random source of the orthogonal weights.
    """

    def __init__(
        self, in_channels: int, out_channels: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if out_channels < in_channels:
            message = f"out_channels ({out_channels}) must be at least in_channels ({in_channels})"
            raise ValueError(message)
        random = torch.randn(out_channels, in_channels, generator=generator, dtype=torch.float64)
        orthonormal, _ = torch.linalg.qr(random)  # out x in, orthonormal columns
        self.register_buffer("weight", orthonormal.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``B x in x H x W`` to ``B x C x H x W``."""
        return F.conv2d(images, self.weight[:, :, None, None])

    def inverse(self, features: torch.Tensor) -> torch.Tensor:
        """Least-squares inverse (exact on the projection's range)."""
        return F.conv2d(features, self.weight.T[:, :, None, None])


class PyramidFlowNet(nn.Module):
    """The pyramid normalising flow: decomposition followed by pyramid couplings.

    Args:
        channels: ``C`` of the input feature map.
        num_levels: Pyramid levels.
        num_stack: Repetitions of the coupling pattern.
        kernel_size: Convolution size inside the couplings.
        volume_norm: ``"CVN"`` or ``"SVN"``.
        seed: Seed of the 1x1 convolutions' initialisation (the other weights follow
            torch's global generator, which the caller seeds).
    """

    def __init__(
        self,
        channels: int,
        num_levels: int,
        num_stack: int,
        kernel_size: int,
        volume_norm: str,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if volume_norm not in VOLUME_NORM_DIMS:
            message = (
                f"volume_norm must be one of {', '.join(VOLUME_NORM_DIMS)}, got {volume_norm!r}"
            )
            raise ValueError(message)
        if num_stack < 1:
            raise ValueError(f"num_stack must be at least 1, got {num_stack}")
        self.pyramid = LaplacianPyramid(num_levels)
        generator = torch.Generator().manual_seed(seed)
        self.couplings = nn.ModuleList(
            PyramidCoupling(target, conditions, channels, kernel_size, volume_norm, 2.0, generator)
            for target, conditions in coupling_layout(num_levels, num_stack)
        )

    def flow(self, levels: Pyramid) -> tuple[Pyramid, torch.Tensor]:
        """Map pyramid levels to latent levels; also return ``log|det J|`` per image (``B``)."""
        log_det = torch.zeros(levels[0].shape[0], dtype=levels[0].dtype, device=levels[0].device)
        for coupling in self.couplings:
            levels, log_det = coupling(levels, log_det)
        return levels, log_det

    def flow_inverse(self, latents: Pyramid) -> Pyramid:
        """Map latent levels back to pyramid levels."""
        for coupling in reversed(self.couplings):
            latents = coupling.inverse(latents)
        return latents

    def forward(self, features: torch.Tensor) -> Pyramid:
        """Latent pyramid of ``B x C x H x W`` features (finest level first)."""
        latents, _ = self.flow(self.pyramid.decompose(features))
        return latents

    def inverse(self, latents: Pyramid) -> torch.Tensor:
        """Features ``B x C x H x W`` whose latent pyramid is ``latents``."""
        return self.pyramid.compose(self.flow_inverse(latents))


def pairwise_fourier_loss(latents: Pyramid, pyramid: LaplacianPyramid) -> torch.Tensor:
    """PyramidFlow's training loss: latent differences of image pairs, in frequency space.

    For every pair of images in the batch the squared latent difference of each level
    is composed back into one map, averaged over channels, and the mean magnitude of
    its 2-D Fourier transform is the loss. Volume normalisation keeps ``log|det J|``
    constant, so the likelihood's determinant term is left out.

    Args:
        latents: Latent levels of ``B >= 2`` images.
        pyramid: The pyramid that composes the levels.

    Returns:
        Scalar loss.

    Raises:
        ValueError: For a batch of fewer than two images.
    """
    batch = latents[0].shape[0]
    if batch < 2:
        raise ValueError(f"the pairwise loss needs a batch of at least 2 images, got {batch}")
    first, second = torch.triu_indices(batch, batch, offset=1, device=latents[0].device)
    differences = [(level[first] - level[second]).pow(2) for level in latents]
    difference_map = pyramid.compose(differences).mean(dim=1)  # pairs x H x W
    return torch.fft.fft2(difference_map).abs().mean()


def template_difference(
    latents: Pyramid, template: Pyramid, pyramid: LaplacianPyramid
) -> torch.Tensor:
    """Anomaly maps ``B x H x W``: ``|latent - template|`` per level, composed, channel mean."""
    differences = [(level - mean).abs() for level, mean in zip(latents, template, strict=True)]
    return pyramid.compose(differences).mean(dim=1)
