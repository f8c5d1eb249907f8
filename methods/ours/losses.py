"""Loss terms of the GAN method: adversarial, scaled pattern (eq. 2-3), masked cycle (eq. 4).

Pure torch; every function takes and returns tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GAN_LOSSES = ("lsgan", "bce")
MASK_MODES = ("soft", "hard")

PATTERN_ALPHA = 0.005
PATTERN_BETA = 0.995


def invisible_pattern(
    normal_images: Tensor, alpha: float = PATTERN_ALPHA, beta: float = PATTERN_BETA
) -> Tensor:
    """The target for normal inputs, ``I_s = alpha * I_n - beta`` (eq. 2).

    With inputs in [-1, 1] and the paper's values the pattern lies in [-1, -0.99]: almost
    the negative mask value, yet a linear copy of the image.

    Args:
        normal_images: ``B x C x H x W`` in [-1, 1].
        alpha: Scale.
        beta: Offset.

    Returns:
        ``B x C x H x W`` invisible pattern.
    """
    return normal_images * alpha - beta


def scaled_pattern_loss(prediction: Tensor, pattern: Tensor) -> Tensor:
    """Mean absolute error between the output for normal images and their pattern (eq. 3).

    Args:
        prediction: ``B x C x H x W`` generator output for normal images.
        pattern: ``B x C x H x W`` from :func:`invisible_pattern`.

    Returns:
        Scalar loss.
    """
    return (prediction - pattern).abs().mean()


def gan_loss(logits: Tensor, target_is_real: bool, kind: str = "lsgan") -> Tensor:
    """Adversarial loss of patch logits against an all-real or all-fake target.

    ``bce`` is the log loss of eq. 1 (binary cross-entropy on logits); ``lsgan`` is the
    least-squares form, ``(D - 1)^2`` for real and ``D^2`` for fake.

    Args:
        logits: ``B x 1 x H' x W'`` discriminator output.
        target_is_real: Whether the target label is "real".
        kind: ``lsgan`` or ``bce``.

    Returns:
        Scalar loss.
    """
    target = torch.full_like(logits, 1.0 if target_is_real else 0.0)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    raise ValueError(f"gan loss kind must be one of {', '.join(GAN_LOSSES)}, got {kind!r}")


def defect_weight(prediction: Tensor, mode: str = "soft", detach: bool = True) -> Tensor:
    """How defective ``G_X`` itself judges each pixel: the weight the dynamic mask removes.

    Masks live in [-1, 1] with -1 meaning normal; the channel mean is mapped to [0, 1].

    Args:
        prediction: ``B x C x H x W`` output of ``G_X`` for the defective images.
        mode: ``soft`` keeps the value in [0, 1]; ``hard`` rounds it at 0.5 (no gradient).
        detach: Stop gradients through the weight (always so for ``hard``).

    Returns:
        ``B x 1 x H x W`` weight in [0, 1], 1 meaning "predicted defective".
    """
    weight = ((prediction.mean(dim=1, keepdim=True) + 1.0) / 2.0).clamp(0.0, 1.0)
    if mode == "hard":
        return (weight.detach() > 0.5).to(prediction.dtype)
    if mode != "soft":
        raise ValueError(f"mask mode must be one of {', '.join(MASK_MODES)}, got {mode!r}")
    return weight.detach() if detach else weight


def apply_dynamic_mask(images: Tensor, weight: Tensor) -> Tensor:
    """The mask process ``M``: blank the regions predicted defective (to 0, mid-grey).

    Args:
        images: ``B x C x H x W``.
        weight: ``B x 1 x H x W`` from :func:`defect_weight`.

    Returns:
        ``B x C x H x W`` masked images.
    """
    return images * (1.0 - weight)


def dynamic_masked_cycle_loss(
    defective: Tensor,
    recovered: Tensor,
    weight: Tensor | None,
    masks: Tensor,
    masks_recovered: Tensor,
) -> tuple[Tensor, Tensor]:
    """Both terms of eq. 4, ``||M(G_Y(G_X(x))) - M(x)||_1`` and ``||G_X(G_Y(y)) - y||_1``.

    Args:
        defective: ``B x C x H x W`` defective inputs ``x``.
        recovered: ``B x C x H x W`` recoveries ``G_Y(G_X(x))``.
        weight: ``B x 1 x H x W`` dynamic mask weight, or ``None`` for the plain cycle
            loss (the ablations without the mask component).
        masks: ``B x C x H x W`` random masks ``y``.
        masks_recovered: ``B x C x H x W`` recoveries ``G_X(G_Y(y))``.

    Returns:
        ``(image_term, mask_term)`` scalars.
    """
    if weight is None:
        image_term = (recovered - defective).abs().mean()
    else:
        difference = apply_dynamic_mask(recovered, weight) - apply_dynamic_mask(defective, weight)
        image_term = difference.abs().mean()
    mask_term = (masks_recovered - masks).abs().mean()
    return image_term, mask_term


def prediction_to_map(prediction: Tensor) -> Tensor:
    """Anomaly map in [0, 1] from a generator output in [-1, 1].

    Args:
        prediction: ``B x C x H x W``.

    Returns:
        ``B x H x W``; 0.5 is the native decision boundary between the mask values.
    """
    return ((prediction.mean(dim=1) + 1.0) / 2.0).clamp(0.0, 1.0)
