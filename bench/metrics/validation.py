"""Checks and conversions of anomaly maps, ground-truth masks, labels and thresholds.

Every metric goes through these before computing anything, so a bad input fails with a
message that names the argument, the image and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
"""One ``N x H x W`` array (numpy or torch)."""

MapInput = ArrayLike | Sequence[ArrayLike]
"""An ``N x H x W`` array, or a sequence of ``B_i x H x W`` batches taken in order."""


class NonFiniteMapError(ValueError):
    """An anomaly map holds NaN or infinite values.

    Attributes:
        method: The method that produced the map, or ``None`` when not known.
        sample_id: Sample id of the first offending image, or ``None`` when not known.
        index: Position of that image among the maps.
        num_values: Non-finite values in that image.
        num_images: Images with at least one non-finite value.
    """

    def __init__(
        self,
        method: str | None,
        sample_id: str | None,
        index: int,
        num_values: int,
        num_images: int,
    ):
        self.method = method
        self.sample_id = sample_id
        self.index = index
        self.num_values = num_values
        self.num_images = num_images
        source = f"method {method!r}" if method is not None else "an anomaly map"
        image = f"{sample_id!r} (index {index})" if sample_id is not None else f"index {index}"
        others = f" and in {num_images - 1} more image(s)" if num_images > 1 else ""
        super().__init__(
            f"{source} returned {num_values} non-finite value(s) (NaN or inf) in the anomaly "
            f"map of image {image}{others}; anomaly maps must be finite"
        )


def validate_maps(anomaly_maps: MapInput, method: str, sample_ids: Sequence[str]) -> None:
    """Check that a method's maps are well formed and finite.

    Args:
        anomaly_maps: ``N x H x W`` real-valued maps (numpy or torch), or a sequence of
            ``B_i x H x W`` batches.
        method: Name of the method that produced the maps, used in error messages.
        sample_ids: The ``N`` sample ids, in the order of the maps.

    Raises:
        NonFiniteMapError: If a map holds NaN or inf; it names the method and the first
            offending sample id.
        ValueError: If the number of sample ids is not the number of maps, or a map is not
            ``H x W``.
        TypeError: If the maps are not numeric arrays.
    """
    batches = map_batches(anomaly_maps)
    num_images = sum(len(batch) for batch in batches)
    if len(sample_ids) != num_images:
        raise ValueError(
            f"sample_ids has {len(sample_ids)} entries but anomaly_maps of method {method!r} "
            f"holds {num_images} maps; expected one sample id per map"
        )
    raise_if_non_finite(batches, method=method, sample_ids=sample_ids)


def raise_if_non_finite(
    batches: list[np.ndarray],
    method: str | None = None,
    sample_ids: Sequence[str] | None = None,
) -> None:
    """Raise `NonFiniteMapError` naming the first image whose map is not finite.

    Args:
        batches: ``B_i x H x W`` float batches from `map_batches`.
        method: Method name for the message, if known.
        sample_ids: Sample ids of all images; without them images are named by index.
    """
    bad_images: list[tuple[int, int]] = []  # (image index, non-finite values)
    offset = 0
    for batch in batches:
        finite = np.isfinite(batch).reshape(len(batch), -1)
        for index in np.flatnonzero(~finite.all(axis=1)):
            bad_images.append((offset + int(index), int((~finite[index]).sum())))
        offset += len(batch)
    if not bad_images:
        return

    index, num_values = bad_images[0]
    sample_id = sample_ids[index] if sample_ids is not None else None
    raise NonFiniteMapError(method, sample_id, index, num_values, len(bad_images))


def map_batches(anomaly_maps: MapInput, name: str = "anomaly_maps") -> list[np.ndarray]:
    """Turn maps into a list of real-valued numpy batches without copying where possible.

    ``float32`` and ``float64`` stay as they are (ties are kept exactly as given);
    ``float16``/``bfloat16`` become ``float32``; integers and bools become ``float64``.

    Args:
        anomaly_maps: ``N x H x W`` array, or a sequence of ``B_i x H x W`` batches.
        name: Argument name for error messages.

    Returns:
        Non-empty list of ``B_i x H x W`` arrays of one float dtype.

    Raises:
        TypeError: If an entry is not a numpy array or torch tensor, or not real-valued.
        ValueError: If a batch is not 3-D or there is no map at all.
    """
    batches = [_as_numpy(batch, f"{name}[{i}]") for i, batch in enumerate(_split(anomaly_maps))]
    for i, batch in enumerate(batches):
        if batch.dtype.kind not in "fiub":
            raise TypeError(
                f"{name} batch {i} has dtype {batch.dtype}; expected real-valued maps "
                "(float, int or bool)"
            )
    dtype = np.result_type(*[_float_dtype(batch.dtype) for batch in batches]) if batches else None
    batches = [batch.astype(dtype, copy=False) for batch in batches]
    _check_images(batches, name)
    return batches


def mask_batches(gt_masks: MapInput, maps: list[np.ndarray]) -> list[np.ndarray]:
    """Turn ground-truth masks into bool batches that match the maps image by image.

    Args:
        gt_masks: ``N x H x W`` masks (bool, or numbers that are only 0 and 1), or a
            sequence of batches; the split into batches need not match the maps'.
        maps: Batches from `map_batches`.

    Returns:
        ``B_i x H x W`` bool arrays.

    Raises:
        TypeError: If an entry is not a numpy array or torch tensor.
        ValueError: If a mask holds values other than 0 and 1, or the masks do not have the
            maps' count and image sizes.
    """
    masks = [_as_numpy(batch, f"gt_masks[{i}]") for i, batch in enumerate(_split(gt_masks))]
    _check_images(masks, "gt_masks")
    for i, batch in enumerate(masks):
        if batch.dtype != np.bool_:
            outside = (batch != 0) & (batch != 1)
            if outside.any():
                raise ValueError(
                    f"gt_masks batch {i} holds {batch[outside].flat[0]!r} (dtype {batch.dtype}); "
                    "expected bool masks or numbers that are only 0 and 1"
                )
            masks[i] = batch != 0

    map_shapes = _image_shapes(maps)
    mask_shapes = _image_shapes(masks)
    if len(map_shapes) != len(mask_shapes):
        raise ValueError(
            f"gt_masks holds {len(mask_shapes)} masks but anomaly_maps holds {len(map_shapes)} "
            "maps; expected one mask per map"
        )
    for index, (map_shape, mask_shape) in enumerate(zip(map_shapes, mask_shapes, strict=True)):
        if map_shape != mask_shape:
            raise ValueError(
                f"gt_masks image {index} is {mask_shape[0]} x {mask_shape[1]} but its anomaly "
                f"map is {map_shape[0]} x {map_shape[1]}; expected equal sizes"
            )
    return masks


def image_labels(labels: ArrayLike | Sequence[int], num_images: int) -> np.ndarray:
    """Check explicit image labels (0 normal, 1 defective).

    Args:
        labels: ``N`` labels (bool, or numbers that are only 0 and 1).
        num_images: Number of maps they belong to.

    Returns:
        ``N`` bool array, true for defective images.

    Raises:
        ValueError: If the count or the values are wrong.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    values = np.asarray(labels).reshape(-1)
    if len(values) != num_images:
        raise ValueError(
            f"labels holds {len(values)} entries but there are {num_images} maps; "
            "expected one label per map"
        )
    if values.dtype != np.bool_:
        if values.dtype.kind not in "fiu" or np.any((values != 0) & (values != 1)):
            raise ValueError(f"labels must be 0 (normal) or 1 (defective); found {values!r}")
        values = values != 0
    return values


def check_threshold(value: float | None, name: str) -> float | None:
    """Return a threshold as a Python float, or ``None`` when not given.

    Raises:
        ValueError: If the threshold is NaN or infinite.
        TypeError: If it is not a real number.
    """
    if value is None:
        return None
    if isinstance(value, torch.Tensor | np.ndarray):
        value = value.item()
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number or None; found {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; found {value!r}")
    return float(value)


def iter_images(batches: list[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield the ``H x W`` images of a list of batches, in order."""
    for batch in batches:
        yield from batch


def _split(value: MapInput) -> list[ArrayLike]:
    if isinstance(value, np.ndarray | torch.Tensor):
        return [value]
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    raise TypeError(
        f"expected an N x H x W numpy array or torch tensor, or a sequence of them; "
        f"found {type(value).__name__}"
    )


def _as_numpy(value: ArrayLike, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        return value.numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"{name} is a {type(value).__name__}; expected a numpy array or torch tensor")


def _float_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind == "f":
        return np.dtype(np.float32) if dtype.itemsize < 4 else dtype
    # Integers and bools up to 2**53 are exact in float64.
    return np.dtype(np.float64)


def _check_images(batches: list[np.ndarray], name: str) -> None:
    if not batches or sum(len(batch) for batch in batches) == 0:
        raise ValueError(f"{name} holds no image; expected at least one N x H x W map")
    for i, batch in enumerate(batches):
        if batch.ndim != 3:
            raise ValueError(f"{name} batch {i} has shape {tuple(batch.shape)}; expected N x H x W")


def _image_shapes(batches: list[np.ndarray]) -> list[tuple[int, int]]:
    return [tuple(batch.shape[1:]) for batch in batches for _ in range(len(batch))]
