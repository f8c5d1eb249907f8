"""Reverse-distillation networks (RD4AD): one-class bottleneck, student decoder, loss, maps.

Pure torch, sized from the teacher's channel counts so that any three-stage teacher with
strides ``r, 2r, 4r`` works (wide_resnet50_2 as in the paper, or the offline fallback).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

logger = logging.getLogger(__name__)

DISTILLATION_LOSSES = ("flat", "pixel")
MAP_MODES = ("add", "multiply")

# Residual blocks per stage in the original wide_resnet50_2 set-up: the bottleneck's
# one-class embedding has 3, the decoder mirrors ResNet-50's layer3, layer2, layer1.
EMBEDDING_BLOCKS = 3
DECODER_BLOCKS = (3, 4, 6)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def _deconv2x2(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False)


class ResidualBottleneck(nn.Module):
    """ResNet bottleneck block (1x1, 3x3, 1x1) that keeps, halves or doubles resolution.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        width: Channels of the inner 3x3 (or transposed 2x2) convolution.
        resample: ``"down"`` (3x3 convolution with stride 2, as in the encoder),
            ``"up"`` (2x2 transposed convolution with stride 2, as in the decoder) or
            ``"none"``.

    ``forward`` maps ``B x C_in x H x W`` to ``B x C_out x H' x W'`` with ``H' = H / 2``,
    ``2 H`` or ``H``.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, resample: str) -> None:
        super().__init__()
        if resample not in ("down", "up", "none"):
            raise ValueError(f"resample must be 'down', 'up' or 'none', got {resample!r}")
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        if resample == "up":
            self.conv2: nn.Module = _deconv2x2(width, width)
        else:
            self.conv2 = _conv3x3(width, width, 2 if resample == "down" else 1)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if resample == "up":
            self.shortcut = nn.Sequential(
                _deconv2x2(in_channels, out_channels), nn.BatchNorm2d(out_channels)
            )
        elif resample == "down" or in_channels != out_channels:
            stride = 2 if resample == "down" else 1
            self.shortcut = nn.Sequential(
                _conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``B x C_in x H x W`` features."""
        out = self.relu(self.bn1(self.conv1(features)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = features if self.shortcut is None else self.shortcut(features)
        return self.relu(out + identity)


def _stage(
    in_channels: int, out_channels: int, width_multiplier: int, blocks: int, resample: str
) -> nn.Sequential:
    # ResNet convention: out = 4 * planes, inner width = planes * width_multiplier.
    width = max(1, out_channels // 4) * width_multiplier
    layers = [ResidualBottleneck(in_channels, out_channels, width, resample)]
    layers += [
        ResidualBottleneck(out_channels, out_channels, width, "none") for _ in range(blocks - 1)
    ]
    return nn.Sequential(*layers)


class OneClassBottleneck(nn.Module):
    """Multi-scale feature fusion (MFF) followed by the one-class embedding (OCE) block.

    Args:
        channels: Teacher channels ``(C1, C2, C3)`` at strides ``r, 2r, 4r``.
        width_multiplier: Inner width of the residual blocks relative to ResNet-50's
            (2 for wide_resnet50_2).
        blocks: Residual blocks in the embedding.

    ``forward`` takes ``[B x C1 x 4h x 4w, B x C2 x 2h x 2w, B x C3 x h x w]`` and returns
    the embedding ``B x 2 C3 x h/2 x w/2``.
    """

    def __init__(
        self, channels: Sequence[int], width_multiplier: int = 2, blocks: int = EMBEDDING_BLOCKS
    ) -> None:
        super().__init__()
        c1, c2, c3 = _three_channels(channels)
        self.out_channels = 2 * c3
        self.reduce_first = nn.Sequential(
            _conv3x3(c1, c2, 2),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            _conv3x3(c2, c3, 2),
            nn.BatchNorm2d(c3),
            nn.ReLU(inplace=True),
        )
        self.reduce_second = nn.Sequential(
            _conv3x3(c2, c3, 2), nn.BatchNorm2d(c3), nn.ReLU(inplace=True)
        )
        self.embed = _stage(3 * c3, self.out_channels, width_multiplier, blocks, "down")
        _init_weights(self)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse three teacher maps and embed them."""
        fused = torch.cat(  # B x 3 C3 x h x w
            [self.reduce_first(features[0]), self.reduce_second(features[1]), features[2]], 1
        )
        return self.embed(fused).contiguous()


class StudentDecoder(nn.Module):
    """Decoder that mirrors the teacher: three up-sampling stages of residual blocks.

    Args:
        channels: Teacher channels ``(C1, C2, C3)`` to restore.
        width_multiplier: As in :class:`OneClassBottleneck`.
        blocks: Residual blocks per stage, deepest stage first.

    ``forward`` takes the embedding ``B x 2 C3 x h/2 x w/2`` and returns
    ``[B x C1 x 4h x 4w, B x C2 x 2h x 2w, B x C3 x h x w]`` (teacher order).
    """

    def __init__(
        self,
        channels: Sequence[int],
        width_multiplier: int = 2,
        blocks: Sequence[int] = DECODER_BLOCKS,
    ) -> None:
        super().__init__()
        c1, c2, c3 = _three_channels(channels)
        self.stage3 = _stage(2 * c3, c3, width_multiplier, blocks[0], "up")
        self.stage2 = _stage(c3, c2, width_multiplier, blocks[1], "up")
        self.stage1 = _stage(c2, c1, width_multiplier, blocks[2], "up")
        _init_weights(self)

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        """Restore the three teacher scales from the embedding."""
        deep = self.stage3(embedding)
        middle = self.stage2(deep)
        shallow = self.stage1(middle)
        return [shallow, middle, deep]


class ReverseDistillationStudent(nn.Module):
    """The trainable part of RD4AD: one-class bottleneck then student decoder.

    Args:
        channels: Teacher channels ``(C1, C2, C3)``.
        width_multiplier: Inner width of the residual blocks relative to ResNet-50's.

    ``forward`` maps the teacher's three feature maps to three student maps of the same
    shapes.
    """

    def __init__(self, channels: Sequence[int], width_multiplier: int = 2) -> None:
        super().__init__()
        self.bottleneck = OneClassBottleneck(channels, width_multiplier)
        self.decoder = StudentDecoder(channels, width_multiplier)

    def forward(self, teacher_features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return student features matching ``teacher_features`` in shape."""
        return self.decoder(self.bottleneck(teacher_features))


def distillation_loss(
    teacher_features: Sequence[torch.Tensor],
    student_features: Sequence[torch.Tensor],
    mode: str = "flat",
) -> torch.Tensor:
    """Sum over scales of the mean cosine distance between teacher and student.

    Args:
        teacher_features: Maps ``B x C_i x H_i x W_i``.
        student_features: Maps of the same shapes.
        mode: ``"flat"`` compares each sample's whole map as one vector (the official
            code); ``"pixel"`` compares the ``C_i``-vectors at each position and averages
            over positions (the paper's Eq. 2).

    Returns:
        Scalar loss; 0 when the student equals the teacher, at most ``2 x`` the number of
        scales.
    """
    if mode not in DISTILLATION_LOSSES:
        raise ValueError(f"mode must be one of {', '.join(DISTILLATION_LOSSES)}, got {mode!r}")
    loss = teacher_features[0].new_zeros(())
    for teacher, student in zip(teacher_features, student_features, strict=True):
        if mode == "flat":
            similarity = F.cosine_similarity(teacher.flatten(1), student.flatten(1), dim=1)
        else:
            similarity = F.cosine_similarity(teacher, student, dim=1)  # B x H x W
        loss = loss + (1 - similarity).mean()
    return loss


def anomaly_map(
    teacher_features: Sequence[torch.Tensor],
    student_features: Sequence[torch.Tensor],
    size: int,
    mode: str = "add",
) -> torch.Tensor:
    """Per-pixel cosine distance between teacher and student, fused over scales.

    Args:
        teacher_features: Maps ``B x C_i x H_i x W_i``.
        student_features: Maps of the same shapes.
        size: Side of the square output map.
        mode: ``"add"`` (the official evaluation) or ``"multiply"`` the upsampled maps.

    Returns:
        ``B x size x size`` map, each scale contributing ``1 - cos`` in [0, 2].
    """
    if mode not in MAP_MODES:
        raise ValueError(f"mode must be one of {', '.join(MAP_MODES)}, got {mode!r}")
    fused: torch.Tensor | None = None
    for teacher, student in zip(teacher_features, student_features, strict=True):
        distance = (1 - F.cosine_similarity(teacher, student, dim=1)).unsqueeze(1)  # B x 1 x h x w
        distance = F.interpolate(distance, size=(size, size), mode="bilinear", align_corners=True)
        if fused is None:
            fused = distance
        else:
            fused = fused + distance if mode == "add" else fused * distance
    if fused is None:
        raise ValueError("anomaly_map needs at least one pair of feature maps")
    return fused[:, 0]


class ReverseDistillationNet(nn.Module):
    """Frozen teacher, optional feature adapter, trainable student: the whole RD model.

    Args:
        teacher: Frozen extractor returning three maps at strides ``r, 2r, 4r`` for
            ``B x 3 x H x W`` images in [0, 1] (it normalises them itself).
        student: Bottleneck and decoder that restore the teacher's maps.
        adapter: Applied to the teacher's maps before the bottleneck (RD++'s projection
            layer); ``None`` feeds them unchanged, as in RD4AD.

    ``forward(images)`` returns ``(teacher_maps, student_maps)``, two lists of three
    ``B x C_i x H_i x W_i`` tensors; the teacher's carry no gradient.
    """

    def __init__(
        self, teacher: nn.Module, student: ReverseDistillationStudent, adapter: nn.Module | None
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = student
        self.adapter = adapter

    def trainable_modules(self) -> list[nn.Module]:
        """The modules that learn: the student, then the adapter when there is one."""
        return [self.student] if self.adapter is None else [self.student, self.adapter]

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Teacher maps of ``B x 3 x H x W`` images in [0, 1], without gradient."""
        with torch.no_grad():
            return list(self.teacher(images))

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher and student maps of ``B x 3 x H x W`` images in [0, 1]."""
        teacher_maps = self.teacher_features(images)
        student_input = teacher_maps if self.adapter is None else self.adapter(teacher_maps)
        return teacher_maps, self.student(student_input)


def _three_channels(channels: Sequence[int]) -> tuple[int, int, int]:
    if len(channels) != 3:
        message = f"reverse distillation needs exactly 3 teacher scales, got channels {channels}"
        raise ValueError(message)
    return int(channels[0]), int(channels[1]), int(channels[2])


def _init_weights(module: nn.Module) -> None:
    # As in the original: He initialisation for convolutions, unit BatchNorm; the
    # transposed convolutions keep PyTorch's default initialisation.
    for child in module.modules():
        if isinstance(child, nn.Conv2d):
            nn.init.kaiming_normal_(child.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(child, nn.BatchNorm2d):
            nn.init.constant_(child.weight, 1)
            nn.init.constant_(child.bias, 0)


def check_pyramid(reductions: Sequence[int], image_size: int, where: str) -> None:
    """Raise unless the teacher strides are ``r, 2r, 4r`` and fit ``image_size``.

    Args:
        reductions: Strides of the three teacher maps.
        image_size: Input side in pixels.
        where: What to name in the message (the option or backbone at fault).
    """
    if len(reductions) != 3 or list(reductions) != [
        reductions[0],
        2 * reductions[0],
        4 * reductions[0],
    ]:
        message = f"{where}: teacher strides must be r, 2r, 4r, got {list(reductions)}"
        raise ValueError(message)
    multiple = 2 * reductions[2]
    if image_size % multiple != 0 or image_size < 2 * multiple:
        message = (
            f"{where}: image_size {image_size} must be a multiple of {multiple} and at least "
            f"{2 * multiple} for teacher strides {list(reductions)}"
        )
        raise ValueError(message)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "DISTILLATION_LOSSES",
    "MAP_MODES",
    "OneClassBottleneck",
    "ResidualBottleneck",
    "ReverseDistillationNet",
    "ReverseDistillationStudent",
    "StudentDecoder",
    "anomaly_map",
    "check_pyramid",
    "count_parameters",
    "distillation_loss",
]
