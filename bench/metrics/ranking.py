"""Exact threshold-free pixel metrics from one sort of the scores: F1, AUROC and the PRO curve.

Pixels are split by ground truth; normal scores are sorted once and defect scores are grouped
by distinct value, so every curve is read off with binary searches instead of a re-sort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from bench.metrics.validation import iter_images

# Regions of a mask are 8-connected, as in the MVTec AD evaluation and anomalib.
REGION_STRUCTURE = np.ones((3, 3), dtype=bool)


class Scored(NamedTuple):
    """A metric value and, when it is NaN, the reason."""

    value: float
    note: str | None = None


NO_DEFECT_PIXEL = "no defect pixel in the ground truth; the metric needs at least one"
NO_NORMAL_PIXEL = "no normal pixel in the ground truth; false-positive rates are undefined"


@dataclass(frozen=True)
class PixelScores:
    """Scores of all pixels of a set of maps, split by ground truth and sorted once.

    A pixel is predicted defective when its score is ``>= threshold`` (the convention of
    scikit-learn's ``precision_recall_curve``). Build it with `from_batches`.

    Attributes:
        normal_sorted: ``M`` scores of normal pixels, ascending.
        defect_values: ``K`` distinct scores of defect pixels, ascending.
        defect_counts: ``K`` defect pixels holding each value (int64).
        region_share: ``K`` sums, over the defect pixels holding each value, of
            ``1 / size of the pixel's region`` (float64); their total is the region count.
        num_regions: Connected defect regions (8-connected) over all masks.
    """

    normal_sorted: np.ndarray
    defect_values: np.ndarray
    defect_counts: np.ndarray
    region_share: np.ndarray
    num_regions: int

    @classmethod
    def from_batches(cls, maps: list[np.ndarray], masks: list[np.ndarray]) -> PixelScores:
        """Gather and sort the pixel scores of checked inputs.

        Memory: one copy of the normal scores in the maps' dtype, plus a few arrays the size
        of the defect pixels; nothing in float64 the size of all pixels.

        Args:
            maps: ``B_i x H x W`` float batches (from ``map_batches``).
            masks: ``B_i x H x W`` bool batches matching ``maps`` image by image.
        """
        dtype = maps[0].dtype
        num_pixels = sum(batch.size for batch in maps)
        num_defect = sum(int(np.count_nonzero(batch)) for batch in masks)
        normal = np.empty(num_pixels - num_defect, dtype=dtype)
        defect = np.empty(num_defect, dtype=dtype)
        defect_weight = np.empty(num_defect, dtype=np.float64)  # 1 / region size per pixel
        num_regions = 0

        normal_end = defect_end = 0
        for anomaly_map, gt_mask in zip(iter_images(maps), iter_images(masks), strict=True):
            if not gt_mask.any():
                normal[normal_end : normal_end + anomaly_map.size] = anomaly_map.reshape(-1)
                normal_end += anomaly_map.size
                continue
            regions, count = ndimage.label(gt_mask, structure=REGION_STRUCTURE)
            region_ids = regions[gt_mask]  # defect pixels in row-major order, like the scores
            inverse_size = 1.0 / np.bincount(region_ids, minlength=count + 1)[1:]
            pixels = region_ids.size
            defect[defect_end : defect_end + pixels] = anomaly_map[gt_mask]
            defect_weight[defect_end : defect_end + pixels] = inverse_size[region_ids - 1]
            defect_end += pixels
            normal_pixels = anomaly_map[~gt_mask]
            normal[normal_end : normal_end + normal_pixels.size] = normal_pixels
            normal_end += normal_pixels.size
            num_regions += count

        normal.sort()
        order = np.argsort(defect, kind="stable")
        defect = defect[order]
        starts = np.flatnonzero(np.r_[True, defect[1:] != defect[:-1]]) if num_defect else order
        return cls(
            normal_sorted=normal,
            defect_values=defect[starts],
            defect_counts=np.diff(np.r_[starts, num_defect]).astype(np.int64),
            region_share=(
                np.add.reduceat(defect_weight[order], starts) if num_defect else defect_weight
            ),
            num_regions=num_regions,
        )

    @property
    def num_defect(self) -> int:
        """Defect pixels ``P``."""
        return int(self.defect_counts.sum())

    @property
    def num_normal(self) -> int:
        """Normal pixels ``M``."""
        return int(self.normal_sorted.size)

    @cached_property
    def _defect_at_least(self) -> np.ndarray:
        """``K`` true positives when thresholding at each defect value (int64)."""
        return np.cumsum(self.defect_counts[::-1])[::-1]

    @cached_property
    def _normal_at_least(self) -> np.ndarray:
        """``K`` false positives when thresholding at each defect value (int64)."""
        below = np.searchsorted(self.normal_sorted, self.defect_values, side="left")
        return self.num_normal - below.astype(np.int64)

    @cached_property
    def _normal_above(self) -> np.ndarray:
        """``K`` normal pixels scoring strictly above each defect value (int64)."""
        at_most = np.searchsorted(self.normal_sorted, self.defect_values, side="right")
        return self.num_normal - at_most.astype(np.int64)

    def counts_at(self, threshold: float) -> tuple[int, int]:
        """True and false positives when pixels ``>= threshold`` are flagged.

        The comparison is exact in float64, whatever the maps' dtype.
        """
        defect_cut = lowest_at_least(threshold, self.defect_values.dtype)
        normal_cut = lowest_at_least(threshold, self.normal_sorted.dtype)
        index = int(np.searchsorted(self.defect_values, defect_cut, side="left"))
        true_positives = int(self._defect_at_least[index]) if index < self.defect_values.size else 0
        below = int(np.searchsorted(self.normal_sorted, normal_cut, side="left"))
        return true_positives, self.num_normal - below

    def f1_at(self, threshold: float) -> Scored:
        """Pixel F1 when pixels ``>= threshold`` are flagged; NaN without defect pixels."""
        if self.num_defect == 0:
            return Scored(math.nan, NO_DEFECT_PIXEL)
        true_positives, false_positives = self.counts_at(threshold)
        return Scored(_f1(true_positives, false_positives, self.num_defect))

    def f1_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """F1 at every distinct defect score.

        The best F1 over all thresholds is always reached at one of these: between two defect
        values, a lower threshold only adds false positives.

        Returns:
            ``K`` thresholds (ascending) and their F1 (float64).
        """
        true_positives = self._defect_at_least
        denominator = self.num_defect + true_positives + self._normal_at_least
        return self.defect_values, 2.0 * true_positives / denominator

    def best_f1(self) -> tuple[Scored, float]:
        """Best pixel F1 over all thresholds and the threshold that reaches it.

        Among thresholds with equal F1 the lowest is returned, which is where scikit-learn's
        ascending ``precision_recall_curve`` has its first maximum.

        Returns:
            ``(Scored(f1), threshold)``; both NaN without defect pixels.
        """
        if self.num_defect == 0:
            return Scored(math.nan, NO_DEFECT_PIXEL), math.nan
        thresholds, f1 = self.f1_curve()
        best = int(np.argmax(f1))
        return Scored(float(f1[best])), float(thresholds[best])

    def auroc(self) -> Scored:
        """Pixel AUROC; NaN when either class has no pixel."""
        if self.num_defect == 0:
            return Scored(math.nan, NO_DEFECT_PIXEL)
        if self.num_normal == 0:
            return Scored(math.nan, NO_NORMAL_PIXEL)
        return Scored(
            _auroc_from_ranks(
                self.defect_counts, self._normal_at_least, self._normal_above, self.num_normal
            )
        )

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """The exact per-region-overlap curve, from the highest threshold to the lowest.

        Each point is (false-positive rate over all normal pixels, mean over regions of the
        share of the region flagged) at one threshold. A threshold where normal and defect
        pixels tie moves both at once; the curve joins the two by a straight segment, like a
        ROC curve through ties. Points where only normal pixels change lie on horizontal runs
        and are left out, which changes no area.

        Returns:
            ``2K + 2`` false-positive rates (non-decreasing, from 0 to 1) and overlaps
            (float64); NaN when there is no normal or no defect pixel.
        """
        if self.num_defect == 0 or self.num_normal == 0:
            return np.array([math.nan]), np.array([math.nan])
        # Highest threshold first: at each defect value, the point just above it (only the
        # normal pixels above have been flagged) then the point at it.
        overlap = np.cumsum(self.region_share[::-1]) / self.num_regions
        above = self._normal_above[::-1] / self.num_normal
        at_least = self._normal_at_least[::-1] / self.num_normal
        fpr = np.empty(2 * overlap.size + 2)
        pro = np.empty_like(fpr)
        fpr[0], pro[0] = 0.0, 0.0
        fpr[1:-1:2], fpr[2:-1:2] = above, at_least
        pro[1], pro[3:-1:2], pro[2:-1:2] = 0.0, overlap[:-1], overlap
        fpr[-1], pro[-1] = 1.0, overlap[-1]
        return fpr, pro

    def aupro(self, fpr_limit: float) -> Scored:
        """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit``."""
        if self.num_defect == 0:
            return Scored(math.nan, NO_DEFECT_PIXEL)
        if self.num_normal == 0:
            return Scored(math.nan, NO_NORMAL_PIXEL)
        fpr, pro = self.pro_curve()
        return Scored(area_up_to(fpr, pro, fpr_limit) / fpr_limit)


def binary_auroc(scores: np.ndarray, positive: np.ndarray, unit: str = "sample") -> Scored:
    """AUROC of 1-D scores against bool labels, ties counted half (as scikit-learn).

    Args:
        scores: ``N`` scores.
        positive: ``N`` bool labels, true for defective.
        unit: What a score belongs to (``image``), for the NaN notes.

    Returns:
        The AUROC, or NaN with a note when a class is empty.
    """
    if not positive.any():
        return Scored(math.nan, f"no defective {unit}; AUROC needs both classes")
    if positive.all():
        return Scored(math.nan, f"no normal {unit}; AUROC needs both classes")
    negative_sorted = np.sort(scores[~positive])
    values, counts = np.unique(scores[positive], return_counts=True)
    num_negative = negative_sorted.size
    at_least = num_negative - np.searchsorted(negative_sorted, values, side="left")
    above = num_negative - np.searchsorted(negative_sorted, values, side="right")
    return Scored(_auroc_from_ranks(counts, at_least, above, num_negative))


def area_up_to(x: np.ndarray, y: np.ndarray, x_limit: float) -> float:
    """Trapezoid area under a piecewise-linear curve from ``x[0]`` to ``x_limit``.

    The curve is cut at ``x_limit`` by linear interpolation, as the MVTec AD evaluation does.

    Args:
        x: Non-decreasing abscissae.
        y: Ordinates.
        x_limit: Where to stop.
    """
    x0, x1, y0, y1 = x[:-1], x[1:], y[:-1], y[1:]
    right = np.minimum(x1, x_limit)
    width = np.clip(right - x0, 0.0, None)
    span = x1 - x0
    share = np.divide(right - x0, span, out=np.ones_like(span), where=span > 0)
    y_right = y0 + (y1 - y0) * share
    return float(np.sum(width * (y0 + y_right)) / 2.0)


def _auroc_from_ranks(
    counts: np.ndarray, at_least: np.ndarray, above: np.ndarray, num_negative: int
) -> float:
    """Mann-Whitney AUROC from, per distinct positive value, negatives ``>=`` and ``>`` it.

    ``2 * U = sum(count * (negatives below + negatives at or below))`` is summed in int64,
    which is exact while ``2 * positives * negatives < 2**63``.
    """
    below = num_negative - at_least
    at_most = num_negative - above
    twice_u = int(np.dot(counts.astype(np.int64), (below + at_most).astype(np.int64)))
    return twice_u / (2.0 * float(counts.sum()) * num_negative)


def _f1(true_positives: int, false_positives: int, num_defect: int) -> float:
    return 2.0 * true_positives / (num_defect + true_positives + false_positives)


def lowest_at_least(threshold: float, dtype: np.dtype) -> np.floating:
    """Smallest value of ``dtype`` that is ``>= threshold``: ``x >= it`` iff ``x >= threshold``."""
    with np.errstate(over="ignore"):
        cut = np.asarray(threshold).astype(dtype)
    if float(cut) < threshold:
        cut = np.nextafter(cut, np.asarray(np.inf, dtype=dtype))
    return cut[()]
