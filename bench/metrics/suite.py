"""The per-class metric suite the runner calls, the val threshold rule, and one-metric helpers."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.metrics.ranking import (
    NO_DEFECT_PIXEL,
    PixelScores,
    Scored,
    binary_auroc,
    lowest_at_least,
)
from bench.metrics.validation import (
    ArrayLike,
    MapInput,
    check_threshold,
    image_labels,
    iter_images,
    map_batches,
    mask_batches,
    raise_if_non_finite,
)

logger = logging.getLogger(__name__)

METRIC_KEYS = (
    "f1_oracle",
    "f1_val",
    "f1_native",
    "threshold_oracle",
    "pixel_auroc",
    "aupro",
    "image_auroc",
)
"""Keys of `MetricResult.values`, in report order."""

DEFAULT_FPR_LIMIT = 0.3
DEFAULT_VAL_QUANTILE = 0.999

NO_VAL_THRESHOLD = "no val threshold given (no held-out normal images)"
NO_NATIVE_THRESHOLD = "the method has no native threshold"
_EXPECTED_NOTES = (NO_VAL_THRESHOLD, NO_NATIVE_THRESHOLD)


@dataclass(frozen=True)
class MetricResult:
    """Metrics of one method on one class under one setting.

    Attributes:
        values: One float per key of `METRIC_KEYS`; NaN where undefined.
        notes: For each NaN value, why it is NaN.
    """

    values: dict[str, float]
    notes: dict[str, str]


def evaluate(
    anomaly_maps: MapInput,
    gt_masks: MapInput,
    *,
    val_threshold: float | None,
    native_threshold: float | None,
    labels: ArrayLike | Sequence[int] | None = None,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
) -> MetricResult:
    """Compute every metric of one class exactly, sorting the pixel scores once.

    A pixel is flagged defective when its score is ``>= threshold``.

    * ``f1_oracle``: best pixel F1 over all thresholds of the test maps (an upper bound);
      ``threshold_oracle`` is the threshold that reaches it (the lowest one on ties).
    * ``f1_val``: pixel F1 at ``val_threshold`` (see `val_threshold`).
    * ``f1_native``: pixel F1 at the method's own threshold.
    * ``pixel_auroc``: ROC AUC over all pixels, ties counted half (as scikit-learn).
    * ``aupro``: area under the per-region-overlap curve up to ``fpr_limit`` false-positive
      rate, divided by ``fpr_limit``; regions are the 8-connected components of each mask.
    * ``image_auroc``: ROC AUC of the map maximum against the image labels.

    Args:
        anomaly_maps: ``N x H x W`` float maps, higher = more defective (numpy or torch), or
            a sequence of ``B_i x H x W`` batches; the split changes no value.
        gt_masks: ``N x H x W`` bool masks (or batches, split any way).
        val_threshold: Threshold chosen on held-out normal images, or ``None``.
        native_threshold: The method's own threshold, or ``None``.
        labels: ``N`` image labels (1 defective); by default an image is defective when its
            mask has a defect pixel.
        fpr_limit: Upper end of the AUPRO integration, in ``(0, 1]``.

    Returns:
        The values and, for each NaN among them, the reason.

    Raises:
        NonFiniteMapError: If a map holds NaN or inf (named by image index).
        ValueError: If shapes, mask values, labels, thresholds or ``fpr_limit`` are invalid.
        TypeError: If an input is not a numpy array or torch tensor of numbers.
    """
    maps = map_batches(anomaly_maps)
    masks = mask_batches(gt_masks, maps)
    raise_if_non_finite(maps)
    val = check_threshold(val_threshold, "val_threshold")
    native = check_threshold(native_threshold, "native_threshold")
    _check_fpr_limit(fpr_limit)
    defective = _image_labels(masks, labels)

    scores = PixelScores.from_batches(maps, masks)
    f1_oracle, threshold_oracle = scores.best_f1()
    results = {
        "f1_oracle": f1_oracle,
        "f1_val": scores.f1_at(val) if val is not None else Scored(math.nan, NO_VAL_THRESHOLD),
        "f1_native": (
            scores.f1_at(native) if native is not None else Scored(math.nan, NO_NATIVE_THRESHOLD)
        ),
        "threshold_oracle": Scored(threshold_oracle, f1_oracle.note),
        "pixel_auroc": scores.auroc(),
        "aupro": scores.aupro(fpr_limit),
        "image_auroc": binary_auroc(_image_scores(maps), defective, unit="image"),
    }
    _warn_if_constant(scores)

    for key, (_, note) in results.items():
        if note is not None:
            level = logging.DEBUG if note in _EXPECTED_NOTES else logging.WARNING
            logger.log(level, "%s is NaN: %s", key, note)
    return MetricResult(
        values={key: float(results[key].value) for key in METRIC_KEYS},
        notes={key: note for key, (_, note) in results.items() if note is not None},
    )


def val_threshold(normal_maps: MapInput, *, quantile: float = DEFAULT_VAL_QUANTILE) -> float:
    """Choose a pixel threshold from maps of held-out normal images only.

    Rule: the lowest threshold that flags at most ``1 - quantile`` of the normal pixels
    (pixels ``>= threshold`` are flagged); with the default, at most 0.1 % of them. A pooled
    high quantile rather than the maximum: the maximum grows with the number of held-out
    images and follows a single hot pixel, while a quantile stays put. The threshold is a
    score seen in the normal maps; when the top scores tie so that any seen score flags too
    many pixels, it is the next representable value above them (nothing in them is flagged).

    Args:
        normal_maps: ``N x H x W`` maps of normal images (or batches).
        quantile: Share of normal pixels that must stay below the threshold, in ``(0, 1]``;
            ``1`` gives the smallest threshold above every normal score.

    Returns:
        The threshold.

    Raises:
        NonFiniteMapError: If a map holds NaN or inf (named by image index).
        ValueError: If ``quantile`` is outside ``(0, 1]`` or there is no map.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1]; found {quantile!r}")
    maps = map_batches(normal_maps, "normal_maps")
    raise_if_non_finite(maps)

    scores = np.concatenate([batch.reshape(-1) for batch in maps])
    # Pixels allowed above the threshold; the epsilon keeps e.g. 0.001 * 1000 at 1.
    allowed = min(int(math.floor((1.0 - quantile) * scores.size + 1e-9)), scores.size)
    if allowed == scores.size:
        return float(scores.min())
    highest_kept = np.partition(scores, scores.size - allowed - 1)[scores.size - allowed - 1]
    above = scores[scores > highest_kept]
    if above.size:
        threshold = above.min()
    else:
        threshold = np.nextafter(highest_kept, np.asarray(np.inf, dtype=scores.dtype))
    logger.debug(
        "val threshold %.6g flags %d of %d normal pixels",
        threshold,
        int(np.count_nonzero(scores >= threshold)),
        scores.size,
    )
    return float(threshold)


def f1_at_threshold(anomaly_maps: MapInput, gt_masks: MapInput, threshold: float) -> float:
    """Pixel F1 when pixels ``>= threshold`` are flagged.

    Args:
        anomaly_maps: ``N x H x W`` maps (or batches).
        gt_masks: ``N x H x W`` bool masks (or batches).
        threshold: Finite threshold; compared exactly, whatever the maps' dtype.

    Returns:
        ``2 TP / (2 TP + FP + FN)``; NaN (logged) when the masks have no defect pixel.
    """
    maps = map_batches(anomaly_maps)
    masks = mask_batches(gt_masks, maps)
    raise_if_non_finite(maps)
    value = check_threshold(threshold, "threshold")
    true_positives = false_positives = num_defect = 0
    for anomaly_map, gt_mask in zip(iter_images(maps), iter_images(masks), strict=True):
        flagged = anomaly_map >= lowest_at_least(value, anomaly_map.dtype)
        hits = int(np.count_nonzero(flagged & gt_mask))
        true_positives += hits
        false_positives += int(np.count_nonzero(flagged)) - hits
        num_defect += int(np.count_nonzero(gt_mask))
    if num_defect == 0:
        return _logged("f1", Scored(math.nan, NO_DEFECT_PIXEL))
    return 2.0 * true_positives / (num_defect + true_positives + false_positives)


def best_f1(anomaly_maps: MapInput, gt_masks: MapInput) -> tuple[float, float]:
    """Best pixel F1 over all thresholds (the oracle) and the lowest threshold reaching it.

    Args:
        anomaly_maps: ``N x H x W`` maps (or batches).
        gt_masks: ``N x H x W`` bool masks (or batches).

    Returns:
        ``(f1, threshold)``; both NaN (logged) when the masks have no defect pixel.
    """
    f1, threshold = _pixel_scores(anomaly_maps, gt_masks).best_f1()
    return _logged("best f1", f1), threshold


def pixel_auroc(anomaly_maps: MapInput, gt_masks: MapInput) -> float:
    """Pixel ROC AUC, ties counted half; NaN (logged) when a class has no pixel.

    Args:
        anomaly_maps: ``N x H x W`` maps (or batches).
        gt_masks: ``N x H x W`` bool masks (or batches).
    """
    return _logged("pixel AUROC", _pixel_scores(anomaly_maps, gt_masks).auroc())


def aupro(
    anomaly_maps: MapInput, gt_masks: MapInput, fpr_limit: float = DEFAULT_FPR_LIMIT
) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit``.

    Args:
        anomaly_maps: ``N x H x W`` maps (or batches).
        gt_masks: ``N x H x W`` bool masks (or batches); regions are 8-connected.
        fpr_limit: Upper end of the integration, in ``(0, 1]``.

    Returns:
        Area divided by ``fpr_limit`` (1 is perfect); NaN (logged) without defect or normal
        pixels.
    """
    _check_fpr_limit(fpr_limit)
    return _logged("AUPRO", _pixel_scores(anomaly_maps, gt_masks).aupro(fpr_limit))


def image_auroc(anomaly_maps: MapInput, labels: ArrayLike | Sequence[int]) -> float:
    """Image ROC AUC with the map maximum as the image score.

    Args:
        anomaly_maps: ``N x H x W`` maps (or batches).
        labels: ``N`` labels, 1 for defective images.

    Returns:
        The AUROC; NaN (logged) when all images have the same label.
    """
    maps = map_batches(anomaly_maps)
    raise_if_non_finite(maps)
    defective = image_labels(labels, sum(len(batch) for batch in maps))
    return _logged("image AUROC", binary_auroc(_image_scores(maps), defective, unit="image"))


def _pixel_scores(anomaly_maps: MapInput, gt_masks: MapInput) -> PixelScores:
    maps = map_batches(anomaly_maps)
    masks = mask_batches(gt_masks, maps)
    raise_if_non_finite(maps)
    return PixelScores.from_batches(maps, masks)


def _image_scores(maps: list[np.ndarray]) -> np.ndarray:
    """``N`` map maxima."""
    return np.concatenate([batch.reshape(len(batch), -1).max(axis=1) for batch in maps])


def _image_labels(masks: list[np.ndarray], labels: ArrayLike | Sequence[int] | None) -> np.ndarray:
    from_masks = np.concatenate([batch.reshape(len(batch), -1).any(axis=1) for batch in masks])
    if labels is None:
        return from_masks
    defective = image_labels(labels, from_masks.size)
    clean_but_defective = int(np.count_nonzero(defective & ~from_masks))
    if clean_but_defective:
        logger.warning(
            "%d image(s) labelled defective have an empty mask; image AUROC uses the labels",
            clean_but_defective,
        )
    return defective


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1]; found {fpr_limit!r}")


def _warn_if_constant(scores: PixelScores) -> None:
    parts = (scores.normal_sorted, scores.defect_values)
    extremes = np.concatenate([part[[0, -1]] for part in parts if part.size])
    if extremes.min() == extremes.max():
        logger.warning(
            "every pixel scores %.6g: pixel AUROC is 0.5 and the oracle F1 flags every pixel",
            extremes[0],
        )


def _logged(name: str, scored: Scored) -> float:
    if scored.note is not None:
        logger.warning("%s is NaN: %s", name, scored.note)
    return scored.value
