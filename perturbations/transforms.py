"""Brightness, contrast and hue shifts of float image batches, one parameter per image.

Each function is pure: it returns a new ``B x C x H x W`` tensor clamped to [0, 1].
"""

from __future__ import annotations

import logging
import math

import torch
from torchvision.transforms.v2 import functional as tvf

logger = logging.getLogger(__name__)

ParameterLike = torch.Tensor | float


def check_images(images: torch.Tensor, argument: str = "images") -> None:
    """Raise unless ``images`` is a ``B x C x H x W`` float batch in [0, 1] with C of 1 or 3.

    Args:
        images: The batch to check.
        argument: Name of the argument, for the error message.

    Raises:
        TypeError: Not a floating point tensor.
        ValueError: Wrong number of dimensions or channels, or values outside [0, 1].
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        found = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        message = f"{argument}: expected a floating point torch.Tensor, found {found}"
        raise TypeError(message)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        message = (
            f"{argument}: expected shape B x C x H x W with C of 1 or 3, "
            f"found shape {tuple(images.shape)}"
        )
        raise ValueError(message)
    if images.numel() == 0:
        return
    low, high = torch.aminmax(images)
    # NaN fails both comparisons, so it is caught here as well.
    if not (low >= 0.0 and high <= 1.0):
        message = (
            f"{argument}: expected values in [0, 1], found minimum {low.item():.4g} "
            f"and maximum {high.item():.4g}"
        )
        raise ValueError(message)


def is_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Tell which images of a batch are gray: one channel, or three exactly equal ones.

    Args:
        images: ``B x C x H x W`` float in [0, 1], C of 1 or 3.

    Returns:
        ``B`` booleans.
    """
    check_images(images)
    if images.shape[1] == 1:
        return torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
    red, green, blue = images.unbind(dim=1)  # each B x H x W
    equal = (red == green) & (green == blue)
    return equal.flatten(start_dim=1).all(dim=1)


def adjust_brightness(images: torch.Tensor, factor: ParameterLike) -> torch.Tensor:
    """Multiply every pixel by a per-image factor: 0 gives black, 1 the image itself.

    Args:
        images: ``B x C x H x W`` float in [0, 1].
        factor: ``B`` factors (or one for all), each >= 0.

    Returns:
        ``B x C x H x W``, clamped to [0, 1].

    Example:
        >>> adjust_brightness(torch.full((1, 3, 1, 1), 0.8), torch.tensor([0.5])).flatten()
        tensor([0.4000, 0.4000, 0.4000])
    """
    factors = _per_image(images, factor, "factor", low=0.0)
    adjusted = [tvf.adjust_brightness(image, f) for image, f in zip(images, factors, strict=True)]
    return _stack_clamped(adjusted, images)


def adjust_contrast(images: torch.Tensor, factor: ParameterLike) -> torch.Tensor:
    """Blend each image with the mean of its luminance: 0 gives flat gray, 1 the image itself.

    The luminance weights are torchvision's (0.2989, 0.587, 0.114), so results match
    ``torchvision.transforms.v2.functional.adjust_contrast`` image by image.

    Args:
        images: ``B x C x H x W`` float in [0, 1].
        factor: ``B`` factors (or one for all), each >= 0.

    Returns:
        ``B x C x H x W``, clamped to [0, 1].
    """
    factors = _per_image(images, factor, "factor", low=0.0)
    adjusted = [tvf.adjust_contrast(image, f) for image, f in zip(images, factors, strict=True)]
    return _stack_clamped(adjusted, images)


def adjust_hue(images: torch.Tensor, shift: ParameterLike) -> torch.Tensor:
    """Rotate the hue of each image by a fraction of the colour circle (RGB -> HSV -> RGB).

    A shift of 1 is a full turn; shifts are wrapped into [-0.5, 0.5) first. Gray pixels
    (all channels equal) have no hue and come back unchanged, bit for bit; one-channel
    images are returned unchanged. A shift of exactly 0 skips the conversion.

    Args:
        images: ``B x C x H x W`` float in [0, 1].
        shift: ``B`` hue shifts (or one for all), any finite value.

    Returns:
        ``B x C x H x W``, clamped to [0, 1].
    """
    shifts = _per_image(images, shift, "shift", low=-math.inf)
    adjusted = []
    for image, image_shift in zip(images, shifts, strict=True):
        wrapped = (image_shift + 0.5) % 1.0 - 0.5
        if wrapped == 0.0 or images.shape[1] == 1:
            adjusted.append(image.clone())
        else:
            adjusted.append(tvf.adjust_hue(image, wrapped))
    return _stack_clamped(adjusted, images)


def _per_image(
    images: torch.Tensor, value: ParameterLike, argument: str, low: float
) -> list[float]:
    """Check the batch and turn a scalar or ``B`` tensor into ``B`` finite Python floats."""
    check_images(images)
    batch = images.shape[0]
    if isinstance(value, torch.Tensor):
        if value.ndim != 1 or value.shape[0] != batch:
            message = (
                f"{argument}: expected one value per image, shape ({batch},), "
                f"found shape {tuple(value.shape)}"
            )
            raise ValueError(message)
        values = [float(v) for v in value.detach().cpu().tolist()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        values = [float(value)] * batch
    else:
        message = f"{argument}: expected a float or a tensor of shape ({batch},), found {value!r}"
        raise TypeError(message)
    for index, v in enumerate(values):
        if not math.isfinite(v) or v < low:
            expected = "a finite value" + (f" >= {low}" if math.isfinite(low) else "")
            message = f"{argument}[{index}]: expected {expected}, found {v}"
            raise ValueError(message)
    return values


def _stack_clamped(adjusted: list[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    if not adjusted:
        return images.clone()
    return torch.stack(adjusted).clamp_(0.0, 1.0)  # B x C x H x W
