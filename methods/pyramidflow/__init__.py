"""PyramidFlow (Lei et al., CVPR 2023): pyramid normalising flow with a latent template.

The harness adapter: options per profile and per class, training, prediction, checkpoints.
The pure-torch flow lives in :mod:`methods.pyramidflow.model`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.datasets.mvtec_layout import MVTEC_OBJECTS
from bench.method import METHODS, FitContext, Method
from methods._backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneInfo,
    FeatureExtractor,
    load_feature_extractor,
    rebuild_feature_extractor,
)
from methods._options import changed_options, explicit_options
from methods.pyramidflow.model import (
    VOLUME_NORM_DIMS,
    PyramidFlowNet,
    SemiInvertibleProjection,
    pairwise_fourier_loss,
    template_difference,
)

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "pyramidflow.pt"
FORMAT_VERSION = 1
ENCODERS = ("resnet18", "none")

# Per-class choices of the official training script (MVTec AD class names).
_CLASS_LEVELS = {"metal_nut": 8, "carpet": 8, "transistor": 8, "screw": 2}
_CLASS_SVN = frozenset({"carpet", "grid", "bottle", "transistor"})


def _fail(name: str, value: object, expected: str) -> None:
    raise ValueError(f"pyramidflow option {name}={value!r} is invalid; expected {expected}")


def _validate(options: Options) -> None:
    """Check every field that is set (``None``: the profile's or the class's value).

    Raises:
        ValueError: Naming the first option whose value is invalid.
    """
    choices = {"encoder": ENCODERS, "volume_norm": tuple(VOLUME_NORM_DIMS)}
    for name, allowed in choices.items():
        value = getattr(options, name)
        if value is not None and value not in allowed:
            _fail(name, value, f"one of {', '.join(allowed)}")
    if options.backbone is not None and not options.backbone.strip():
        _fail("backbone", options.backbone, "a timm model name")
    lowest = {
        "image_size": 32,
        "channels": 3,
        "num_levels": 2,
        "num_stack": 1,
        "kernel_size": 1,
        "epochs": 1,
        "batch_size": 2,
    }
    reasons = {
        "channels": " (the projection of 3 colour channels must be invertible)",
        "batch_size": " (the loss compares image pairs)",
    }
    for name, minimum in lowest.items():
        value = getattr(options, name)
        if value is not None and value < minimum:
            _fail(name, value, f"an integer of at least {minimum}{reasons.get(name, '')}")
    if options.kernel_size is not None and options.kernel_size % 2 == 0:
        _fail("kernel_size", options.kernel_size, "an odd integer")
    if options.lr is not None and options.lr <= 0:
        _fail("lr", options.lr, "a positive number")


@dataclass(frozen=True)
class Options:
    """User-settable options of ``pyramidflow``; ``None`` means the profile's or class's value.

    Attributes:
        encoder: ``resnet18`` (frozen pretrained stem up to ``layer1``, the official
            default) or ``none`` (a fixed orthogonal 1x1 projection of the pixels).
        backbone: timm name of the encoder weights (``resnet18.tv_in1k``, torchvision's).
        image_size: Side images are resized to (official: 1024 with the encoder, 256
            without).
        channels: Flow channels without an encoder (with one, the encoder's channels).
        num_levels: Pyramid levels; ``None``: the official per-class choice (8 for
            carpet, metal_nut, transistor; 2 for screw; else 4).
        volume_norm: ``CVN`` or ``SVN``; ``None``: SVN for carpet, grid, bottle,
            transistor, else CVN.
        num_stack: Repetitions of the coupling pattern.
        kernel_size: Convolution size in the couplings.
        epochs: Passes over the training images.
        batch_size: Images per step (the loss compares every pair in a batch).
        lr: Adam learning rate.
        augment: Random flips and 90-degree rotations; ``None``: on for textures and
            unknown classes, off for MVTec AD object classes.
        class_name: Class whose official settings apply; ``None``: the class the harness
            names in the fit context, if any.
        allow_random_backbone: Accept untrained encoder weights when no pretrained ones
            load (tests only; recorded as ``pretrained=False``).
    """

    encoder: str | None = None
    backbone: str | None = None
    image_size: int | None = None
    channels: int | None = None
    num_levels: int | None = None
    volume_norm: str | None = None
    num_stack: int | None = None
    kernel_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    augment: bool | None = None
    class_name: str | None = None
    allow_random_backbone: bool | None = None

    def __post_init__(self) -> None:
        _validate(self)


# The official train.py defaults; image_size, num_levels, volume_norm, augment depend on
# the encoder or the class and are filled in by resolve_options.
_PAPER = Options(
    encoder="resnet18",
    backbone="resnet18.tv_in1k",
    channels=16,
    num_stack=4,
    kernel_size=7,
    epochs=15,
    batch_size=2,
    lr=2e-4,
    allow_random_backbone=False,
)

# About a minute on 2 CPU cores with ~30 training images at 256 px.
_QUICK = dataclasses.replace(_PAPER, image_size=256, num_stack=2, kernel_size=5, epochs=2)

_PROFILES = {"quick": _QUICK, "paper": _PAPER}


def resolve_options(profile: str, options: Options, class_name: str | None = None) -> Options:
    """Fill ``None`` fields from the profile, the encoder and the class; check every value.

    Args:
        profile: ``quick`` or ``paper``.
        options: What the user set.
        class_name: Class being trained, used when ``options.class_name`` is unset.

    Raises:
        ValueError: Naming the first option whose value is invalid.
    """
    values = {**dataclasses.asdict(_PROFILES[profile]), **explicit_options(options)}
    name = values["class_name"] or class_name
    values["class_name"] = name
    if values["image_size"] is None:
        values["image_size"] = 1024 if values["encoder"] == "resnet18" else 256
    if values["num_levels"] is None:
        values["num_levels"] = _CLASS_LEVELS.get(name or "", 4)
    if values["volume_norm"] is None:
        values["volume_norm"] = "SVN" if name in _CLASS_SVN else "CVN"
    if values["augment"] is None:
        values["augment"] = name not in MVTEC_OBJECTS
    stride = 4 if values["encoder"] == "resnet18" else 1
    if options.num_levels is None:
        # The class's level count may not fit a smaller image (quick: 8 levels need 512 px
        # with the encoder); keep as many as the image allows rather than refuse the class.
        fitting = values["num_levels"]
        while fitting > 2 and values["image_size"] % (stride * 2 ** (fitting - 1)):
            fitting -= 1
        if fitting != values["num_levels"]:
            logger.warning(
                "pyramidflow: class %s uses %d pyramid levels; %d fit image_size=%d",
                name,
                values["num_levels"],
                fitting,
                values["image_size"],
            )
            values["num_levels"] = fitting
    resolved = Options(**values)
    factor = stride * 2 ** (resolved.num_levels - 1)
    if resolved.image_size % factor:
        expected = (
            f"a multiple of {factor} ({resolved.num_levels} pyramid levels on features at "
            f"stride {stride}; class {resolved.class_name or 'unknown'})"
        )
        _fail("image_size", resolved.image_size, expected)
    return resolved


@METHODS.register(
    "pyramidflow",
    description="PyramidFlow: pyramid normalising flow, latent template difference",
)
class PyramidFlow(Method):
    """PyramidFlow localizer (Lei, Hu, Wang, Liu, CVPR 2023).

    Features of the frozen encoder are split into a Laplacian-like pyramid and mapped by
    volume-normalised pyramid couplings to latent levels. Training pulls the latents of
    normal images together (pairwise differences, Fourier loss); the anomaly map is the
    difference between a test image's latents and the mean training latents (the
    template), composed back across the pyramid levels.
    """

    name = "pyramidflow"
    description = "PyramidFlow: pyramid normalising flow, latent template difference"
    citation = (
        "Lei, Hu, Wang, Liu. PyramidFlow: High-Resolution Defect Contrastive Localization "
        "using Pyramid Normalizing Flow. CVPR 2023."
    )
    needs_pretrained = True
    profiles = ("quick", "paper")
    Options = Options

    def __init__(self, profile: str = "quick", options: Options | None = None) -> None:
        super().__init__(profile, options)
        self.config = resolve_options(profile, self.options)
        self.extractor: FeatureExtractor | None = None
        self.projection: SemiInvertibleProjection | None = None
        self.net: PyramidFlowNet | None = None
        self.template: list[torch.Tensor] = []
        self.losses: list[float] = []
        self._seed = 0

    # --- harness interface ------------------------------------------------------------

    def fit(self, normal_images: torch.Tensor, context: FitContext) -> None:
        """Train the flow on normal images, then store their mean latents as the template.

        Args:
            normal_images: ``N x 3 x H x W`` normal images in [0, 1], ``N >= batch_size``.
            context: Device, seed and progress callback; its ``class_name``, when set,
                selects the official per-class settings.
        """
        _check_images(normal_images, "normal_images")
        self.config = resolve_options(self.profile, self.options, context.class_name)
        config = self.config
        if normal_images.shape[0] < config.batch_size:
            message = (
                f"pyramidflow needs at least batch_size={config.batch_size} normal images, "
                f"got {normal_images.shape[0]}"
            )
            raise ValueError(message)
        self.device = context.device
        normal_images = self._resize(normal_images)  # once, so augmentation sees squares
        logger.info(
            "pyramidflow: %d levels, %s, augment=%s, class %s",
            config.num_levels,
            config.volume_norm,
            config.augment,
            config.class_name,
        )
        self._build(context.seed)
        generator = torch.Generator().manual_seed(context.seed)
        optimiser = torch.optim.Adam(
            self.net.parameters(), lr=config.lr, betas=(0.5, 0.9), eps=1e-4, weight_decay=1e-5
        )

        steps_per_epoch = normal_images.shape[0] // config.batch_size
        self.losses = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            for epoch in range(config.epochs):
                self.net.train()
                order = torch.randperm(normal_images.shape[0], generator=generator)
                epoch_losses = []
                for step in range(steps_per_epoch):
                    chosen = order[step * config.batch_size : (step + 1) * config.batch_size]
                    batch = normal_images[chosen]
                    if config.augment:
                        batch = _dihedral_augment(batch, generator)
                    latents = self.net(self._features(batch))
                    loss = pairwise_fourier_loss(latents, self.net.pyramid)
                    optimiser.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.net.parameters(), max_norm=1.0)
                    optimiser.step()
                    epoch_losses.append(float(loss.detach()))
                    context.progress(
                        epoch * steps_per_epoch + step + 1,
                        config.epochs * steps_per_epoch,
                        "pyramidflow: training",
                    )
                self.losses.append(sum(epoch_losses) / len(epoch_losses))
                logger.debug("pyramidflow: epoch %d, loss %.4f", epoch, self.losses[-1])
        self.template = self._mean_latents(normal_images)
        logger.info("pyramidflow: trained, last epoch loss %.4f", self.losses[-1])

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``B x h x w`` (the flow's feature resolution) for images in [0, 1]."""
        _check_images(images, "images")
        if self.net is None or not self.template:
            raise RuntimeError("pyramidflow: predict() called before fit() or load()")
        self.net.eval()
        maps = []
        for start in range(0, images.shape[0], 4):
            latents = self.net(self._features(images[start : start + 4]))
            maps.append(template_difference(latents, self.template, self.net.pyramid))
        return torch.cat(maps).float().cpu()

    def save(self, directory: Path) -> None:
        """Write ``pyramidflow.pt``: resolved options, encoder provenance, flow, template."""
        if self.net is None or not self.template:
            raise RuntimeError("pyramidflow: save() called before fit() or load()")
        payload: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "options": dataclasses.asdict(self.config),
            "backbone": self.extractor.info.as_dict() if self.extractor else None,
            "seed": self._seed,
            "net": {key: value.cpu() for key, value in self.net.state_dict().items()},
            "template": [level.cpu() for level in self.template],
            "losses": self.losses,
        }
        torch.save(payload, Path(directory) / CHECKPOINT_NAME)

    def load(self, directory: Path) -> None:
        """Restore a model written by :meth:`save` (its options replace this instance's).

        The encoder is built again from the recorded provenance, never with a fallback,
        since the flow only fits the features it was trained on.
        """
        path = Path(directory) / CHECKPOINT_NAME
        if not path.is_file():
            message = f"pyramidflow checkpoint {path} does not exist (written by save())"
            raise FileNotFoundError(message)
        payload = torch.load(path, map_location="cpu", weights_only=True)
        version = payload.get("format_version") if isinstance(payload, dict) else None
        if version != FORMAT_VERSION:
            message = f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}"
            raise ValueError(message)
        saved = Options(**payload["options"])
        # The class a model was trained on is part of its settings, not a difference.
        expected = resolve_options(self.profile, self.options, saved.class_name)
        if saved != expected:
            changed = ", ".join(changed_options(saved, expected))
            logger.warning("pyramidflow: %s was trained with %s", path, changed)
        self.config = saved
        info = BackboneInfo(**payload["backbone"]) if payload["backbone"] else None
        self._build(payload["seed"], info)
        self.net.load_state_dict(payload["net"])
        self.net.to(self.device).eval()
        self.template = [level.to(self.device) for level in payload["template"]]
        self.losses = list(payload["losses"])

    def describe(self) -> dict[str, Any]:
        """Encoder provenance (none when ``encoder=none``), fallback marked, and notes."""
        info = self.extractor.info if self.extractor is not None else None
        uses_backbone = self.config.encoder != "none"
        notes = [
            f"{self.config.num_levels} pyramid levels, {self.config.volume_norm}, "
            f"augment={self.config.augment}, class {self.config.class_name or 'unknown'}",
            # NOTE: the official script keeps the epoch with the best test-set score, which
            # needs test labels; a benchmark may not look at them, so the last epoch is kept.
            "the last epoch is kept (the official script picks the best epoch on the test set)",
        ]
        if info is not None and info.fallback:
            notes.append(
                f"offline fallback: {info.used} instead of {info.requested}; "
                "figures are not comparable with the original encoder"
            )
        if info is not None and not info.pretrained:
            notes.append("RANDOM encoder weights (test setting); not a real result")
        return {
            "backbone": info.used if info else None,
            "requested_backbone": self.config.backbone if uses_backbone else None,
            "pretrained": info.pretrained if info else None,
            "weights": info.weights if info else None,
            "fallback": info.fallback if info else None,
            "note": "; ".join(notes),
        }

    def to(self, device: torch.device) -> PyramidFlow:
        """Move encoder, flow and template to ``device``."""
        self.device = device
        for module in (self.extractor, self.projection, self.net):
            if module is not None:
                module.to(device)
        self.template = [level.to(device) for level in self.template]
        return self

    # --- steps -------------------------------------------------------------------------

    def _build(self, seed: int, saved_info: BackboneInfo | None = None) -> None:
        """Create the encoder (loading its weights) and a freshly initialised flow.

        Args:
            seed: Seed of the flow's initialisation, of ``encoder=none``'s projection and of
                random encoder weights (tests only).
            saved_info: Provenance of a saved model's encoder, rebuilt without fallback.
        """
        config = self.config
        self._seed = seed
        generator = torch.Generator().manual_seed(seed)
        if config.encoder == "none":
            self.extractor = None
            self.projection = SemiInvertibleProjection(3, config.channels, generator)
            self.projection.to(self.device)
            channels = config.channels
        else:
            self.projection = None
            if saved_info is not None:
                extractor = rebuild_feature_extractor(saved_info, ["layer1"], random_seed=seed)
            else:
                extractor = load_feature_extractor(
                    config.backbone,
                    ["layer1"],
                    allow_random=bool(config.allow_random_backbone),
                    random_seed=seed,
                )
            self.extractor = extractor.to(self.device).eval()
            channels = self.extractor.channels[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = PyramidFlowNet(
                channels,
                config.num_levels,
                config.num_stack,
                config.kernel_size,
                config.volume_norm,
                seed=seed,
            ).to(self.device)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder features ``B x C x h x w`` of images in [0, 1] (resized first)."""
        batch = self._resize(images.to(self.device, torch.float32))
        if self.extractor is not None:
            return self.extractor(batch)[0]
        mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
        return self.projection((batch - mean) / std)

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        side = self.config.image_size
        if images.shape[-2:] == (side, side):
            return images.float()
        return F.interpolate(
            images.float(), size=(side, side), mode="bilinear", align_corners=False, antialias=True
        )

    @torch.no_grad()
    def _mean_latents(self, normal_images: torch.Tensor) -> list[torch.Tensor]:
        """Mean latent of every level over the (unaugmented) training images."""
        self.net.eval()
        sums: list[torch.Tensor] = []
        for start in range(0, normal_images.shape[0], 4):
            latents = self.net(self._features(normal_images[start : start + 4]))
            batch_sums = [level.sum(dim=0, keepdim=True) for level in latents]
            sums = (
                batch_sums if not sums else [a + b for a, b in zip(sums, batch_sums, strict=True)]
            )
        return [total / normal_images.shape[0] for total in sums]


def _dihedral_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip and rotate each image at random (the official texture augmentation).

    Horizontal and vertical flips each with p=0.5, then with p=0.5 a rotation by a random
    multiple of 90 degrees. Images must be square.
    """
    augmented = []
    for image in images:
        draws = torch.rand(3, generator=generator)
        turns = int(torch.randint(4, (1,), generator=generator))
        if draws[0] < 0.5:
            image = image.flip(-1)
        if draws[1] < 0.5:
            image = image.flip(-2)
        if draws[2] < 0.5:
            image = torch.rot90(image, turns, dims=(-2, -1))
        augmented.append(image)
    return torch.stack(augmented)


def _check_images(images: torch.Tensor, name: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"pyramidflow: {name} must be B x 3 x H x W, got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"pyramidflow: {name} is empty")
