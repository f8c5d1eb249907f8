"""PatchCore (Roth et al., CVPR 2022) as a DefectBench method: options, profiles, save/load."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.method import METHODS, FitContext, Method
from methods._backbones import (
    LAYER_NAMES,
    BackboneInfo,
    load_feature_extractor,
    rebuild_feature_extractor,
)
from methods._options import check_at_least, check_non_negative, explicit_options
from methods.patchcore.model import PatchCoreModel, PatchCoreSettings

logger = logging.getLogger(__name__)

CONFIG_FILE = "patchcore.json"
BANK_FILE = "memory_bank.pt"
FORMAT_VERSION = 1

# The original's main configuration (WRN50, layers 2+3, 10 % coreset, 1024-d patches),
# fed the full 256 px frame instead of the 224 px centre crop (see README).
_PAPER_DEFAULTS: dict[str, Any] = {
    "backbone": "wide_resnet50_2",
    "layers": "layer2+layer3",
    "coreset_ratio": 0.1,
    "num_neighbors": 9,
    "image_size": 256,
    "feature_dim": 1024,
    "embed_dim": 1024,
    "projection_dim": 128,
    "sigma": 4.0,
    "batch_size": 8,
}

_PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": _PAPER_DEFAULTS,
    # Same model; a 1 % coreset (the original's ensemble setting) keeps the greedy search
    # short on a CPU: it is the slowest step at 10 %.
    "quick": {**_PAPER_DEFAULTS, "coreset_ratio": 0.01},
}


@dataclass(frozen=True)
class PatchCoreOptions:
    """User-settable knobs; ``None`` means the profile's default.

    Attributes:
        backbone: timm name of the pretrained CNN (offline it falls back to
            EfficientNet-Lite0, see ``describe()``).
        layers: Backbone stages joined by ``+``, e.g. ``layer2+layer3``.
        coreset_ratio: Fraction of training patches kept in the memory bank, in (0, 1].
        num_neighbors: Memory-bank neighbours used to reweight the image score.
        image_size: Side, in pixels, images are resized to before the backbone.
        feature_dim: Length each layer's patch features are averaged to.
        embed_dim: Length of the final patch embedding.
        projection_dim: Random projection dimension of the coreset search.
        sigma: Gaussian smoothing of the map, in pixels at ``image_size`` (0: none).
        batch_size: Images per backbone pass.
        allow_fallback: Use the bundled EfficientNet-Lite0 when ``backbone``'s pretrained
            weights cannot be loaded.
        allow_random_backbone: For tests only: accept random backbone weights as a last
            resort (recorded as ``pretrained=False``).
    """

    backbone: str | None = None
    layers: str | None = None
    coreset_ratio: float | None = None
    num_neighbors: int | None = None
    image_size: int | None = None
    feature_dim: int | None = None
    embed_dim: int | None = None
    projection_dim: int | None = None
    sigma: float | None = None
    batch_size: int | None = None
    allow_fallback: bool = True
    allow_random_backbone: bool = False

    def __post_init__(self) -> None:
        if self.backbone is not None and not self.backbone.strip():
            raise ValueError("option backbone: expected a timm model name, got an empty string")
        if self.layers is not None:
            parse_layers(self.layers)
        if self.coreset_ratio is not None and not 0.0 < self.coreset_ratio <= 1.0:
            message = f"option coreset_ratio: expected a number in (0, 1], got {self.coreset_ratio}"
            raise ValueError(message)
        minimum = {
            "num_neighbors": 1,
            "image_size": 32,
            "feature_dim": 1,
            "embed_dim": 1,
            "projection_dim": 1,
            "batch_size": 1,
        }
        check_at_least(self, minimum)
        check_non_negative(self, ("sigma",))


def parse_layers(text: str) -> tuple[str, ...]:
    """Split ``"layer2+layer3"`` into layer names and check each one.

    Raises:
        ValueError: Naming the ``layers`` option, for unknown, repeated or missing names.
    """
    layers = tuple(part.strip() for part in text.split("+"))
    if not text.strip() or any(not layer for layer in layers):
        message = f"option layers: expected names joined by '+' (e.g. layer2+layer3), got {text!r}"
        raise ValueError(message)
    for layer in layers:
        if layer not in LAYER_NAMES:
            message = f"option layers: unknown layer {layer!r}; expected {', '.join(LAYER_NAMES)}"
            raise ValueError(message)
    if len(set(layers)) != len(layers):
        raise ValueError(f"option layers: a layer is named twice in {text!r}")
    return layers


@METHODS.register(
    "patchcore",
    description="PatchCore: nearest-neighbour distance to a coreset of pretrained patch features",
    aliases=("pc",),
)
class PatchCore(Method):
    """PatchCore behind the benchmark's method interface.

    ``fit`` embeds the normal images with a frozen pretrained CNN and keeps a greedy coreset
    of the patch embeddings; ``predict`` maps each patch's distance to its nearest memory
    entry, upsampled and smoothed. It has no threshold of its own.
    """

    name = "patchcore"
    description = "PatchCore: nearest-neighbour distance to a coreset of pretrained patch features"
    citation = (
        "Roth, Pemula, Zepeda, Schölkopf, Brox, Gehler. Towards Total Recall in Industrial "
        "Anomaly Detection. CVPR 2022."
    )
    needs_pretrained = True
    profiles = ("quick", "paper")
    Options = PatchCoreOptions

    def __init__(self, profile: str = "quick", options: PatchCoreOptions | None = None) -> None:
        super().__init__(profile, options)
        self.model: PatchCoreModel | None = None
        self.backbone_info: BackboneInfo | None = None
        self._backbone_seed: int | None = None

    # --- resolved configuration -----------------------------------------------------------

    def resolved(self) -> dict[str, Any]:
        """Every option with ``None`` replaced by the profile's default."""
        return {**_PROFILE_DEFAULTS[self.profile], **explicit_options(self.options)}

    @property
    def layers(self) -> tuple[str, ...]:
        """Backbone stages in use."""
        return parse_layers(self.resolved()["layers"])

    @property
    def settings(self) -> PatchCoreSettings:
        """Hyper-parameters handed to the model."""
        values = self.resolved()
        names = {option.name for option in dataclasses.fields(PatchCoreSettings)}
        return PatchCoreSettings(**{k: v for k, v in values.items() if k in names})

    # --- the method interface -------------------------------------------------------------

    def fit(self, normal_images: torch.Tensor, context: FitContext) -> None:
        """Build the memory bank from normal images ``N x 3 x H x W`` in [0, 1]."""
        _check_images(normal_images, "normal_images")
        values = self.resolved()
        extractor = load_feature_extractor(
            values["backbone"],
            self.layers,
            allow_fallback=values["allow_fallback"],
            allow_random=values["allow_random_backbone"],
            random_seed=context.seed,
        )
        self.backbone_info = extractor.info
        self._backbone_seed = context.seed
        self.device = context.device
        self.model = PatchCoreModel(extractor, self.settings).to(context.device)
        generator = torch.Generator().manual_seed(context.seed)
        logger.info(
            "fitting patchcore (%s profile, backbone %s) on %d images",
            self.profile,
            extractor.info.used,
            normal_images.shape[0],
        )
        self.model.fit(normal_images, generator, progress=context.progress)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``B x H x W`` for images ``B x 3 x H x W`` in [0, 1]."""
        return self.predict_with_scores(images)[0]

    def predict_with_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps ``B x H x W`` and the paper's reweighted image scores ``B``."""
        model = self._fitted_model()
        _check_images(images, "images")
        with torch.no_grad():
            output = model(images)
        return output.anomaly_map.float().cpu(), output.image_score.float().cpu()

    def save(self, directory: Path) -> None:
        """Write the memory bank and the configuration (not the backbone weights)."""
        model = self._fitted_model()
        directory = Path(directory)
        torch.save(model.memory_bank.cpu(), directory / BANK_FILE)
        config = {
            "format_version": FORMAT_VERSION,
            "method": self.name,
            "profile": self.profile,
            "options": dataclasses.asdict(self.options),
            "resolved": self.resolved(),
            "backbone": self.backbone_info.as_dict() if self.backbone_info else None,
            "backbone_seed": self._backbone_seed,
            "memory_bank_shape": list(model.memory_bank.shape),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def load(self, directory: Path) -> None:
        """Restore a model written by :meth:`save`; the backbone is loaded again by name."""
        directory = Path(directory)
        config = _read_config(directory / CONFIG_FILE)
        options = PatchCoreOptions(**config["options"])
        if config["profile"] != self.profile or options != self.options:
            logger.warning(
                "%s: saved with profile %s and %s; using those instead of %s and %s",
                directory,
                config["profile"],
                options,
                self.profile,
                self.options,
            )
        self.profile = config["profile"]
        self.options = options
        info = BackboneInfo(**config["backbone"])

        bank_path = directory / BANK_FILE
        if not bank_path.is_file():
            raise FileNotFoundError(f"{bank_path}: memory bank missing (written by save())")
        memory_bank = torch.load(bank_path, map_location="cpu", weights_only=True)
        if list(memory_bank.shape) != config["memory_bank_shape"]:
            message = (
                f"{bank_path}: memory bank has shape {list(memory_bank.shape)}, "
                f"{CONFIG_FILE} says {config['memory_bank_shape']}"
            )
            raise ValueError(message)

        extractor = rebuild_feature_extractor(
            info, self.layers, random_seed=config["backbone_seed"]
        )
        self.backbone_info = info
        self._backbone_seed = config["backbone_seed"]
        model = PatchCoreModel(extractor, self.settings)
        model.memory_bank = memory_bank
        self.model = model.to(self.device)

    def describe(self) -> dict[str, Any]:
        """Backbone provenance for the report; fallback and random weights are marked."""
        values = self.resolved()
        if self.backbone_info is None:
            return {
                "backbone": values["backbone"],
                "requested_backbone": values["backbone"],
                "pretrained": None,
                "weights": None,
                "fallback": None,
                "note": "not fitted yet",
            }
        info = self.backbone_info
        notes = []
        if info.fallback:
            notes.append(
                f"offline fallback: {info.used} instead of {info.requested}; "
                "figures are not comparable with the original backbone"
            )
        if not info.pretrained:
            notes.append("RANDOM backbone weights (test setting); not a real result")
        return {
            "backbone": info.used,
            "requested_backbone": info.requested,
            "pretrained": info.pretrained,
            "weights": info.weights,
            "fallback": info.fallback,
            "note": "; ".join(notes),
        }

    def to(self, device: torch.device) -> PatchCore:
        """Move the backbone and memory bank to ``device``."""
        self.device = torch.device(device)
        if self.model is not None:
            self.model = self.model.to(self.device)
        return self

    def _fitted_model(self) -> PatchCoreModel:
        if self.model is None or not self.model.is_fitted:
            raise RuntimeError("patchcore has no memory bank yet; call fit() or load() first")
        return self.model


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected a B x 3 x H x W tensor, got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, got an empty batch")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected floats in [0, 1], got dtype {images.dtype}")


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved patchcore model here (expected {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    version = config.get("format_version") if isinstance(config, dict) else None
    if version != FORMAT_VERSION:
        message = f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}"
        raise ValueError(message)
    return config
