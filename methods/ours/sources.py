"""Anomaly-source textures for defect synthesis: a user folder, or what ships offline.

DTD (the source DRAEM and the paper use) cannot be bundled; users who have it pass its
``images`` folder. Otherwise scikit-image's CC0 brick, grass and gravel photos plus
procedural textures are used, and :attr:`TextureBank.description` says which.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.imageio import read_image
from methods.ours.synthesis import procedural_texture, random_int

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
BUILTIN = "builtin"
PROCEDURAL = "procedural"


class AnomalySourceError(ValueError):
    """Raised when the ``anomaly_source`` option names nothing usable."""


def _random_crop_resize(image: Tensor, generator: torch.Generator, size: int) -> Tensor:
    """Random square crop of ``3 x H x W`` (at least half the short side), resized to size."""
    height, width = image.shape[-2:]
    short = min(height, width)
    side = random_int(generator, max(short // 2, 1), short + 1)
    top = random_int(generator, 0, height - side + 1)
    left = random_int(generator, 0, width - side + 1)
    crop = image[:, top : top + side, left : left + side]
    resized = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)
    return resized[0].clamp(0.0, 1.0)


class TextureBank:
    """Callable ``(generator, size) -> 3 x size x size`` drawing one anomaly source.

    Args:
        spec: ``builtin`` (scikit-image photos and procedural textures, half each),
            ``procedural``, or a folder of images (searched recursively; read lazily).
    """

    def __init__(self, spec: str = BUILTIN) -> None:
        self.spec = spec
        self._photos: list[Tensor] = []
        self._paths: list[Path] = []
        if spec == PROCEDURAL:
            self.description = "procedural textures (generated)"
        elif spec == BUILTIN:
            self._photos = _skimage_photos()
            if self._photos:
                self.description = (
                    "scikit-image CC0 photos (brick, grass, gravel) and procedural textures"
                )
            else:
                self.description = "procedural textures (scikit-image photos unavailable)"
        else:
            folder = Path(spec).expanduser()
            if not folder.is_dir():
                message = (
                    f"anomaly_source={spec!r}: expected 'builtin', 'procedural' or an existing "
                    "folder of texture images"
                )
                raise AnomalySourceError(message)
            self._paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._paths:
                message = (
                    f"anomaly_source={spec!r}: folder holds no images with suffix "
                    f"{', '.join(IMAGE_SUFFIXES)}"
                )
                raise AnomalySourceError(message)
            self.description = f"{len(self._paths)} images from {folder}"
        logger.info("anomaly sources: %s", self.description)

    def __call__(self, generator: torch.Generator, size: int) -> Tensor:
        """Draw one texture ``3 x size x size`` in [0, 1]."""
        if self._paths:
            path = self._paths[random_int(generator, 0, len(self._paths))]
            return _random_crop_resize(read_image(path), generator, size)
        if self._photos and random_int(generator, 0, 2) == 0:
            photo = self._photos[random_int(generator, 0, len(self._photos))]
            return _random_crop_resize(photo, generator, size)
        return procedural_texture(generator, size)


def _skimage_photos() -> list[Tensor]:
    """The three texture photos that ship inside scikit-image, as ``3 x H x W`` tensors."""
    try:
        from skimage import data
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        logger.warning("scikit-image is missing; using procedural anomaly sources only")
        return []
    photos = []
    for name in ("brick", "grass", "gravel"):
        try:
            array = getattr(data, name)()
        except Exception as error:  # noqa: BLE001 - any failure means "not available"
            logger.warning("scikit-image texture %r unavailable (%s)", name, error)
            continue
        tensor = torch.from_numpy(array.astype("float32") / 255.0)
        if tensor.ndim == 2:
            tensor = tensor[None].expand(3, -1, -1)
        else:
            tensor = tensor[..., :3].permute(2, 0, 1)  # H x W x 3 -> 3 x H x W
        photos.append(tensor.contiguous())
    return photos
