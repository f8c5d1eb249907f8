"""The paper's GAN localizer ("ours"): defective images are translated into masks.

Lin et al., "Exploring the Relationship between Samples and Masks for Robust Defect
Localization", AAAI 2025. This module is the harness adapter; the model, losses, synthesis
and training loop live in the sibling modules.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.method import METHODS, FitContext, Method
from methods._options import explicit_options
from methods.ours.losses import GAN_LOSSES, MASK_MODES, prediction_to_map
from methods.ours.networks import ResnetGenerator
from methods.ours.sources import BUILTIN, TextureBank
from methods.ours.synthesis import OpacitySchedule
from methods.ours.training import (
    CHECKPOINT_NAME,
    COMPONENTS,
    D_X_INPUTS,
    TrainConfig,
    Trainer,
)

logger = logging.getLogger(__name__)

MODEL_FILE = "samples-masks-gan.pt"
NATIVE_THRESHOLD = 0.5
OPACITY_MODES = ("pos", "random")

PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    # smoke scale: proves every component runs; not expected to localise defects
    "quick": {
        "image_size": 64,
        "width": 8,
        "blocks": 2,
        "iterations": 300,
        "samples": 30,
        "regenerations": 5,
        "pool_size": 10,
        "checkpoint_minutes": 2.0,
    },
    # the longest schedule practical on two CPU cores: about 1 h per class when the
    # machine is otherwise idle (10.8 it/s measured), 20 regenerations as in the paper
    "cpu": {
        "image_size": 64,
        "width": 16,
        "blocks": 6,
        "iterations": 40_000,
        "samples": 200,
        "regenerations": 20,
        "pool_size": 50,
        "checkpoint_minutes": 3.0,
    },
    # the paper: 256 px, 1000 epochs of 300 samples at batch 1, regenerated every 50 epochs
    "paper": {
        "image_size": 256,
        "width": 64,
        "blocks": 9,
        "iterations": 300_000,
        "samples": 300,
        "regenerations": 20,
        "pool_size": 50,
        "checkpoint_minutes": 5.0,
    },
}

COMMON_DEFAULTS: dict[str, Any] = {
    "components": "G.S.C.M",
    "opacity": "pos",
    "loss": "lsgan",
    "mask": "soft",
    "mask_grad": False,
    "d_x_input": "translated",
    "lambda_cycle": 10.0,
    "lambda_pattern": 0.4,
    "anomaly_source": BUILTIN,
}


def parse_components(text: str) -> tuple[str, ...]:
    """``"G.S.C"`` -> ``("G", "S", "C")`` in canonical order; errors name the problem."""
    letters = [part.strip().upper() for part in text.split(".") if part.strip()]
    unknown = [letter for letter in letters if letter not in COMPONENTS]
    if unknown:
        message = (
            f"components={text!r}: unknown component(s) {', '.join(unknown)}; expected letters "
            "from G, S, C, M joined by dots, e.g. G.S.C.M"
        )
        raise ValueError(message)
    if len(set(letters)) != len(letters):
        raise ValueError(f"components={text!r}: a component is repeated")
    if "G" not in letters:
        raise ValueError(f"components={text!r}: G (the adversarial core) is always required")
    if "M" in letters and "C" not in letters:
        message = f"components={text!r}: M (dynamic mask) needs C (the cycle it masks)"
        raise ValueError(message)
    return tuple(letter for letter in COMPONENTS if letter in letters)


def parse_opacity(text: str) -> OpacitySchedule:
    """``pos``, ``random`` or a number in (0, 1] -> :class:`OpacitySchedule`."""
    lowered = text.strip().lower()
    if lowered in OPACITY_MODES:
        return OpacitySchedule(mode=lowered)
    try:
        value = float(lowered)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        message = f"opacity={text!r}: expected pos, random or a number in (0, 1] such as 0.5"
        raise ValueError(message)
    return OpacitySchedule(mode="fixed", value=value)


@dataclass(frozen=True)
class SamplesMasksOptions:
    """User options of the GAN method; ``None`` means the profile's default.

    Attributes:
        components: Enabled parts for ablations, letters from G (adversarial core, always),
            S (scaled pattern), C (cycle), M (dynamic mask, needs C) joined by dots.
        opacity: ``pos`` (progressive, default), ``random`` (uniform 0.1-0.9) or a fixed
            number such as 0.5.
        loss: Adversarial loss, ``lsgan`` (default) or ``bce`` (the log loss of eq. 1).
        image_size: Training and inference side in pixels (multiple of 4, at least 32).
        width: Generator and discriminator base width.
        blocks: Residual blocks per generator.
        iterations: Training iterations (batch size 1).
        samples: Synthetic defective images per regeneration.
        regenerations: Regenerations of the synthetic set over the run.
        mask: Dynamic mask ``soft`` (default) or ``hard``.
        mask_grad: Let gradients flow through the soft dynamic mask (default false).
        d_x_input: What D_X judges: ``translated`` G_Y(y) (eq. 5, default) or
            ``recovered`` G_Y(G_X(x)).
        pool_size: Past fakes kept for discriminator updates (0 disables the pool).
        lambda_cycle: Cycle loss weight (paper: 10).
        lambda_pattern: Scaled pattern loss weight (paper: 0.4).
        anomaly_source: ``builtin``, ``procedural`` or a folder of texture images (DTD).
        checkpoint_minutes: Minutes between checkpoints in the scratch folder.
    """

    components: str | None = None
    opacity: str | None = None
    loss: str | None = None
    image_size: int | None = None
    width: int | None = None
    blocks: int | None = None
    iterations: int | None = None
    samples: int | None = None
    regenerations: int | None = None
    mask: str | None = None
    mask_grad: bool | None = None
    d_x_input: str | None = None
    pool_size: int | None = None
    lambda_cycle: float | None = None
    lambda_pattern: float | None = None
    anomaly_source: str | None = None
    checkpoint_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.components is not None:
            parse_components(self.components)
        if self.opacity is not None:
            parse_opacity(self.opacity)
        _check_choice("loss", self.loss, GAN_LOSSES)
        _check_choice("mask", self.mask, MASK_MODES)
        _check_choice("d_x_input", self.d_x_input, D_X_INPUTS)
        if self.image_size is not None and (self.image_size < 32 or self.image_size % 4):
            message = f"image_size={self.image_size}: expected a multiple of 4, at least 32"
            raise ValueError(message)
        for name in ("width", "iterations", "samples", "regenerations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value}: expected a positive integer")
        for name in ("blocks", "pool_size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}={value}: expected an integer >= 0")
        for name in ("lambda_cycle", "lambda_pattern"):
            value = getattr(self, name)
            if value is not None and not value >= 0.0:
                raise ValueError(f"{name}={value}: expected a number >= 0")
        if self.checkpoint_minutes is not None and not self.checkpoint_minutes > 0.0:
            message = f"checkpoint_minutes={self.checkpoint_minutes}: expected a number > 0"
            raise ValueError(message)
        if self.anomaly_source is not None and not self.anomaly_source.strip():
            message = "anomaly_source='': expected builtin, procedural or a folder of images"
            raise ValueError(message)


def _check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")


@METHODS.register(
    "samples-masks-gan",
    aliases=("ours",),
    description="GAN translating defective images into masks, trained without ground truth "
    "(Lin et al., AAAI 2025)",
)
class SamplesMasksGAN(Method):
    """Defect localisation by unpaired image-to-mask translation (the paper's method).

    ``G_X`` maps an image to a mask in [-1, 1]; the anomaly map is its channel mean mapped
    to [0, 1], so 0.5 is the native threshold. Training uses only normal images: defects
    are synthesised, and the masks shown to the discriminator are unrelated to them.
    """

    name = "samples-masks-gan"
    description = "GAN translating defective images into masks, trained without ground truth"
    citation = (
        "Lin, J., Xue, H., Sun, F., Yan, Y. Exploring the Relationship between Samples and "
        "Masks for Robust Defect Localization. AAAI 2025."
    )
    needs_pretrained = False
    profiles = ("quick", "cpu", "paper")
    Options = SamplesMasksOptions

    def __init__(self, profile: str = "quick", options: Any | None = None) -> None:
        super().__init__(profile, options)
        self.settings = resolve_settings(profile, self.options)
        self.config = build_config(self.settings)
        self.generator: ResnetGenerator | None = None
        self.trainer: Trainer | None = None
        self.source_description: str | None = None
        self.fit_info: dict[str, Any] = {}

    def fit(self, normal_images: torch.Tensor, context: FitContext) -> None:
        """Train on normal images ``N x 3 x H x W`` in [0, 1]; resumes from scratch_dir."""
        if normal_images.ndim != 4 or normal_images.shape[1] != 3 or normal_images.shape[0] < 1:
            message = (
                f"normal_images: expected N x 3 x H x W with N >= 1, got "
                f"{tuple(normal_images.shape)}"
            )
            raise ValueError(message)
        self.device = context.device
        size = self.config.image_size
        images = _resize(normal_images.float().cpu(), size)  # N x 3 x S x S
        bank = TextureBank(self.settings["anomaly_source"])
        self.source_description = bank.description
        self.trainer = Trainer(self.config, images, bank, context.seed, context.device)
        self.generator = self.trainer.models.g_x

        checkpoint = Path(context.scratch_dir) / CHECKPOINT_NAME
        resumed = self.trainer.try_resume(checkpoint)
        start_iteration = self.trainer.iteration
        logger.info(
            "training %s (%s profile) for %d iterations at %d px on %s",
            self.name,
            self.profile,
            self.config.iterations,
            size,
            context.device,
        )
        started = time.perf_counter()
        history = self.trainer.train(
            checkpoint,
            checkpoint_seconds=60.0 * self.settings["checkpoint_minutes"],
            progress=context.progress,
        )
        seconds = time.perf_counter() - started
        run = self.trainer.iteration - start_iteration
        self.fit_info = {
            "resumed_at": start_iteration if resumed else None,
            "iterations_run": run,
            "seconds": round(seconds, 2),
            "iterations_per_second": round(run / seconds, 3) if seconds > 0 and run else None,
            "last_losses": history[-1].as_dict() if history else None,
        }
        logger.info("trained %d iterations in %.1f s", run, seconds)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``B x S x S`` in [0, 1] for images ``B x 3 x H x W`` in [0, 1]."""
        if self.generator is None:
            raise RuntimeError(f"{self.name}: predict() called before fit() or load()")
        if images.ndim != 4 or images.shape[1] != 3:
            message = f"images: expected B x 3 x H x W, got {tuple(images.shape)}"
            raise ValueError(message)
        was_training = self.generator.training
        self.generator.eval()
        maps = []
        try:
            for chunk in images.split(8):
                resized = _resize(chunk.float().to(self.device), self.config.image_size)
                prediction = self.generator(resized * 2.0 - 1.0)  # B x 3 x S x S
                maps.append(prediction_to_map(prediction))
        finally:
            self.generator.train(was_training)
        return torch.cat(maps).float().cpu()

    @property
    def native_threshold(self) -> float | None:
        """0.5 on the [0, 1] map: halfway between the normal and defect mask values."""
        return NATIVE_THRESHOLD

    def save(self, directory: Path) -> None:
        """Write ``G_X`` (all inference needs) and the resolved configuration."""
        if self.generator is None:
            raise RuntimeError(f"{self.name}: save() called before fit() or load()")
        payload = {
            "settings": self.settings,
            "profile": self.profile,
            "generator": {k: v.cpu() for k, v in self.generator.state_dict().items()},
            "source_description": self.source_description,
            "fit_info": self.fit_info,
        }
        torch.save(payload, Path(directory) / MODEL_FILE)

    def load(self, directory: Path) -> None:
        """Restore a model written by :meth:`save` (its own settings win)."""
        path = Path(directory) / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: no saved model at {path}")
        payload = torch.load(path, map_location="cpu", weights_only=False)
        if payload["settings"] != self.settings:
            logger.warning("%s: loading a model trained with other settings (%s)", self.name, path)
        self.settings = payload["settings"]
        self.config = build_config(self.settings)
        generator = ResnetGenerator(3, 3, self.config.width, self.config.blocks)
        generator.load_state_dict(payload["generator"])
        self.generator = generator.to(self.device)
        self.source_description = payload.get("source_description")
        self.fit_info = payload.get("fit_info", {})

    def to(self, device: torch.device) -> SamplesMasksGAN:
        """Move ``G_X`` to ``device``."""
        self.device = torch.device(device)
        if self.generator is not None:
            self.generator.to(self.device)
        return self

    def describe(self) -> dict[str, Any]:
        """Backbone (none), resolved settings, anomaly sources and, for quick, a caveat."""
        settings = dict(self.settings)
        note = (
            f"trained from scratch, {settings['iterations']} iterations at "
            f"{settings['image_size']} px, components {settings['components']}, opacity "
            f"{settings['opacity']}, {settings['loss']} loss"
        )
        if self.profile == "quick":
            note = (
                "quick profile: smoke-scale schedule that proves the pipeline runs (finite "
                "losses, every component active); it is not expected to localise defects. "
            ) + note
        return {
            "backbone": None,
            "pretrained": None,
            "weights": "trained from scratch (no pretrained weights)",
            "note": note,
            "anomaly_source": self.source_description or settings["anomaly_source"],
            "settings": settings,
            "fit": self.fit_info,
        }


def resolve_settings(profile: str, options: SamplesMasksOptions) -> dict[str, Any]:
    """Profile defaults overridden by every option the user set (``None`` = unset)."""
    settings = {**COMMON_DEFAULTS, **PROFILE_DEFAULTS[profile], **explicit_options(options)}
    settings["components"] = ".".join(parse_components(settings["components"]))
    return settings


def build_config(settings: dict[str, Any]) -> TrainConfig:
    """The training configuration of resolved settings."""
    return TrainConfig(
        image_size=settings["image_size"],
        width=settings["width"],
        blocks=settings["blocks"],
        iterations=settings["iterations"],
        samples=settings["samples"],
        regenerations=settings["regenerations"],
        components=parse_components(settings["components"]),
        opacity=parse_opacity(str(settings["opacity"])),
        gan_loss=settings["loss"],
        lambda_cycle=settings["lambda_cycle"],
        lambda_pattern=settings["lambda_pattern"],
        mask_mode=settings["mask"],
        mask_grad=settings["mask_grad"],
        d_x_input=settings["d_x_input"],
        pool_size=settings["pool_size"],
    )


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of ``B x 3 x H x W`` to ``B x 3 x size x size``."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    resized = F.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.clamp(0.0, 1.0)
