"""RD++ (Tien et al., CVPR 2023, "Revisiting Reverse Distillation") as a DefectBench method.

Reverse distillation whose student reads the teacher's features through a trainable
multi-projection layer, trained with noisy copies of the normal images and three extra
losses; the pieces live in :mod:`methods.rrd.model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.method import METHODS
from methods._options import check_at_least, check_non_negative, check_positive
from methods._reverse_distillation import ReverseDistillationNet, distillation_loss
from methods.rd import (
    ADAM_BETAS,
    RD_PROFILE_DEFAULTS,
    ReverseDistillation,
    ReverseDistillationOptions,
    step_optimizers,
)
from methods.rrd.model import MultiProjectionLayer, add_noise_patches, projection_loss

# The official script's extra settings: projection-layer Adam at lr 0.001, projection loss
# weighted 0.2, noise weight 0.2, and an optimiser step on every second batch only (its
# gradients are cleared before each backward pass, so the other batches are discarded).
_EXTRA_PAPER_DEFAULTS: dict[str, Any] = {
    "proj_lr": 0.001,
    "weight_proj": 0.2,
    "noise_strength": 0.2,
    "step_every": 2,
    "ssot": True,
}

_PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": {**RD_PROFILE_DEFAULTS["paper"], **_EXTRA_PAPER_DEFAULTS},
    # As rd's quick profile; every batch steps so that the short schedule is not halved, and
    # the SSOT term, zero with zero gradient as the official code computes it, is skipped:
    # its Sinkhorn iterations would take most of a CPU step.
    "quick": {
        **RD_PROFILE_DEFAULTS["quick"],
        **_EXTRA_PAPER_DEFAULTS,
        "step_every": 1,
        "ssot": False,
    },
}


@dataclass(frozen=True)
class RevisitedReverseDistillationOptions(ReverseDistillationOptions):
    """The options of ``rd`` plus RD++'s; ``None`` means the profile's default.

    Attributes:
        proj_lr: Adam learning rate of the multi-projection layer (``lr`` is the student's).
        weight_proj: Weight of the projection loss beside the distillation loss.
        noise_strength: Weight of the fractal noise added to the noisy training copies.
        step_every: Optimiser step on every ``step_every``-th batch, from that batch's
            gradient alone (the official code: 2; the others only update batch-norm
            statistics).
        ssot: Compute the self-supervised optimal-transport term (Sinkhorn iterations of
            geomloss); as the official code computes it, it is 0 with zero gradient.
    """

    proj_lr: float | None = None
    weight_proj: float | None = None
    noise_strength: float | None = None
    step_every: int | None = None
    ssot: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, ("proj_lr",))
        check_non_negative(self, ("weight_proj", "noise_strength"))
        check_at_least(self, {"step_every": 1})


@METHODS.register(
    "rrd",
    description="RD++: reverse distillation through a multi-projection layer, noise and OT losses",
    aliases=("rdpp", "rd-plus-plus"),
)
class RevisitedReverseDistillation(ReverseDistillation):
    """RD++ behind the benchmark's method interface.

    Training feeds each batch and a copy with a rectangle of fractal noise to the frozen
    teacher; the projection layer learns to map both to the same compact features (the
    projection loss) and the student restores the clean teacher features from the projected
    ones (the distillation loss). ``predict`` is RD4AD's map with the projection in front of
    the bottleneck. It has no threshold of its own.
    """

    name = "rrd"
    description = "RD++: reverse distillation through a multi-projection layer, noise and OT losses"
    citation = (
        "Tien, Nguyen, Tran, Huy, Duong, Nguyen, Truong. Revisiting Reverse Distillation "
        "for Anomaly Detection. CVPR 2023."
    )
    Options = RevisitedReverseDistillationOptions
    profile_defaults: ClassVar[dict[str, dict[str, Any]]] = _PROFILE_DEFAULTS

    def build_adapter(self, channels: list[int]) -> nn.Module | None:
        """The multi-projection layer, one projection per teacher scale."""
        return MultiProjectionLayer(channels)

    def make_optimizers(self, net: ReverseDistillationNet) -> list[torch.optim.Optimizer]:
        """Adam for the projection layer and another for bottleneck and decoder."""
        values = self.resolved()
        return [
            torch.optim.Adam(net.adapter.parameters(), lr=values["proj_lr"], betas=ADAM_BETAS),
            torch.optim.Adam(net.student.parameters(), lr=values["lr"], betas=ADAM_BETAS),
        ]

    def training_step(
        self,
        net: ReverseDistillationNet,
        normal_images: torch.Tensor,
        optimizers: list[torch.optim.Optimizer],
        batch_index: int,
        generator: torch.Generator,
    ) -> float:
        """Distillation plus weighted projection loss on ``B x 3 x S x S`` normal images."""
        values = self.resolved()
        noisy_images = add_noise_patches(normal_images.cpu(), generator, values["noise_strength"])
        permutation = torch.randperm(normal_images.shape[0], generator=generator)
        if (batch_index + 1) % values["step_every"] != 0:
            # The official code computes this batch's gradient and then clears it; only the
            # batch-norm statistics it updates survive, so a forward pass is enough.
            with torch.no_grad():
                return float(self._loss(net, normal_images, noisy_images, permutation))
        loss = self._loss(net, normal_images, noisy_images, permutation)
        step_optimizers(optimizers, loss)
        return float(loss.detach())

    def _loss(
        self,
        net: ReverseDistillationNet,
        normal_images: torch.Tensor,
        noisy_images: torch.Tensor,
        permutation: torch.Tensor,
    ) -> torch.Tensor:
        values = self.resolved()
        teacher_maps = net.teacher_features(normal_images)
        noisy_teacher_maps = net.teacher_features(noisy_images.to(normal_images.device))
        projected = net.adapter(teacher_maps)
        noisy_projected = net.adapter(noisy_teacher_maps)
        losses = projection_loss(
            noisy_teacher_maps,
            noisy_projected,
            projected,
            permutation.to(normal_images.device),
            include_ssot=values["ssot"],
        )
        student_maps = net.student(projected)
        distill = distillation_loss(teacher_maps, student_maps, values["loss"])
        return distill + values["weight_proj"] * losses.total
