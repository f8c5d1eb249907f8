"""Training loop of the GAN method, with regeneration of the synthetic set.

One iteration per (defective, mask, normal) triple; checkpoints make a resumed run identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from methods.ours.losses import (
    defect_weight,
    dynamic_masked_cycle_loss,
    gan_loss,
    invisible_pattern,
    scaled_pattern_loss,
)
from methods.ours.networks import PatchDiscriminator, ResnetGenerator, init_weights
from methods.ours.synthesis import (
    OpacitySchedule,
    SyntheticSet,
    TextureSource,
    make_synthetic_set,
)

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "ours-checkpoint.pt"
COMPONENTS = ("G", "S", "C", "M")
D_X_INPUTS = ("translated", "recovered")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that fixes a training run (besides data, anomaly sources and seed).

    Attributes:
        image_size: Side ``S`` of the square training images.
        width: Channels after the generator stem; the discriminators use the same width.
        blocks: Residual blocks in each generator.
        disc_layers: Stride-2 layers of the PatchGAN discriminators.
        iterations: Optimiser steps (batch size 1).
        samples: Synthetic defective images per regeneration (an "epoch" is one pass).
        regenerations: How many times the synthetic set is built over the run.
        components: Enabled parts: ``G`` adversarial (always), ``S`` scaled pattern path,
            ``C`` cycle with ``G_Y``/``D_X``, ``M`` dynamic mask (needs ``C``).
        opacity: Opacity strategy of the synthesis.
        gan_loss: ``lsgan`` or ``bce``.
        lambda_cycle: Weight of the cycle loss (lambda_1).
        lambda_pattern: Weight of the scaled pattern loss (lambda_2).
        mask_mode: ``soft`` or ``hard`` dynamic mask.
        mask_grad: Let gradients flow through the soft dynamic mask into ``G_X``.
        d_x_input: What ``D_X`` judges as fake: ``translated`` ``G_Y(y)`` (eq. 5) or
            ``recovered`` ``G_Y(G_X(x))`` (the method text).
        pool_size: Past fakes kept for the discriminator updates (0 = none).
        lr: Adam learning rate.
        betas: Adam betas.
    """

    image_size: int = 256
    width: int = 64
    blocks: int = 9
    disc_layers: int = 3
    iterations: int = 300_000
    samples: int = 300
    regenerations: int = 20
    components: tuple[str, ...] = COMPONENTS
    opacity: OpacitySchedule = field(default_factory=OpacitySchedule)
    gan_loss: str = "lsgan"
    lambda_cycle: float = 10.0
    lambda_pattern: float = 0.4
    mask_mode: str = "soft"
    mask_grad: bool = False
    d_x_input: str = "translated"
    pool_size: int = 50
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)

    @property
    def regenerate_every(self) -> int:
        """Iterations between two regenerations of the synthetic set."""
        return max(1, -(-self.iterations // self.regenerations))

    def fingerprint(self) -> str:
        """Short hash of the configuration, stored in checkpoints."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class GanModels(nn.Module):
    """The four networks; ``g_y`` and ``d_x`` exist only with the cycle component.

    Args:
        config: Sizes and enabled components.
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.g_x = ResnetGenerator(3, 3, config.width, config.blocks)
        self.d_y = PatchDiscriminator(3, config.width, config.disc_layers)
        self.g_y: ResnetGenerator | None = None
        self.d_x: PatchDiscriminator | None = None
        if "C" in config.components:
            self.g_y = ResnetGenerator(3, 3, config.width, config.blocks)
            self.d_x = PatchDiscriminator(3, config.width, config.disc_layers)

    def generators(self) -> list[nn.Module]:
        """``G_X`` and, with the cycle, ``G_Y``."""
        return [m for m in (self.g_x, self.g_y) if m is not None]

    def discriminators(self) -> list[nn.Module]:
        """``D_Y`` and, with the cycle, ``D_X``."""
        return [m for m in (self.d_y, self.d_x) if m is not None]


class FakePool:
    """History of generated samples shown to a discriminator (batch size 1).

    Until full, each new fake is stored and returned; afterwards, with probability 1/2 a
    random stored fake is returned and replaced by the new one.

    Args:
        size: Capacity; 0 returns every fake unchanged.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[Tensor] = []

    def query(self, fake: Tensor, generator: torch.Generator) -> Tensor:
        """Return the fake ``1 x C x H x W`` to judge (``fake`` or an older one)."""
        if self.size == 0:
            return fake
        fake = fake.detach()
        if len(self.items) < self.size:
            self.items.append(fake.clone())
            return fake
        if float(torch.rand((), generator=generator)) < 0.5:
            index = int(torch.randint(0, self.size, (), generator=generator))
            older = self.items[index]
            self.items[index] = fake.clone()
            return older
        return fake


@dataclass
class StepLosses:
    """Loss values of one iteration (0.0 for disabled components)."""

    adversarial_x: float = 0.0
    adversarial_y: float = 0.0
    cycle_image: float = 0.0
    cycle_mask: float = 0.0
    pattern: float = 0.0
    generator_total: float = 0.0
    discriminator_y: float = 0.0
    discriminator_x: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Plain dict for logs and CSV rows."""
        return asdict(self)


@dataclass
class Batch:
    """One training triple in network range [-1, 1].

    Attributes:
        defective: ``1 x 3 x S x S`` synthesised defective image ``x``.
        mask: ``1 x 3 x S x S`` unrelated random mask ``y`` (-1 normal, +1 defect).
        normal: ``1 x 3 x S x S`` normal image ``I_n``.
    """

    defective: Tensor
    mask: Tensor
    normal: Tensor


@dataclass
class Forward:
    """Generator outputs of one iteration (``None`` where a component is off)."""

    prediction: Tensor
    recovered: Tensor | None = None
    translated: Tensor | None = None
    mask_recovered: Tensor | None = None
    normal_prediction: Tensor | None = None


def to_network_range(images: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1]."""
    return images * 2.0 - 1.0


def mask_to_network(mask: Tensor) -> Tensor:
    """``B x S x S`` bool mask -> ``B x 3 x S x S`` in {-1, +1}."""
    return (mask.float() * 2.0 - 1.0)[:, None].expand(-1, 3, -1, -1).contiguous()


class Trainer:
    """Owns the networks, optimisers, random streams and the synthetic set.

    Args:
        config: The run's configuration.
        normal_images: ``N x 3 x S x S`` normal training images in [0, 1] at
            ``config.image_size``.
        source: Anomaly-source textures for synthesis.
        seed: Seed of weights, synthesis and sampling.
        device: Where the networks train.
    """

    def __init__(
        self,
        config: TrainConfig,
        normal_images: Tensor,
        source: TextureSource,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.seed = seed
        self.source = source
        self.normal_images = normal_images.float().cpu()
        self.has = {name: name in config.components for name in COMPONENTS}

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.models = GanModels(config)
            init_weights(self.models)
        self.models.to(self.device)
        generator_params = [p for m in self.models.generators() for p in m.parameters()]
        discriminator_params = [p for m in self.models.discriminators() for p in m.parameters()]
        self.optimizer_g = torch.optim.Adam(generator_params, lr=config.lr, betas=config.betas)
        self.optimizer_d = torch.optim.Adam(discriminator_params, lr=config.lr, betas=config.betas)

        self.sampler = torch.Generator().manual_seed(seed + 1)
        self.pool_y = FakePool(config.pool_size)
        self.pool_x = FakePool(config.pool_size)
        self.iteration = 0
        self.order = torch.empty(0, dtype=torch.long)
        self.synthetic: SyntheticSet | None = None
        self.regeneration = -1

    # --- synthetic data ------------------------------------------------------------------

    def synthesis_generator(self, regeneration: int) -> torch.Generator:
        """The random stream of regeneration ``regeneration``: a pure function of the seed."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (regeneration + 1))

    def regenerate(self, regeneration: int) -> None:
        """Build the synthetic set of regeneration ``regeneration`` (deterministic)."""
        generator = self.synthesis_generator(regeneration)
        opacities = self.config.opacity.opacities(
            regeneration, self.config.regenerations, self.config.samples, generator
        )
        self.synthetic = make_synthetic_set(self.normal_images, self.source, opacities, generator)
        self.regeneration = regeneration
        logger.debug(
            "regeneration %d: opacity %.3f-%.3f",
            regeneration,
            float(opacities.min()),
            float(opacities.max()),
        )

    def next_batch(self) -> Batch:
        """Draw the triple of the current iteration (regenerating the set when due)."""
        regeneration = min(
            self.iteration // self.config.regenerate_every, self.config.regenerations - 1
        )
        if regeneration != self.regeneration or self.synthetic is None:
            self.regenerate(regeneration)
        assert self.synthetic is not None
        count = self.synthetic.defective.shape[0]
        position = self.iteration % count
        if position == 0 or self.order.numel() != count:
            self.order = torch.randperm(count, generator=self.sampler)
        x_index = int(self.order[position])
        y_index = int(torch.randint(0, count, (), generator=self.sampler))
        n_index = int(torch.randint(0, self.normal_images.shape[0], (), generator=self.sampler))
        return Batch(
            defective=to_network_range(self.synthetic.defective[x_index : x_index + 1]).to(
                self.device
            ),
            mask=mask_to_network(self.synthetic.random_masks[y_index : y_index + 1]).to(
                self.device
            ),
            normal=to_network_range(self.normal_images[n_index : n_index + 1]).to(self.device),
        )

    # --- one iteration -------------------------------------------------------------------

    def forward(self, batch: Batch) -> Forward:
        """Run the generators over the batch."""
        models = self.models
        out = Forward(prediction=models.g_x(batch.defective))
        if self.has["C"]:
            assert models.g_y is not None
            out.recovered = models.g_y(out.prediction)
            out.translated = models.g_y(batch.mask)
            out.mask_recovered = models.g_x(out.translated)
        if self.has["S"]:
            out.normal_prediction = models.g_x(batch.normal)
        return out

    def generator_losses(self, batch: Batch, out: Forward) -> tuple[Tensor, StepLosses]:
        """Total generator objective (eq. 5, adversarial terms as in eq. 1) and its parts."""
        config = self.config
        losses = StepLosses()
        total = gan_loss(self.models.d_y(out.prediction), True, config.gan_loss)
        losses.adversarial_x = total.item()
        if self.has["C"]:
            assert self.models.d_x is not None
            adversarial_y = gan_loss(self.models.d_x(self._d_x_fake(out)), True, config.gan_loss)
            weight = None
            if self.has["M"]:
                weight = defect_weight(out.prediction, config.mask_mode, not config.mask_grad)
            cycle_image, cycle_mask = dynamic_masked_cycle_loss(
                batch.defective, out.recovered, weight, batch.mask, out.mask_recovered
            )
            total = total + adversarial_y + config.lambda_cycle * (cycle_image + cycle_mask)
            losses.adversarial_y = adversarial_y.item()
            losses.cycle_image = cycle_image.item()
            losses.cycle_mask = cycle_mask.item()
        if self.has["S"]:
            pattern = scaled_pattern_loss(out.normal_prediction, invisible_pattern(batch.normal))
            total = total + config.lambda_pattern * pattern
            losses.pattern = pattern.item()
        losses.generator_total = total.item()
        return total, losses

    def discriminator_losses(self, batch: Batch, out: Forward) -> tuple[Tensor, float, float]:
        """Least-squares or log loss of ``D_Y`` (and ``D_X``) on real vs pooled fakes."""
        kind = self.config.gan_loss
        fake_mask = self.pool_y.query(out.prediction.detach(), self.sampler)
        loss_y = 0.5 * (
            gan_loss(self.models.d_y(batch.mask), True, kind)
            + gan_loss(self.models.d_y(fake_mask), False, kind)
        )
        total = loss_y
        loss_x = torch.zeros(())
        if self.has["C"]:
            assert self.models.d_x is not None
            fake_image = self.pool_x.query(self._d_x_fake(out).detach(), self.sampler)
            loss_x = 0.5 * (
                gan_loss(self.models.d_x(batch.defective), True, kind)
                + gan_loss(self.models.d_x(fake_image), False, kind)
            )
            total = total + loss_x
        return total, loss_y.item(), loss_x.item()

    def _d_x_fake(self, out: Forward) -> Tensor:
        fake = out.translated if self.config.d_x_input == "translated" else out.recovered
        assert fake is not None
        return fake

    def step(self) -> StepLosses:
        """One optimiser step of the generators, then one of the discriminators."""
        self.models.train()
        batch = self.next_batch()
        out = self.forward(batch)

        _set_requires_grad(self.models.discriminators(), False)
        self.optimizer_g.zero_grad(set_to_none=True)
        total, losses = self.generator_losses(batch, out)
        total.backward()
        self.optimizer_g.step()

        _set_requires_grad(self.models.discriminators(), True)
        self.optimizer_d.zero_grad(set_to_none=True)
        d_total, losses.discriminator_y, losses.discriminator_x = self.discriminator_losses(
            batch, out
        )
        d_total.backward()
        self.optimizer_d.step()

        self.iteration += 1
        return losses

    # --- inference -----------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Raw ``G_X`` output ``B x 3 x S x S`` for images ``B x 3 x S x S`` in [0, 1]."""
        was_training = self.models.g_x.training
        self.models.g_x.eval()
        try:
            return self.models.g_x(to_network_range(images.to(self.device)))
        finally:
            self.models.g_x.train(was_training)

    # --- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly."""
        return {
            "fingerprint": self.config.fingerprint(),
            "seed": self.seed,
            "iteration": self.iteration,
            "models": self.models.state_dict(),
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "sampler": self.sampler.get_state(),
            "order": self.order.clone(),
            "pool_y": [t.cpu() for t in self.pool_y.items],
            "pool_x": [t.cpu() for t in self.pool_x.items],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the synthetic set is rebuilt from the seed."""
        if state["fingerprint"] != self.config.fingerprint() or state["seed"] != self.seed:
            message = (
                "checkpoint was written with another configuration or seed "
                f"(fingerprint {state['fingerprint']}, seed {state['seed']}; expected "
                f"{self.config.fingerprint()}, seed {self.seed})"
            )
            raise ValueError(message)
        self.iteration = int(state["iteration"])
        self.models.load_state_dict(state["models"])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        self.sampler.set_state(state["sampler"])
        self.order = state["order"].clone()
        self.pool_y.items = [t.to(self.device) for t in state["pool_y"]]
        self.pool_x.items = [t.to(self.device) for t in state["pool_x"]]
        self.synthetic = None
        self.regeneration = -1

    def save_checkpoint(self, path: Path) -> None:
        """Write :meth:`state_dict` atomically (temporary file, then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), temporary)
        os.replace(temporary, path)

    def try_resume(self, path: Path) -> bool:
        """Continue from the checkpoint at ``path`` if it fits this run; say whether it did."""
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        try:
            self.load_state_dict(state)
        except ValueError as error:
            logger.warning("ignoring checkpoint %s: %s", path, error)
            return False
        logger.info("resumed from %s at iteration %d", path, self.iteration)
        return True

    def train(
        self,
        checkpoint_path: Path | None,
        checkpoint_seconds: float = 300.0,
        progress: Callable[[int, int, str], None] | None = None,
        until: int | None = None,
    ) -> list[StepLosses]:
        """Run iterations up to ``until`` (default: the whole schedule).

        A checkpoint is written every ``checkpoint_seconds``, at the end, and when an
        exception raised between two iterations (for example by ``progress``, which is how
        a caller stops training cleanly) ends the call, so nothing finished is lost.

        Returns:
            The losses of the iterations run by this call.
        """
        until = self.config.iterations if until is None else min(until, self.config.iterations)
        history: list[StepLosses] = []
        last_save = time.monotonic()
        in_step = False
        try:
            while self.iteration < until:
                in_step = True
                losses = self.step()
                in_step = False
                history.append(losses)
                if checkpoint_path is not None and (
                    time.monotonic() - last_save >= checkpoint_seconds
                ):
                    self.save_checkpoint(checkpoint_path)
                    last_save = time.monotonic()
                if progress is not None:
                    progress(self.iteration, self.config.iterations, "train samples-masks-gan")
        finally:
            # NOTE: a step cut short leaves half-updated state; the last checkpoint stays.
            if checkpoint_path is not None and not in_step:
                self.save_checkpoint(checkpoint_path)
        return history


def _set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    for module in modules:
        for parameter in module.parameters():
            parameter.requires_grad_(flag)
