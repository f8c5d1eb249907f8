"""Reverse distillation (RD4AD, Deng & Li, CVPR 2022) as a DefectBench method.

The adapter owns options, profiles, the fixed-epoch training loop, checkpoints and
save/load; the networks live in :mod:`methods._reverse_distillation`. ``rrd`` (RD++)
extends this class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from bench.method import METHODS, FitContext, Method
from methods._backbones import (
    BackboneInfo,
    load_feature_extractor,
    rebuild_feature_extractor,
)
from methods._options import (
    check_at_least,
    check_choices,
    check_non_negative,
    check_positive,
    explicit_options,
)
from methods._reverse_distillation import (
    DISTILLATION_LOSSES,
    MAP_MODES,
    ReverseDistillationNet,
    ReverseDistillationStudent,
    anomaly_map,
    check_pyramid,
    count_parameters,
    distillation_loss,
)
from methods.patchcore.model import gaussian_blur

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TEACHER_LAYERS = ("layer1", "layer2", "layer3")
ADAM_BETAS = (0.5, 0.999)

# The official training script: wide_resnet50_2 teacher, 256 px, Adam(lr 0.005, betas 0.5 and
# 0.999), 200 epochs of batch 16, flattened cosine loss; maps added over scales and smoothed
# with sigma 4 at 256 px. The teacher is torchvision's ImageNet checkpoint, which timm names
# with the tv_in1k tag (its untagged default is another training recipe).
_PAPER_DEFAULTS: dict[str, Any] = {
    "backbone": "wide_resnet50_2.tv_in1k",
    "image_size": 256,
    "epochs": 200,
    "batch_size": 16,
    "lr": 0.005,
    "decoder_width": 2,
    "sigma": 4.0,
    "loss": "flat",
    "map_mode": "add",
    "checkpoint_minutes": 10.0,
}

RD_PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": _PAPER_DEFAULTS,
    # About a minute per class on 2 CPU cores: the small pretrained EfficientNet-Lite0 teacher
    # (whose weights ship with a pip package), a student of ResNet-50 width, 128 px (sigma
    # scaled to keep 4 px at 256 px), batches of 8, few epochs.
    "quick": {
        **_PAPER_DEFAULTS,
        "backbone": "tf_efficientnet_lite0",
        "image_size": 128,
        "epochs": 12,
        "batch_size": 8,
        "decoder_width": 1,
        "sigma": 2.0,
        "checkpoint_minutes": 2.0,
    },
}


@dataclass(frozen=True)
class ReverseDistillationOptions:
    """User-settable knobs; ``None`` means the profile's default.

    Attributes:
        backbone: timm name of the pretrained teacher (offline it falls back to
            EfficientNet-Lite0, see ``describe()``).
        image_size: Side, in pixels, images are resized to; a multiple of 8 x the
            teacher's first stride (32 for ResNets).
        epochs: Training epochs; training always runs all of them (no model selection).
        batch_size: Images per optimiser step.
        lr: Adam learning rate of the bottleneck and decoder.
        decoder_width: Inner width of the student's residual blocks relative to ResNet-50
            (2 = wide, as the original).
        sigma: Gaussian smoothing of the map, in pixels at ``image_size`` (0: none).
        loss: ``flat`` (the official code: cosine of whole flattened maps) or ``pixel``
            (the paper's Eq. 2: cosine per position, averaged).
        map_mode: ``add`` (the official evaluation) or ``multiply`` the per-scale maps.
        checkpoint_minutes: Minutes between training checkpoints in the scratch folder.
        allow_fallback: Use the bundled EfficientNet-Lite0 when ``backbone``'s pretrained
            weights cannot be loaded.
        allow_random_backbone: For tests only: accept random teacher weights as a last
            resort (recorded as ``pretrained=False``).
    """

    backbone: str | None = None
    image_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    decoder_width: int | None = None
    sigma: float | None = None
    loss: str | None = None
    map_mode: str | None = None
    checkpoint_minutes: float | None = None
    allow_fallback: bool = True
    allow_random_backbone: bool = False

    def __post_init__(self) -> None:
        if self.backbone is not None and not self.backbone.strip():
            raise ValueError("option backbone: expected a timm model name, got an empty string")
        check_at_least(self, {"image_size": 64, "epochs": 1, "batch_size": 1, "decoder_width": 1})
        check_positive(self, ("lr", "checkpoint_minutes"))
        check_non_negative(self, ("sigma",))
        check_choices(self, {"loss": DISTILLATION_LOSSES, "map_mode": MAP_MODES})


@METHODS.register(
    "rd",
    description="Reverse distillation: a student decoder restores a frozen teacher's features",
    aliases=("rd4ad",),
)
class ReverseDistillation(Method):
    """RD4AD behind the benchmark's method interface.

    ``fit`` trains the one-class bottleneck and student decoder for a fixed number of epochs
    to restore the frozen pretrained teacher's three feature maps of normal images;
    ``predict`` maps ``1 - cos`` between teacher and student features, summed over scales,
    upsampled and smoothed. It has no threshold of its own.
    """

    name = "rd"
    description = "Reverse distillation: a student decoder restores a frozen teacher's features"
    citation = (
        "Deng, Li. Anomaly Detection via Reverse Distillation from One-Class Embedding. CVPR 2022."
    )
    needs_pretrained = True
    profiles = ("quick", "paper")
    Options = ReverseDistillationOptions
    profile_defaults: ClassVar[dict[str, dict[str, Any]]] = RD_PROFILE_DEFAULTS

    def __init__(
        self, profile: str = "quick", options: ReverseDistillationOptions | None = None
    ) -> None:
        super().__init__(profile, options)
        self.net: ReverseDistillationNet | None = None
        self.backbone_info: BackboneInfo | None = None
        self._backbone_seed: int | None = None
        self.final_loss: float | None = None

    # --- resolved configuration -----------------------------------------------------------

    def resolved(self) -> dict[str, Any]:
        """Every option with ``None`` replaced by the profile's default."""
        return {**self.profile_defaults[self.profile], **explicit_options(self.options)}

    # --- hooks that RD++ overrides --------------------------------------------------------

    def build_adapter(self, channels: list[int]) -> nn.Module | None:
        """Module between teacher and bottleneck; RD4AD has none."""
        return None

    def make_optimizers(self, net: ReverseDistillationNet) -> list[torch.optim.Optimizer]:
        """One Adam over bottleneck and decoder, as the official code."""
        values = self.resolved()
        return [torch.optim.Adam(net.student.parameters(), lr=values["lr"], betas=ADAM_BETAS)]

    def training_step(
        self,
        net: ReverseDistillationNet,
        normal_images: torch.Tensor,
        optimizers: list[torch.optim.Optimizer],
        batch_index: int,
        generator: torch.Generator,
    ) -> float:
        """One optimiser step on ``B x 3 x S x S`` normal images; returns the loss."""
        teacher_maps, student_maps = net(normal_images)
        loss = distillation_loss(teacher_maps, student_maps, self.resolved()["loss"])
        step_optimizers(optimizers, loss)
        return float(loss.detach())

    # --- the method interface -------------------------------------------------------------

    def fit(self, normal_images: torch.Tensor, context: FitContext) -> None:
        """Train on normal images ``N x 3 x H x W`` in [0, 1] for the configured epochs.

        A checkpoint in ``context.scratch_dir`` from the same configuration, seed and
        images is resumed; training never looks at test data.
        """
        _check_images(normal_images, "normal_images")
        values = self.resolved()
        teacher = load_feature_extractor(
            values["backbone"],
            TEACHER_LAYERS,
            allow_fallback=values["allow_fallback"],
            allow_random=values["allow_random_backbone"],
            random_seed=context.seed,
        )
        check_pyramid(teacher.reductions, values["image_size"], f"{self.name} option image_size")
        self.backbone_info = teacher.info
        self._backbone_seed = context.seed
        self.device = torch.device(context.device)
        net = self._build_net(teacher, context.seed).to(self.device)
        optimizers = self.make_optimizers(net)
        images = _resize(normal_images.float(), values["image_size"])
        generator = torch.Generator().manual_seed(context.seed)
        logger.info(
            "fitting %s (%s profile, teacher %s, %d student parameters) on %d images",
            self.name,
            self.profile,
            teacher.info.used,
            sum(count_parameters(m) for m in net.trainable_modules()),
            images.shape[0],
        )

        checkpoint = Path(context.scratch_dir) / f"{self.name}-checkpoint.pt"
        fingerprint = self._fingerprint(images, context.seed)
        first_epoch = _try_resume(checkpoint, fingerprint, net, optimizers, generator)
        last_save = time.monotonic()
        epochs, batch_size = values["epochs"], values["batch_size"]
        for epoch in range(first_epoch, epochs):
            net.train()
            order = torch.randperm(images.shape[0], generator=generator)
            losses = []
            for batch_index, start in enumerate(range(0, images.shape[0], batch_size)):
                batch = images[order[start : start + batch_size]].to(self.device)
                losses.append(self.training_step(net, batch, optimizers, batch_index, generator))
            self.final_loss = sum(losses) / len(losses)
            logger.debug("%s epoch %d/%d: loss %.4f", self.name, epoch + 1, epochs, self.final_loss)
            context.progress(epoch + 1, epochs, f"{self.name} epoch {epoch + 1}/{epochs}")
            due = time.monotonic() - last_save >= 60.0 * values["checkpoint_minutes"]
            if due and epoch + 1 < epochs:
                _write_checkpoint(checkpoint, fingerprint, epoch + 1, net, optimizers, generator)
                last_save = time.monotonic()
        net.eval()
        self.net = net
        logger.info("%s trained %d epochs, last epoch loss %s", self.name, epochs, self.final_loss)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``B x S x S`` (``S = image_size``) for ``B x 3 x H x W`` in [0, 1]."""
        net = self._fitted_net()
        _check_images(images, "images")
        values = self.resolved()
        size = values["image_size"]
        with torch.no_grad():
            batch = _resize(images.float().to(self.device), size)
            teacher_maps, student_maps = net(batch)
            maps = anomaly_map(teacher_maps, student_maps, size, values["map_mode"])
            maps = gaussian_blur(maps, values["sigma"])
        return maps.float().cpu()

    def save(self, directory: Path) -> None:
        """Write the trained weights and the configuration (not the teacher's weights)."""
        net = self._fitted_net()
        directory = Path(directory)
        state = {
            f"module{index}": module.state_dict()
            for index, module in enumerate(net.trainable_modules())
        }
        torch.save(state, directory / self._weights_file)
        config = {
            "format_version": FORMAT_VERSION,
            "method": self.name,
            "profile": self.profile,
            "options": dataclasses.asdict(self.options),
            "resolved": self.resolved(),
            "backbone": self.backbone_info.as_dict() if self.backbone_info else None,
            "backbone_seed": self._backbone_seed,
            "final_loss": self.final_loss,
        }
        (directory / self._config_file).write_text(json.dumps(config, indent=2) + "\n")

    def load(self, directory: Path) -> None:
        """Restore a model written by :meth:`save`; the teacher is loaded again by name."""
        directory = Path(directory)
        config = self._read_config(directory / self._config_file)
        options = self.Options(**config["options"])
        if config["profile"] != self.profile or options != self.options:
            logger.warning(
                "%s: saved with profile %s and %s; using those instead of %s and %s",
                directory,
                config["profile"],
                options,
                self.profile,
                self.options,
            )
        weights_path = directory / self._weights_file
        if not weights_path.is_file():
            raise FileNotFoundError(f"{weights_path}: {self.name} weights missing (see save())")
        self.profile = config["profile"]
        self.options = options
        info = BackboneInfo(**config["backbone"])
        teacher = rebuild_feature_extractor(
            info, TEACHER_LAYERS, random_seed=config["backbone_seed"]
        )
        net = self._build_net(teacher, seed=0)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        modules = net.trainable_modules()
        if sorted(state) != [f"module{index}" for index in range(len(modules))]:
            message = (
                f"{weights_path}: holds {sorted(state)}, expected {len(modules)} modules "
                f"for {self.name}"
            )
            raise ValueError(message)
        for index, module in enumerate(modules):
            module.load_state_dict(state[f"module{index}"])
        self.backbone_info = info
        self._backbone_seed = config["backbone_seed"]
        self.final_loss = config.get("final_loss")
        self.net = net.to(self.device).eval()

    def describe(self) -> dict[str, Any]:
        """Teacher provenance for the report; fallback and random weights are marked."""
        values = self.resolved()
        info = self.backbone_info
        facts: dict[str, Any] = {
            "backbone": info.used if info else values["backbone"],
            "requested_backbone": values["backbone"],
            "pretrained": info.pretrained if info else None,
            "weights": info.weights if info else None,
            "fallback": info.fallback if info else None,
            "epochs": values["epochs"],
            "image_size": values["image_size"],
        }
        notes = [] if info else ["not fitted yet"]
        if info and info.fallback:
            notes.append(
                f"offline fallback teacher: {info.used} instead of {info.requested}; "
                "figures are not comparable with the original backbone"
            )
        if info and not info.pretrained:
            notes.append("RANDOM teacher weights (test setting); not a real result")
        facts["note"] = "; ".join(notes)
        return facts

    def to(self, device: torch.device) -> ReverseDistillation:
        """Move teacher, student and adapter to ``device``."""
        self.device = torch.device(device)
        if self.net is not None:
            self.net = self.net.to(self.device)
        return self

    # --- helpers --------------------------------------------------------------------------

    @property
    def _config_file(self) -> str:
        return f"{self.name}.json"

    @property
    def _weights_file(self) -> str:
        return f"{self.name}-weights.pt"

    def _build_net(self, teacher: nn.Module, seed: int) -> ReverseDistillationNet:
        values = self.resolved()
        channels = list(teacher.channels)
        # The student's initial weights come from the run seed, not from the global generator.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            student = ReverseDistillationStudent(channels, values["decoder_width"])
            adapter = self.build_adapter(channels)
        return ReverseDistillationNet(teacher, student, adapter)

    def _fingerprint(self, images: torch.Tensor, seed: int) -> str:
        facts = {
            "method": self.name,
            "resolved": self.resolved(),
            "seed": seed,
            "teacher": self.backbone_info.as_dict() if self.backbone_info else None,
            "images": list(images.shape),
            "image_sum": round(float(images.double().sum()), 6),
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]

    def _fitted_net(self) -> ReverseDistillationNet:
        if self.net is None:
            message = f"{self.name} has no trained student yet; call fit() or load() first"
            raise RuntimeError(message)
        return self.net

    def _read_config(self, path: Path) -> dict[str, Any]:
        if not path.is_file():
            message = f"{path}: no saved {self.name} model here (expected {self._config_file})"
            raise FileNotFoundError(message)
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        version = config.get("format_version") if isinstance(config, dict) else None
        if version != FORMAT_VERSION:
            message = f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}"
            raise ValueError(message)
        if config.get("method") != self.name:
            message = f"{path}: written by method {config.get('method')!r}, not {self.name!r}"
            raise ValueError(message)
        return config


def step_optimizers(optimizers: list[torch.optim.Optimizer], loss: torch.Tensor) -> None:
    """Clear the gradients, back-propagate ``loss`` and step every optimiser."""
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)


def _try_resume(
    path: Path,
    fingerprint: str,
    net: ReverseDistillationNet,
    optimizers: list[torch.optim.Optimizer],
    generator: torch.Generator,
) -> int:
    """Load the checkpoint at ``path`` when it belongs to this run; return the next epoch."""
    if not path.is_file():
        return 0
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != fingerprint:
            raise ValueError("written with another configuration, seed or training set")
        for module, module_state in zip(net.trainable_modules(), state["modules"], strict=True):
            module.load_state_dict(module_state)
        for optimizer, optimizer_state in zip(optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(optimizer_state)
        generator.set_state(state["generator"])
    except Exception as error:  # noqa: BLE001 - a damaged or foreign checkpoint: start over
        logger.warning("ignoring checkpoint %s: %s", path, error)
        return 0
    logger.info("resuming from %s at epoch %d", path, state["epoch"])
    return int(state["epoch"])


def _write_checkpoint(
    path: Path,
    fingerprint: str,
    epoch: int,
    net: ReverseDistillationNet,
    optimizers: list[torch.optim.Optimizer],
    generator: torch.Generator,
) -> None:
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "modules": [module.state_dict() for module in net.trainable_modules()],
        "optimizers": [optimizer.state_dict() for optimizer in optimizers],
        "generator": generator.get_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)  # atomic: a killed run leaves the previous checkpoint intact


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a B x 3 x H x W tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        message = f"{name}: expected a non-empty B x 3 x H x W tensor, got {tuple(images.shape)}"
        raise ValueError(message)
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected floats in [0, 1], got dtype {images.dtype}")
