"""PNI (Bae, Lee, Kim, ICCV 2023): patch memory with position and neighbourhood priors.

The harness adapter: option resolution per profile, fitting, prediction and checkpoints.
The pure-torch parts live in :mod:`methods.pni.model` and :mod:`methods._patch_features`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.method import METHODS, FitContext, Method
from methods._backbones import (
    LAYER_NAMES,
    BackboneInfo,
    FeatureExtractor,
    load_feature_extractor,
    rebuild_feature_extractor,
)
from methods._options import changed_options, explicit_options
from methods._patch_features import (
    averaging_projection,
    coreset_order,
    gaussian_blur,
    locally_aware_features,
    nearest_neighbours,
)
from methods.pni.model import (
    NeighbourhoodMLP,
    gather_neighbours,
    neighbour_offsets,
    pni_scores,
    position_histogram,
)

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "pni.pt"
FORMAT_VERSION = 1

# NOTE: the refinement network is left out: it is trained on synthetic defects with its own
# schedule, which a CPU profile cannot hold; the maps are PNI's unrefined ones.
_NOTE = (
    "PNI without its optional pixel-wise refinement network (trained on synthetic defects); "
    "the map is the upsampled, Gaussian-blurred patch score, as PNI's unrefined maps; "
    "CPU latency of the quick profile: see methods/pni/README.md"
)


def _validate(options: Options) -> None:
    """Check every field that is set (``None`` means: the profile's value).

    Raises:
        ValueError: Naming the first option whose value is out of range.
    """

    def value(name: str) -> Any:
        return getattr(options, name)

    def fail(name: str, expected: str) -> None:
        raise ValueError(f"pni option {name}={value(name)!r} is invalid; expected {expected}")

    if value("backbone") is not None and not options.backbone.strip():
        fail("backbone", "a timm model name")
    if value("layers") is not None:
        layers = [layer.strip() for layer in options.layers.split("+")]
        if any(layer not in LAYER_NAMES for layer in layers):
            fail("layers", f"stages joined by '+' out of {', '.join(LAYER_NAMES)}")
        if len(set(layers)) != len(layers):
            fail("layers", "each stage named once")
    lowest = {
        "image_size": 32,
        "patch_size": 1,
        "feature_dim": 1,
        "embed_dim": 1,
        "projection_dim": 1,
        "dist_coreset_size": 1,
        "neighbour_radius": 1,
        "mlp_layers": 2,
        "mlp_hidden": 1,
        "mlp_epochs": 1,
        "mlp_batch_size": 2,
        "mlp_lr_step": 1,
        "mlp_max_samples": 0,
    }
    for name, minimum in lowest.items():
        if value(name) is not None and value(name) < minimum:
            fail(name, f"an integer of at least {minimum}")
    if value("patch_size") is not None and options.patch_size % 2 == 0:
        fail("patch_size", "an odd integer (the window is centred on the patch)")
    if value("coreset_ratio") is not None and not 0 < options.coreset_ratio <= 1:
        fail("coreset_ratio", "a fraction in (0, 1]")
    for name in ("prob_gamma", "temperature", "mlp_lr"):
        if value(name) is not None and value(name) <= 0:
            fail(name, "a positive number")
    for name in ("tau_neighbourhood", "tau_position", "blur_sigma"):
        if value(name) is not None and value(name) < 0:
            fail(name, "a non-negative number")


@dataclass(frozen=True)
class Options:
    """User-settable options of ``pni``; ``None`` means the profile's value.

    Attributes:
        backbone: timm backbone name (``paper``: ``wide_resnet101_2``).
        layers: Backbone stages joined by ``+`` (``layer2+layer3``).
        image_size: Side the images are resized to before the backbone.
        patch_size: Local averaging window of the patch features.
        feature_dim: Length each layer's features are averaged to (the original's
            ``pretrain_embed_dimension``).
        embed_dim: Length of the final patch feature (``target_embed_dimension``).
        coreset_ratio: Fraction of training patches kept in the embedding coreset.
        projection_dim: Random projection dimension of the greedy coreset search.
        dist_coreset_size: Entries of the distribution coreset the MLP predicts.
        neighbour_radius: Half-width of the neighbourhood window (1: the 8 neighbours) and
            of the position histogram's smoothing window.
        mlp_layers: Linear layers of the neighbourhood MLP.
        mlp_hidden: Width of its hidden layers.
        mlp_epochs: Training epochs of the MLP.
        mlp_batch_size: Patches per MLP step.
        mlp_lr: Adam learning rate of the MLP.
        mlp_lr_step: Epochs between tenfold learning-rate drops.
        mlp_max_samples: At most this many training patches for the MLP (0 = all).
        temperature: Softmax temperature of the MLP at test time.
        prob_gamma: ``gamma`` of ``p(phi | c) = gamma * exp(-gamma * distance)``.
        tau_neighbourhood: Threshold factor: entries with neighbourhood probability above
            ``tau_neighbourhood / |embedding coreset|`` are plausible.
        tau_position: The same for the position histogram.
        blur_sigma: Gaussian blur (pixels at ``image_size``) of the upsampled map.
        allow_random_backbone: Use untrained backbone weights when no pretrained ones
            load (tests only; recorded as ``pretrained=False``).
    """

    backbone: str | None = None
    layers: str | None = None
    image_size: int | None = None
    patch_size: int | None = None
    feature_dim: int | None = None
    embed_dim: int | None = None
    coreset_ratio: float | None = None
    projection_dim: int | None = None
    dist_coreset_size: int | None = None
    neighbour_radius: int | None = None
    mlp_layers: int | None = None
    mlp_hidden: int | None = None
    mlp_epochs: int | None = None
    mlp_batch_size: int | None = None
    mlp_lr: float | None = None
    mlp_lr_step: int | None = None
    mlp_max_samples: int | None = None
    temperature: float | None = None
    prob_gamma: float | None = None
    tau_neighbourhood: float | None = None
    tau_position: float | None = None
    blur_sigma: float | None = None
    allow_random_backbone: bool | None = None

    def __post_init__(self) -> None:
        _validate(self)


# The official code's defaults (train_coreset_distribution.py); blur and image size at 480 px.
_PAPER = Options(
    backbone="wide_resnet101_2.tv_in1k",
    layers="layer2+layer3",
    image_size=480,
    patch_size=5,
    feature_dim=1024,
    embed_dim=1024,
    coreset_ratio=0.01,
    projection_dim=128,
    dist_coreset_size=2048,
    neighbour_radius=4,
    mlp_layers=10,
    mlp_hidden=2048,
    mlp_epochs=15,
    mlp_batch_size=2048,
    mlp_lr=1e-3,
    mlp_lr_step=5,
    mlp_max_samples=0,
    temperature=2.0,
    prob_gamma=0.99,
    tau_neighbourhood=0.5,
    tau_position=0.5,
    blur_sigma=8.0,
    allow_random_backbone=False,
)

# Sized for about a minute on 2 CPU cores with ~30 training images.
_QUICK = dataclasses.replace(
    _PAPER,
    backbone="wide_resnet50_2.tv_in1k",
    image_size=256,
    feature_dim=256,
    embed_dim=256,
    coreset_ratio=0.1,
    dist_coreset_size=512,
    neighbour_radius=1,
    mlp_layers=3,
    mlp_hidden=512,
    mlp_epochs=6,
    mlp_batch_size=512,
    mlp_lr_step=4,
    mlp_max_samples=8192,
    blur_sigma=4.0,
)

_PROFILES = {"quick": _QUICK, "paper": _PAPER}


def resolve_options(profile: str, options: Options) -> Options:
    """Fill ``None`` fields from ``profile`` (each set field is checked when it is set)."""
    return dataclasses.replace(_PROFILES[profile], **explicit_options(options))


@METHODS.register(
    "pni",
    description="PNI: patch memory with position histograms and a neighbourhood MLP",
)
class PNI(Method):
    """PNI-style localizer (Bae, Lee, Kim, ICCV 2023) without the refinement network.

    Patch features (PatchCore-like) of normal images give an embedding coreset (for
    distances) and a distribution coreset (what the neighbourhood MLP predicts). A test
    patch is scored by its distance to the nearest coreset entry that is plausible under
    its neighbourhood (MLP) and under its position (histogram); see
    :func:`methods.pni.model.pni_scores`.
    """

    name = "pni"
    description = "PNI: patch memory with position histograms and a neighbourhood MLP"
    citation = (
        "Bae, Lee, Kim. PNI: Industrial Anomaly Detection using Position and Neighborhood "
        "Information. ICCV 2023."
    )
    needs_pretrained = True
    profiles = ("quick", "paper")
    Options = Options

    def __init__(self, profile: str = "quick", options: Options | None = None) -> None:
        super().__init__(profile, options)
        self.config = resolve_options(profile, self.options)
        self.extractor: FeatureExtractor | None = None
        self.projection: torch.Tensor | None = None
        self.mlp: NeighbourhoodMLP | None = None
        self.state: dict[str, torch.Tensor] = {}
        self.fit_seconds: float | None = None
        self._backbone_seed: int | None = None

    # --- harness interface ------------------------------------------------------------

    def fit(self, normal_images: torch.Tensor, context: FitContext) -> None:
        """Build the coresets, the position histogram and train the neighbourhood MLP.

        Args:
            normal_images: ``N x 3 x H x W`` normal images in [0, 1].
            context: Device, seed and progress callback.
        """
        _check_images(normal_images, "normal_images")
        started = time.perf_counter()
        config = self.config
        self.device = context.device
        layers = self.config.layers.split("+")
        extractor = load_feature_extractor(
            config.backbone,
            layers,
            allow_random=bool(config.allow_random_backbone),
            random_seed=context.seed,
        )
        self._backbone_seed = context.seed
        self._use_extractor(extractor)
        margin = config.patch_size // 2

        features = self._features(normal_images, context)  # N x D x H x W
        num_images, dims, height, width = features.shape
        if height <= 2 * margin or width <= 2 * margin:
            message = (
                f"a {height} x {width} patch grid leaves no position inside the border of "
                f"{margin} that patch_size={config.patch_size} excludes; raise image_size "
                f"(now {config.image_size})"
            )
            raise ValueError(message)
        inner = features[:, :, margin : height - margin, margin : width - margin]
        inner_height, inner_width = inner.shape[-2:]
        patches = inner.permute(0, 2, 3, 1).reshape(-1, dims)  # (N * h * w) x D

        context.progress(0, 4, "pni: coreset")
        embedding_count = max(1, int(config.coreset_ratio * patches.shape[0]))
        distribution_count = min(config.dist_coreset_size, patches.shape[0])
        generator = torch.Generator().manual_seed(context.seed)
        order = coreset_order(
            patches, max(embedding_count, distribution_count), config.projection_dim, generator
        )
        # Fewer picks come back only when the remaining patches coincide with picked ones.
        embedding_count = min(embedding_count, order.shape[0])
        distribution_count = min(distribution_count, order.shape[0])
        embedding_bank = patches[order[:embedding_count]].contiguous()
        distribution_bank = patches[order[:distribution_count]].contiguous()
        logger.info(
            "pni: %d training patches, embedding coreset %d, distribution coreset %d",
            patches.shape[0],
            embedding_count,
            distribution_count,
        )

        context.progress(1, 4, "pni: position histogram")
        _, nearest_embedding = nearest_neighbours(patches, embedding_bank)
        _, nearest_distribution = nearest_neighbours(patches, distribution_bank)
        _, emb_to_dist = nearest_neighbours(embedding_bank, distribution_bank)
        histogram = position_histogram(
            nearest_embedding[:, 0].reshape(num_images, inner_height, inner_width),
            embedding_count,
            config.neighbour_radius,
        )

        context.progress(2, 4, "pni: neighbourhood MLP")
        targets = nearest_distribution[:, 0].reshape(num_images, inner_height, inner_width)
        self.mlp = self._train_mlp(features, targets, distribution_count, context)

        self.state = {
            "embedding_bank": embedding_bank,
            "emb_to_dist": emb_to_dist[:, 0],
            "position_histogram": histogram,
        }
        context.progress(4, 4, "pni: done")
        self.fit_seconds = time.perf_counter() - started

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly maps ``B x image_size x image_size`` for ``B x 3 x H x W`` images in [0, 1]."""
        _check_images(images, "images")
        if self.mlp is None or not self.state:
            raise RuntimeError("pni: predict() called before fit() or load()")
        config = self.config
        margin = config.patch_size // 2
        radius = config.neighbour_radius
        features = self._features(images, None)  # B x D x H x W
        batch, _, height, width = features.shape

        inner_height, inner_width = height - 2 * margin, width - 2 * margin
        rows, cols = torch.meshgrid(
            torch.arange(margin, height - margin, device=features.device),
            torch.arange(margin, width - margin, device=features.device),
            indexing="ij",
        )
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        padded = F.pad(features, (radius, radius, radius, radius))
        bank = self.state["embedding_bank"]
        tau_neighbourhood = config.tau_neighbourhood / bank.shape[0]
        tau_position = config.tau_position / bank.shape[0]
        self.mlp.eval()

        maps = []
        for index in range(batch):
            image_index = torch.full_like(rows, index)
            neighbour_logits = torch.cat(
                [
                    self.mlp(gather_neighbours(padded, image_index[s], rows[s], cols[s], radius))
                    for s in _chunks(rows.shape[0], 2048)
                ]
            )  # P x K
            neighbour_probs = torch.softmax(neighbour_logits / config.temperature, dim=1)
            patch_features = features[index, :, rows, cols].T  # P x D
            distances = torch.cdist(patch_features, bank)  # P x E
            scores = pni_scores(
                distances,
                neighbour_probs,
                self.state["position_histogram"],
                self.state["emb_to_dist"],
                tau_neighbourhood,
                tau_position,
                config.prob_gamma,
            )
            maps.append(scores.reshape(inner_height, inner_width))
        patch_maps = torch.stack(maps)[:, None]  # B x 1 x h x w
        # The border excluded at fit takes the values of the nearest inner position.
        patch_maps = F.pad(patch_maps, (margin, margin, margin, margin), mode="replicate")
        side = config.image_size
        upsampled = F.interpolate(
            patch_maps, size=(side, side), mode="bilinear", align_corners=False
        )
        return gaussian_blur(upsampled[:, 0], config.blur_sigma).float().cpu()

    def save(self, directory: Path) -> None:
        """Write ``pni.pt``: resolved options, backbone provenance, coresets and the MLP."""
        if self.mlp is None or self.extractor is None:
            raise RuntimeError("pni: save() called before fit() or load()")
        payload: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "options": dataclasses.asdict(self.config),
            "backbone": self.extractor.info.as_dict(),
            "backbone_seed": self._backbone_seed,
            "state": {key: value.cpu() for key, value in self.state.items()},
            "mlp": {key: value.cpu() for key, value in self.mlp.state_dict().items()},
            "mlp_shape": self._mlp_shape(),
        }
        torch.save(payload, Path(directory) / CHECKPOINT_NAME)

    def load(self, directory: Path) -> None:
        """Restore a model written by :meth:`save` (its options replace this instance's).

        The backbone is built again from the recorded provenance, never with a fallback,
        since the coresets only fit the weights they were computed with.
        """
        path = Path(directory) / CHECKPOINT_NAME
        if not path.is_file():
            raise FileNotFoundError(f"pni checkpoint {path} does not exist (written by save())")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        version = payload.get("format_version") if isinstance(payload, dict) else None
        if version != FORMAT_VERSION:
            message = f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}"
            raise ValueError(message)
        saved = Options(**payload["options"])
        if saved != self.config:
            changed = ", ".join(changed_options(saved, self.config))
            logger.warning("pni: %s was trained with %s; using those", path, changed)
        self.config = saved
        extractor = rebuild_feature_extractor(
            BackboneInfo(**payload["backbone"]),
            saved.layers.split("+"),
            random_seed=payload["backbone_seed"],
        )
        self._backbone_seed = payload["backbone_seed"]
        self._use_extractor(extractor)
        in_features, num_entries = payload["mlp_shape"]
        self.mlp = NeighbourhoodMLP(
            in_features, num_entries, saved.mlp_hidden, saved.mlp_layers
        ).to(self.device)
        self.mlp.load_state_dict(payload["mlp"])
        self.mlp.eval()
        self.state = {key: value.to(self.device) for key, value in payload["state"].items()}

    def describe(self) -> dict[str, Any]:
        """Backbone provenance, fallback and random weights marked, and what is left out."""
        info = self.extractor.info if self.extractor is not None else None
        notes = [_NOTE]
        if info is not None and info.fallback:
            notes.append(
                f"offline fallback: {info.used} instead of {info.requested}; "
                "figures are not comparable with the original backbone"
            )
        if info is not None and not info.pretrained:
            notes.append("RANDOM backbone weights (test setting); not a real result")
        return {
            "backbone": info.used if info else self.config.backbone,
            "requested_backbone": self.config.backbone,
            "pretrained": info.pretrained if info else None,
            "weights": info.weights if info else None,
            "fallback": info.fallback if info else None,
            "note": "; ".join(notes),
        }

    def to(self, device: torch.device) -> PNI:
        """Move backbone, MLP and memory to ``device``."""
        self.device = device
        if self.extractor is not None:
            self.extractor.to(device)
            self.projection = self.projection.to(device)
        if self.mlp is not None:
            self.mlp.to(device)
        self.state = {key: value.to(device) for key, value in self.state.items()}
        return self

    # --- steps -------------------------------------------------------------------------

    def _use_extractor(self, extractor: FeatureExtractor) -> None:
        """Adopt ``extractor`` and the fixed channel-averaging map its channels imply."""
        self.extractor = extractor.to(self.device).eval()
        self.projection = averaging_projection(
            extractor.channels, self.config.feature_dim, self.config.embed_dim
        ).to(self.device)

    @torch.no_grad()
    def _features(self, images: torch.Tensor, context: FitContext | None) -> torch.Tensor:
        """Locally aware patch features ``N x D x h x w`` of images ``N x 3 x H x W`` in [0, 1]."""
        side = self.config.image_size
        batches = []
        chunks = _chunks(images.shape[0], 8)
        for done, chunk in enumerate(chunks):
            batch = images[chunk].to(self.device, torch.float32)
            if batch.shape[-2:] != (side, side):
                batch = F.interpolate(
                    batch, size=(side, side), mode="bilinear", align_corners=False, antialias=True
                )
            features = locally_aware_features(
                self.extractor(batch), self.config.patch_size, self.projection
            )  # b x h x w x D
            batches.append(features.permute(0, 3, 1, 2))  # b x D x h x w
            if context is not None:
                context.progress(done + 1, len(chunks), "pni: patch features")
        return torch.cat(batches)

    def _train_mlp(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        num_entries: int,
        context: FitContext,
    ) -> NeighbourhoodMLP:
        """Fit the neighbourhood MLP; return the weights with the lowest validation loss.

        Args:
            features: ``N x D x H x W`` patch features of the training images.
            targets: ``N x h x w`` distribution-coreset index of every inner patch.
            num_entries: ``K``.
            context: Seed and progress callback.
        """
        config = self.config
        radius = config.neighbour_radius
        margin = config.patch_size // 2
        num_images, dims = features.shape[:2]
        inner_height, inner_width = targets.shape[1:]
        generator = torch.Generator().manual_seed(context.seed)

        # Every inner patch is a sample: (image, row, col) on the full grid.
        total = num_images * inner_height * inner_width
        order = torch.randperm(total, generator=generator)
        if config.mlp_max_samples and total > config.mlp_max_samples:
            order = order[: config.mlp_max_samples]
        image_index = order // (inner_height * inner_width)
        rows = (order // inner_width) % inner_height + margin
        cols = order % inner_width + margin
        labels = targets.reshape(-1)[order]
        validation_count = max(1, int(0.1 * order.shape[0])) if order.shape[0] > 10 else 0
        train_part = slice(validation_count, None)
        validation_part = slice(0, validation_count)

        padded = F.pad(features, (radius, radius, radius, radius))
        in_features = neighbour_offsets(radius).shape[0] * dims
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            mlp = NeighbourhoodMLP(in_features, num_entries, config.mlp_hidden, config.mlp_layers)
        mlp = mlp.to(self.device)
        optimiser = torch.optim.Adam(mlp.parameters(), lr=config.mlp_lr)
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimiser, step_size=config.mlp_lr_step, gamma=0.1
        )

        def batches(part: slice, shuffle: bool) -> list[torch.Tensor]:
            indices = torch.arange(order.shape[0])[part]
            if shuffle:
                indices = indices[torch.randperm(indices.shape[0], generator=generator)]
            return list(indices.split(config.mlp_batch_size))

        def inputs(batch: torch.Tensor) -> torch.Tensor:
            return gather_neighbours(padded, image_index[batch], rows[batch], cols[batch], radius)

        def validation_loss() -> float:
            mlp.eval()
            total_loss = 0.0
            with torch.no_grad():
                for batch in batches(validation_part, shuffle=False):
                    logits = mlp(inputs(batch))
                    target = labels[batch].to(self.device)
                    total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
            return total_loss / validation_count

        best_loss, best_state = float("inf"), None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)  # dropout masks
            for epoch in range(config.mlp_epochs):
                mlp.train()
                for batch in batches(train_part, shuffle=True):
                    if batch.shape[0] < 2:
                        continue  # batch norm needs two samples
                    loss = F.cross_entropy(mlp(inputs(batch)), labels[batch].to(self.device))
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                scheduler.step()
                # NOTE: without a validation split (tiny inputs) the last epoch is kept.
                current = validation_loss() if validation_count else -float(epoch)
                logger.debug("pni: MLP epoch %d, validation loss %.4f", epoch, current)
                if current < best_loss:
                    best_loss = current
                    best_state = {k: v.detach().clone() for k, v in mlp.state_dict().items()}
                context.progress(epoch + 1, config.mlp_epochs, "pni: neighbourhood MLP")
        if best_state is None:
            message = (
                f"pni: the neighbourhood MLP's validation loss was not finite in any of "
                f"{config.mlp_epochs} epochs; try a lower mlp_lr (now {config.mlp_lr})"
            )
            raise RuntimeError(message)
        mlp.load_state_dict(best_state)
        logger.info("pni: neighbourhood MLP trained, best validation loss %.4f", best_loss)
        return mlp.eval()

    def _mlp_shape(self) -> tuple[int, int]:
        first = self.mlp.layers[0]
        last = self.mlp.layers[-1]
        return first.in_features, last.out_features


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(start, start + size) for start in range(0, total, size)]


def _check_images(images: torch.Tensor, name: str) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"pni: {name} must be B x 3 x H x W, got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"pni: {name} is empty")
