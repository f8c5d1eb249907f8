"""A trivial reference localizer: each pixel's distance from the mean normal image."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.method import METHODS, FitContext, Method


@METHODS.register(
    "mean-diff",
    aliases=("meandiff",),
    description="Reference floor: |image - mean normal image|, smoothed; no learning.",
)
class MeanDiff(Method):
    """Anomaly map = per-pixel colour distance from the mean training image.

    Any method that localizes defects should beat this floor; on aligned textures it is
    surprisingly strong, on shifted lighting it collapses. The map is blurred with a small
    box filter to suppress single-pixel noise.
    """

    citation = "reference baseline of this project"
    profiles = ("quick", "cpu", "paper")

    def __init__(self, profile: str = "quick", options: object | None = None) -> None:
        super().__init__(profile, options)
        self.mean_image: torch.Tensor | None = None

    def fit(self, normal_images: torch.Tensor, context: FitContext) -> None:
        """Store the mean of ``N x 3 x H x W`` normal images."""
        if normal_images.ndim != 4 or normal_images.shape[0] == 0:
            shape = tuple(normal_images.shape)
            message = f"expected N x 3 x H x W normal images with N >= 1, got {shape}"
            raise ValueError(message)
        self.mean_image = normal_images.mean(dim=0).to(context.device)
        context.progress(1, 1, "mean image")

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Return ``B x H x W`` distances to the mean image (resized to the input)."""
        if self.mean_image is None:
            raise RuntimeError("mean-diff: predict() called before fit() or load()")
        mean = self.mean_image.to(images.device)
        if mean.shape[-2:] != images.shape[-2:]:
            mean = F.interpolate(mean[None], size=images.shape[-2:], mode="bilinear")[0]
        distance = (images - mean[None]).pow(2).sum(dim=1, keepdim=True).sqrt()  # B x 1 x H x W
        return F.avg_pool2d(distance, kernel_size=5, stride=1, padding=2, count_include_pad=False)[
            :, 0
        ]

    def save(self, directory: Path) -> None:
        """Write the mean image."""
        if self.mean_image is None:
            raise RuntimeError("mean-diff: save() called before fit()")
        torch.save(self.mean_image.cpu(), directory / "mean_image.pt")
        (directory / "mean_diff.json").write_text(
            json.dumps({"shape": list(self.mean_image.shape)})
        )

    def load(self, directory: Path) -> None:
        """Read the mean image written by :meth:`save`."""
        self.mean_image = torch.load(directory / "mean_image.pt", weights_only=True).to(self.device)

    def to(self, device: torch.device) -> MeanDiff:
        """Move the mean image to ``device``."""
        super().to(device)
        if self.mean_image is not None:
            self.mean_image = self.mean_image.to(device)
        return self

    def describe(self) -> dict[str, object]:
        """No backbone; a reference floor."""
        return {"backbone": None, "pretrained": None, "note": ""}
