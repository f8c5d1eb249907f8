"""Reading images and masks of any mode and bit depth into tensors.

Images become ``3 x H x W`` float32 in [0, 1]; masks become ``H x W`` bool (any non-zero
pixel is a defect). Every failure is an :class:`ImageReadError` that names the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
"""File name endings read as images, compared in lower case."""

_SIXTEEN_BIT_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageReadError(OSError):
    """Raised when an image or mask file cannot be read; the message names the file."""


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has an image extension (any case) and is not a hidden file."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: Path, size: int | None = None) -> torch.Tensor:
    """Read an image as ``3 x H x W`` float32 in [0, 1], optionally resized to ``size``.

    Gray, gray + alpha, RGB, RGBA, palette, CMYK and 1-bit images of 8 or 16 bits per
    channel are accepted (and 32-bit integer or float gray TIFFs). Gray images are repeated
    over three channels; alpha is dropped. EXIF orientation is not applied, so pixels stay
    on the grid their masks were drawn on. Resizing is bilinear with antialiasing.

    Args:
        path: Image file.
        size: Side of the square output; ``None`` keeps the stored size.

    Returns:
        ``3 x H x W`` (or ``3 x size x size``) float32 tensor in [0, 1].

    Raises:
        ImageReadError: The file is missing, not an image, truncated or of an unsupported
            mode; the message names the file.
    """
    path = Path(path)
    _check_size(size, "size")
    image, raw_mode = _open(path)
    array = _image_to_float(image, raw_mode, path)  # H x W x 3
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()
    if size is not None and tuple(tensor.shape[1:]) != (size, size):
        tensor = F.interpolate(
            tensor[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0].clamp(0.0, 1.0)
    return tensor


def read_mask(path: Path, size: int | None = None) -> torch.Tensor:
    """Read a defect mask as ``H x W`` bool, optionally resized (nearest) to ``size``.

    A pixel is a defect when any colour channel is non-zero (palette masks are judged by
    the colour their index shows) and, where the file has alpha, the pixel is not fully
    transparent. Gray masks of 8 or 16 bits, 1-bit, RGB, RGBA and palette files are accepted.

    Args:
        path: Mask file.
        size: Side of the square output; ``None`` keeps the stored size.

    Returns:
        ``H x W`` (or ``size x size``) bool tensor.

    Raises:
        ImageReadError: The file cannot be read; the message names the file.
    """
    path = Path(path)
    _check_size(size, "size")
    image, _ = _open(path)
    if image.mode == "P":
        image = image.convert("RGBA")
    elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        defect = array != 0
    elif array.ndim == 3 and array.shape[2] in (2, 4):
        # gray + alpha or RGBA: colour channels, then alpha
        defect = (array[..., :-1] != 0).any(axis=2) & (array[..., -1] != 0)
    elif array.ndim == 3:
        defect = (array != 0).any(axis=2)
    else:
        raise ImageReadError(f"cannot read mask {path}: unexpected array shape {array.shape}")
    mask = torch.from_numpy(np.ascontiguousarray(defect))
    if size is not None and tuple(mask.shape) != (size, size):
        mask = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0]
        mask = mask > 0.5
    return mask


def image_size(path: Path) -> tuple[int, int]:
    """Return ``(height, width)`` of an image file from its header, without decoding it.

    Raises:
        ImageReadError: The file is missing or not an image; the message names the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error
    return height, width


def _check_size(size: int | None, name: str) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {size!r}")


def _open(path: Path) -> tuple[Image.Image, str]:
    """Open and fully decode ``path``; return the image and its stored pixel layout.

    Any failure (missing, not an image, truncated) becomes an ImageReadError naming it.
    """
    try:
        image = Image.open(path)
        raw_mode = _raw_mode(image)  # the decoder tile is gone after load()
        image.load()
    except (
        OSError,
        UnidentifiedImageError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error
    return image, raw_mode


def _raw_mode(image: Image.Image) -> str:
    """The stored pixel layout (e.g. ``RGB;16B``) from the decoder tile, or the mode."""
    tile = getattr(image, "tile", None) or []
    if tile:
        args = tile[0].args if hasattr(tile[0], "args") else tile[0][3]
        if isinstance(args, tuple):
            args = args[0] if args else ""
        if isinstance(args, str):
            return args
    return image.mode


def _image_to_float(image: Image.Image, raw_mode: str, path: Path) -> np.ndarray:
    """Return ``H x W x 3`` float64 in [0, 1] for any supported mode and bit depth."""
    mode = image.mode
    if mode in ("RGB", "RGBA") and ";16" in raw_mode:
        # Pillow keeps only 8 bits of 16-bit colour files; OpenCV keeps all 16
        return _sixteen_bit_colour(path)
    if mode in _SIXTEEN_BIT_GRAY_MODES:
        gray = np.asarray(image, dtype=np.float64) / 65535.0
    elif mode in ("I", "F"):
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        # NOTE: 32-bit integer and float files declare no range: values up to 1 (float
        # only) are taken as [0, 1], up to 255 as 8-bit, larger ones as 16-bit (clipped).
        # Such files are rare in defect datasets.
        peak = values.max(initial=0.0)
        maximum = 1.0 if mode == "F" and peak <= 1.0 else 255.0 if peak <= 255 else 65535.0
        gray = np.clip(values / maximum, 0.0, 1.0)
    elif mode in ("1", "L", "LA", "La"):
        gray = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    elif mode == "P":
        rgb = image.convert("RGBA").convert("RGB")
        return np.asarray(rgb, dtype=np.float64) / 255.0
    else:
        try:
            rgb = image if mode == "RGB" else image.convert("RGB")
        except (ValueError, OSError) as error:
            raise ImageReadError(f"cannot read image {path}: unsupported mode {mode}") from error
        return np.asarray(rgb, dtype=np.float64) / 255.0
    return np.repeat(gray[..., None], 3, axis=2)


def _sixteen_bit_colour(path: Path) -> np.ndarray:
    """Decode a 16-bit RGB(A) file with OpenCV into ``H x W x 3`` float64 in [0, 1]."""
    try:
        encoded = np.fromfile(path, dtype=np.uint8)  # also for non-ASCII paths
        decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    except (OSError, cv2.error) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from error
    if decoded is None or decoded.ndim != 3 or decoded.shape[2] not in (3, 4):
        raise ImageReadError(f"cannot read image {path}: OpenCV could not decode 16-bit colour")
    rgb = cv2.cvtColor(decoded[..., :3], cv2.COLOR_BGR2RGB)
    scale = 65535.0 if rgb.dtype == np.uint16 else 255.0
    return rgb.astype(np.float64) / scale
