"""Reading images and masks of any mode and bit depth into tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError


class ImageReadError(OSError):
    """Raised when an image or mask file cannot be read; the message names the file."""


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error
    return image


def _to_float_array(image: Image.Image, path: Path) -> np.ndarray:
    """Return ``H x W x 3`` float64 in [0, 1] for any PIL mode and bit depth."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        maximum = 65535.0 if array.max() > 255 or image.mode.startswith("I;16") else 255.0
        array = np.clip(array / maximum, 0.0, 1.0)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        return np.repeat(np.clip(array, 0.0, 1.0)[..., None], 3, axis=2)
    if image.mode in ("1", "L", "LA"):
        array = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")  # RGBA, CMYK, YCbCr: alpha dropped
    array = np.asarray(image, dtype=np.float64) / 255.0
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageReadError(f"cannot read image {path}: unexpected shape {array.shape}")
    return array


def read_image(path: Path, size: int | None = None) -> torch.Tensor:
    """Read an image as ``3 x H x W`` float32 in [0, 1], optionally resized to ``size``.

    Gray, RGB, RGBA and palette images of 8 or 16 bits are accepted; gray images are
    repeated over three channels. Resizing is bilinear with antialiasing.
    """
    path = Path(path)
    array = _to_float_array(_open(path), path)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()
    if size is not None and tuple(tensor.shape[1:]) != (size, size):
        tensor = F.interpolate(
            tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp(0.0, 1.0)
    return tensor


def read_mask(path: Path, size: int | None = None) -> torch.Tensor:
    """Read a mask as ``H x W`` bool: any non-zero value is a defect; resized nearest."""
    path = Path(path)
    image = _open(path)
    if image.mode == "P":
        image = image.convert("RGBA")
    array = np.asarray(image)
    if array.ndim == 3:
        colour = array[..., :3] if array.shape[2] >= 3 else array[..., :1]
        array = colour.max(axis=2)
    mask = torch.from_numpy(np.ascontiguousarray(array != 0))
    if size is not None and tuple(mask.shape) != (size, size):
        mask = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0]
        mask = mask > 0.5
    return mask
