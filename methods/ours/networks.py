"""Generators (ResNet-block encoder-decoder) and PatchGAN discriminators of the GAN method.

Pure torch: no file I/O, no harness calls. Shapes follow the project scheme ``B x C x H x W``.
"""

from __future__ import annotations

from torch import Tensor, nn


def _instance_norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResidualBlock(nn.Module):
    """Two reflect-padded 3x3 convolutions with instance norm and an identity shortcut.

    Args:
        channels: Feature channels ``C`` in and out.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=True),
            _instance_norm(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=True),
            _instance_norm(channels),
        )

    def forward(self, features: Tensor) -> Tensor:
        """Map ``B x C x H x W`` to ``B x C x H x W``."""
        return features + self.body(features)


class ResnetGenerator(nn.Module):
    """Encoder, residual blocks, decoder; output squashed to [-1, 1] by ``tanh``.

    The layout is the one image-to-image GANs use: a 7x7 stem, ``downsamplings`` stride-2
    convolutions that double the width, ``blocks`` residual blocks at the bottleneck, the
    mirror-image transposed convolutions and a 7x7 head.

    Args:
        in_channels: Channels of the input images.
        out_channels: Channels of the output.
        width: Channels after the stem (64 in the image-to-image GAN literature).
        blocks: Residual blocks at the bottleneck (9 for 256 px inputs there).
        downsamplings: Stride-2 stages; ``H`` and ``W`` must be divisible by
            ``2 ** downsamplings``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        width: int = 64,
        blocks: int = 9,
        downsamplings: int = 2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, width, kernel_size=7, bias=True),
            _instance_norm(width),
            nn.ReLU(inplace=True),
        ]
        channels = width
        for _ in range(downsamplings):
            layers += [
                nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1, bias=True),
                _instance_norm(channels * 2),
                nn.ReLU(inplace=True),
            ]
            channels *= 2
        layers += [ResidualBlock(channels) for _ in range(blocks)]
        for _ in range(downsamplings):
            layers += [
                nn.ConvTranspose2d(
                    channels,
                    channels // 2,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=True,
                ),
                _instance_norm(channels // 2),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(channels, out_channels, kernel_size=7),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        """Map ``B x C_in x H x W`` in [-1, 1] to ``B x C_out x H x W`` in [-1, 1]."""
        return self.model(images)


class PatchDiscriminator(nn.Module):
    """PatchGAN: a fully convolutional critic that scores overlapping patches.

    With ``layers=3`` each output value sees a 70 x 70 input patch.

    Args:
        in_channels: Channels of the judged images or masks.
        width: Channels of the first convolution (64 in the literature).
        layers: Stride-2 convolutions after the first one.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        modules: list[nn.Module] = [
            nn.Conv2d(in_channels, width, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = width
        for index in range(1, layers + 1):
            out = width * min(2**index, 8)
            stride = 2 if index < layers else 1
            modules += [
                nn.Conv2d(channels, out, kernel_size=4, stride=stride, padding=1, bias=True),
                _instance_norm(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        modules.append(nn.Conv2d(channels, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*modules)

    def forward(self, images: Tensor) -> Tensor:
        """Map ``B x C x H x W`` to patch logits ``B x 1 x H' x W'``."""
        return self.model(images)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Normal(0, ``std``) convolution weights and zero biases, as GAN practice does."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
