"""Metrics against scikit-learn, hand-worked examples and a slow threshold sweep."""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

from bench.metrics import (
    METRIC_KEYS,
    NonFiniteMapError,
    PixelScores,
    aupro,
    best_f1,
    evaluate,
    f1_at_threshold,
    image_auroc,
    pixel_auroc,
    val_threshold,
    validate_maps,
)
from bench.metrics.validation import map_batches, mask_batches

TOL = 1e-6


def _case(seed: int, ties: bool, n: int = 8, size: int = 20, dtype=np.float32):
    """Maps with blob-shaped defects on most images; ``ties`` draws scores from 5 levels."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for image in range(2, n):  # the first two images stay normal
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, size - 4, size=2)
            height, width = rng.integers(1, 6, size=2)
            masks[image, top : top + height, left : left + width] = True
    if ties:
        maps = rng.integers(0, 5, size=masks.shape) / 4.0
        maps += masks * rng.integers(0, 2, size=masks.shape) / 4.0
    else:
        maps = rng.random(masks.shape) + 0.6 * masks * rng.random(masks.shape)
    return maps.astype(dtype), masks


def _sklearn_best_f1(masks: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    precision, recall, thresholds = precision_recall_curve(masks.ravel(), maps.ravel())
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )[:-1]  # the last point has no threshold
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def _slow_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Sweep every distinct score; regions from OpenCV (8-connected); loop integration."""
    regions = []
    for image, mask in enumerate(masks):
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        regions += [(image, labels == region) for region in range(1, count)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        flagged = maps >= threshold
        fpr = (flagged & normal).sum() / normal.sum()
        overlap = np.mean([flagged[image][region].mean() for image, region in regions])
        points.append((fpr, overlap))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


CASES = [(seed, ties) for seed in (0, 1, 2) for ties in (False, True)]


# Agreement with scikit-learn


@pytest.mark.parametrize(("seed", "ties"), CASES)
def test_pixel_auroc_matches_sklearn(seed, ties):
    maps, masks = _case(seed, ties)
    assert pixel_auroc(maps, masks) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL
    )


@pytest.mark.parametrize(("seed", "ties"), CASES)
def test_best_f1_and_threshold_match_sklearn(seed, ties):
    maps, masks = _case(seed, ties)
    expected_f1, expected_threshold = _sklearn_best_f1(masks, maps)
    f1, threshold = best_f1(maps, masks)
    assert f1 == pytest.approx(expected_f1, abs=TOL)
    assert threshold == expected_threshold
    assert f1_at_threshold(maps, masks, threshold) == pytest.approx(f1, abs=1e-12)


def test_best_f1_takes_the_lowest_of_equal_thresholds_like_sklearn():
    # Flagging >= 0.9 gives TP 1, FP 0; flagging >= 0.3 gives TP 2, FP 2: F1 2/3 both times.
    maps = np.array([[[0.9, 0.5, 0.4, 0.3]]])
    masks = np.array([[[True, False, False, True]]])
    assert _sklearn_best_f1(masks, maps) == pytest.approx((2 / 3, 0.3))
    assert best_f1(maps, masks) == pytest.approx((2 / 3, 0.3))


@pytest.mark.parametrize(("seed", "ties"), CASES)
def test_f1_at_threshold_matches_sklearn(seed, ties):
    maps, masks = _case(seed, ties)
    for threshold in (0.0, 0.25, 0.5, 0.7531, 1.0, float(maps.max()) + 1):
        expected = f1_score(masks.ravel(), maps.ravel() >= threshold, zero_division=0.0)
        assert f1_at_threshold(maps, masks, threshold) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(("seed", "ties"), CASES)
def test_image_auroc_matches_sklearn(seed, ties):
    maps, masks = _case(seed, ties, n=12)
    labels = masks.any(axis=(1, 2))
    expected = roc_auc_score(labels, maps.max(axis=(1, 2)))
    assert image_auroc(maps, labels.astype(int)) == pytest.approx(expected, abs=TOL)


def test_threshold_between_float32_values_is_compared_exactly():
    maps = np.array([[[0.1, 0.2, 0.3, 0.4]]], dtype=np.float32)
    masks = np.array([[[False, False, True, True]]])
    # float32(0.3) is 0.3000000119; 0.30000002 lies above it but rounds to it in float32.
    threshold = 0.30000002
    expected = f1_score(masks.ravel(), maps.ravel().astype(np.float64) >= threshold)
    assert expected == pytest.approx(2 / 3)
    assert f1_at_threshold(maps, masks, threshold) == pytest.approx(expected, abs=1e-12)
    batches = map_batches(maps)
    scores = PixelScores.from_batches(batches, mask_batches(masks, batches))
    assert scores.counts_at(threshold) == (1, 0)
    assert scores.counts_at(0.300000005) == (2, 0)
    assert scores.f1_at(threshold).value == pytest.approx(2 / 3, abs=1e-12)


def test_evaluate_agrees_with_sklearn_and_the_single_metrics():
    maps, masks = _case(3, ties=True)
    result = evaluate(maps, masks, val_threshold=0.5, native_threshold=0.75)
    assert tuple(result.values) == METRIC_KEYS
    values = result.values
    expected_f1, expected_threshold = _sklearn_best_f1(masks, maps)
    assert values["f1_oracle"] == pytest.approx(expected_f1, abs=TOL)
    assert values["threshold_oracle"] == expected_threshold
    for key, threshold in (("f1_val", 0.5), ("f1_native", 0.75)):
        expected = f1_score(masks.ravel(), maps.ravel() >= threshold)
        assert values[key] == pytest.approx(expected, abs=TOL)
    assert values["pixel_auroc"] == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL
    )
    assert values["image_auroc"] == pytest.approx(
        roc_auc_score(masks.any(axis=(1, 2)), maps.max(axis=(1, 2))), abs=TOL
    )
    assert values["aupro"] == pytest.approx(_slow_aupro(maps, masks, 0.3), abs=1e-9)
    assert result.notes == {}


@pytest.mark.parametrize("ties", [False, True])
def test_evaluate_is_the_same_under_any_batch_split(ties):
    maps, masks = _case(4, ties, n=9)
    whole = evaluate(maps, masks, val_threshold=0.6, native_threshold=None)
    split_maps = [maps[:2], maps[2:7], maps[7:]]
    split_masks = [masks[:5], masks[5:6], masks[6:]]
    as_batches = evaluate(split_maps, split_masks, val_threshold=0.6, native_threshold=None)
    as_torch = evaluate(
        [torch.from_numpy(m) for m in split_maps],
        torch.from_numpy(masks),
        val_threshold=0.6,
        native_threshold=None,
    )
    np.testing.assert_array_equal(list(whole.values.values()), list(as_batches.values.values()))
    np.testing.assert_array_equal(list(whole.values.values()), list(as_torch.values.values()))
    assert whole.notes == as_batches.notes == as_torch.notes


def test_integer_and_float16_maps_give_the_float_results():
    rng = np.random.default_rng(5)
    levels = rng.integers(0, 50, size=(4, 10, 10))
    masks = rng.random((4, 10, 10)) < 0.3
    expected = roc_auc_score(masks.ravel(), levels.ravel())
    assert pixel_auroc(levels, masks) == pytest.approx(expected, abs=TOL)
    half = torch.from_numpy(levels / 64).half()
    assert pixel_auroc(half, torch.from_numpy(masks).int()) == pytest.approx(expected, abs=TOL)


# AUPRO


def test_aupro_hand_worked_example():
    # Regions: A = the two top-left pixels, B = the bottom-right pixel; 5 normal pixels.
    # Curve (FPR, PRO): (0, 0) (0, .25) (.2, .25) (.2, .75) (.4, .75) (.4, 1) ... (1, 1).
    # Area to 0.3: 0.2 * 0.25 + 0.1 * 0.75 = 0.125, / 0.3; to 0.5: 0.05 + 0.15 + 0.1 = 0.3, / 0.5.
    maps = np.array([[[0.9, 0.4, 0.8, 0.1], [0.2, 0.3, 0.5, 0.7]]])
    masks = np.array([[[1, 1, 0, 0], [0, 0, 0, 1]]], dtype=bool)
    assert aupro(maps, masks) == pytest.approx(0.125 / 0.3, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=0.5) == pytest.approx(0.6, abs=1e-12)


def test_aupro_joins_a_tie_of_normal_and_defect_pixels_by_a_straight_line():
    # One threshold flags the defect and half the normal pixels: the curve is y = 2x.
    maps = np.array([[[0.5, 0.5, 0.1]]])
    masks = np.array([[[True, False, False]]])
    assert aupro(maps, masks) == pytest.approx(0.3 * 0.6 / 2 / 0.3, abs=1e-12)


def test_aupro_regions_are_eight_connected():
    # The diagonal pair is one region (half found at 0.9), the single pixel another:
    # PRO at 0.9 is (1/2 + 0) / 2 = 0.25 over the first 0.3 of FPR (4-connected would be 1/3).
    maps = np.array([[[0.9, 0.5, 0.4, 0.1], [0.3, 0.1, 0.2, 0.35]]])
    masks = np.array([[[1, 0, 0, 1], [0, 1, 0, 0]]], dtype=bool)
    assert aupro(maps, masks) == pytest.approx(0.25, abs=1e-12)


@pytest.mark.parametrize(("seed", "ties"), CASES)
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_a_slow_threshold_sweep(seed, ties, fpr_limit):
    maps, masks = _case(seed, ties, n=5, size=16)
    expected = _slow_aupro(maps, masks, fpr_limit)
    assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-9)


def test_pro_curve_runs_from_origin_to_one():
    maps, masks = _case(6, ties=True)
    batches = map_batches(maps)
    scores = PixelScores.from_batches(batches, mask_batches(masks, batches))
    # The one full-size copy keeps the maps' dtype; counts are integers.
    assert scores.normal_sorted.dtype == np.float32
    assert scores.normal_sorted.size == (~masks).sum()
    assert scores.defect_counts.dtype == np.int64
    assert scores.defect_counts.sum() == masks.sum()
    assert scores.region_share.sum() == pytest.approx(scores.num_regions)
    fpr, pro = scores.pro_curve()
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert fpr[-1] == 1.0
    assert pro[-1] == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(fpr) >= 0)
    assert np.all(np.diff(pro) >= -1e-12)


# The val threshold


def test_val_threshold_flags_at_most_the_allowed_share():
    normal_maps = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    assert val_threshold(normal_maps) == 999.0  # 0.1 % of 1000 pixels: one may be flagged
    assert val_threshold(normal_maps, quantile=0.99) == 990.0
    assert val_threshold(normal_maps, quantile=1.0) == np.nextafter(np.float32(999), np.inf)


def test_val_threshold_with_tied_top_scores_flags_none_of_them():
    normal_maps = np.zeros((2, 10, 10))
    normal_maps[0, 0, :5] = 7.0  # 5 of 200 pixels tie at the top: more than 1 % allowed
    threshold = val_threshold(normal_maps, quantile=0.99)
    assert threshold == np.nextafter(7.0, np.inf)
    assert val_threshold(np.full((1, 4, 4), 3.0)) == np.nextafter(3.0, np.inf)


@pytest.mark.parametrize("seed", [0, 1])
def test_val_threshold_is_the_lowest_allowed_and_ignores_the_split(seed):
    rng = np.random.default_rng(seed)
    normal_maps = (rng.integers(0, 40, size=(6, 20, 20)) / 8).astype(np.float32)
    threshold = val_threshold(normal_maps, quantile=0.98)
    allowed = math.floor(0.02 * normal_maps.size + 1e-9)
    assert np.count_nonzero(normal_maps >= threshold) <= allowed
    lower = normal_maps[normal_maps < threshold]
    assert lower.size == 0 or np.count_nonzero(normal_maps >= lower.max()) > allowed
    assert val_threshold([normal_maps[:1], normal_maps[1:]], quantile=0.98) == threshold


# Degenerate inputs


def test_no_defect_pixel_gives_nan_with_reasons(caplog):
    maps, _ = _case(7, ties=False, n=4)
    masks = np.zeros(maps.shape, dtype=bool)
    with caplog.at_level(logging.WARNING, logger="bench.metrics"):
        result = evaluate(maps, masks, val_threshold=0.5, native_threshold=0.5)
    for key in ("f1_oracle", "f1_val", "f1_native", "threshold_oracle", "pixel_auroc", "aupro"):
        assert math.isnan(result.values[key]), key
        assert "no defect pixel" in result.notes[key]
    assert math.isnan(result.values["image_auroc"])
    assert "no defective image" in result.notes["image_auroc"]
    assert "pixel_auroc is NaN: no defect pixel" in caplog.text
    assert math.isnan(pixel_auroc(maps, masks))
    assert math.isnan(aupro(maps, masks))
    assert all(math.isnan(value) for value in best_f1(maps, masks))
    assert math.isnan(f1_at_threshold(maps, masks, 0.5))


def test_no_normal_pixel():
    maps, _ = _case(8, ties=False, n=3)
    masks = np.ones(maps.shape, dtype=bool)
    result = evaluate(maps, masks, val_threshold=None, native_threshold=None)
    assert result.values["f1_oracle"] == 1.0
    assert result.values["threshold_oracle"] == float(maps.min())
    for key in ("pixel_auroc", "aupro"):
        assert math.isnan(result.values[key])
        assert "no normal pixel" in result.notes[key]
    assert "no normal image" in result.notes["image_auroc"]


def test_no_normal_image_only_makes_image_auroc_nan():
    maps, masks = _case(9, ties=False)
    maps, masks = maps[2:], masks[2:]  # drop the normal images
    result = evaluate(maps, masks, val_threshold=None, native_threshold=None)
    assert set(result.notes) == {"f1_val", "f1_native", "image_auroc"}
    assert "no normal image" in result.notes["image_auroc"]
    assert math.isnan(image_auroc(maps, np.ones(len(maps))))
    assert result.values["pixel_auroc"] == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=TOL
    )


def test_missing_thresholds_are_nan_with_reasons_logged_at_debug(caplog):
    maps, masks = _case(10, ties=False)
    with caplog.at_level(logging.WARNING, logger="bench.metrics"):
        result = evaluate(maps, masks, val_threshold=None, native_threshold=None)
    assert result.notes == {
        "f1_val": "no val threshold given (no held-out normal images)",
        "f1_native": "the method has no native threshold",
    }
    assert caplog.text == ""


def test_constant_maps_give_defined_values_and_a_warning(caplog):
    _, masks = _case(11, ties=False)
    maps = np.full(masks.shape, 0.25, dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="bench.metrics"):
        result = evaluate(maps, masks, val_threshold=0.3, native_threshold=0.25)
    defect, normal = masks.sum(), (~masks).sum()
    assert result.values["pixel_auroc"] == 0.5
    assert result.values["image_auroc"] == 0.5
    assert result.values["f1_oracle"] == pytest.approx(2 * defect / (2 * defect + normal))
    assert result.values["f1_native"] == result.values["f1_oracle"]
    assert result.values["f1_val"] == 0.0
    assert result.values["aupro"] == pytest.approx(0.15)  # the diagonal, cut at 0.3
    assert "every pixel scores 0.25" in caplog.text


def test_explicit_labels_override_masks_with_a_warning(caplog):
    maps, masks = _case(12, ties=False)
    labels = masks.any(axis=(1, 2)).astype(int)
    labels[0] = 1  # defective by label, empty mask
    with caplog.at_level(logging.WARNING, logger="bench.metrics"):
        result = evaluate(maps, masks, val_threshold=None, native_threshold=None, labels=labels)
    expected = roc_auc_score(labels, maps.max(axis=(1, 2)))
    assert result.values["image_auroc"] == pytest.approx(expected, abs=TOL)
    assert "1 image(s) labelled defective have an empty mask" in caplog.text


# Errors


def test_validate_maps_names_method_and_image():
    maps = np.zeros((3, 4, 4), dtype=np.float32)
    maps[1, 0, 0] = np.nan
    maps[1, 2, 2] = np.inf
    maps[2, 3, 3] = -np.inf
    with pytest.raises(NonFiniteMapError) as error:
        validate_maps(torch.from_numpy(maps), "patchcore", ["a/0", "b/1", "c/2"])
    assert error.value.method == "patchcore"
    assert (error.value.sample_id, error.value.index) == ("b/1", 1)
    assert (error.value.num_values, error.value.num_images) == (2, 2)
    message = str(error.value)
    assert "method 'patchcore'" in message
    assert "image 'b/1' (index 1)" in message
    assert "and in 1 more image" in message
    assert isinstance(error.value, ValueError)


def test_validate_maps_accepts_finite_maps_and_checks_the_id_count():
    maps = np.zeros((2, 4, 4))
    validate_maps([maps[:1], maps[1:]], "ours", ["x", "y"])
    with pytest.raises(ValueError, match="sample_ids has 1 entries but anomaly_maps of method"):
        validate_maps(maps, "ours", ["x"])


def test_metrics_refuse_non_finite_maps_naming_the_index():
    maps, masks = _case(13, ties=False)
    maps[4, 1, 1] = np.inf
    with pytest.raises(NonFiniteMapError, match="non-finite value.* of image index 4;"):
        evaluate(maps, masks, val_threshold=None, native_threshold=None)
    with pytest.raises(NonFiniteMapError, match="an anomaly map returned 1 non-finite"):
        val_threshold(maps)
    for metric in (pixel_auroc, aupro, best_f1):
        with pytest.raises(NonFiniteMapError):
            metric(maps, masks)
    with pytest.raises(NonFiniteMapError):
        f1_at_threshold(maps, masks, 0.5)
    with pytest.raises(NonFiniteMapError):
        image_auroc(maps, masks.any(axis=(1, 2)))


@pytest.mark.parametrize(
    ("anomaly_maps", "error", "message"),
    [
        ("maps.png", TypeError, "found str"),
        ([[0.1, 0.2]], TypeError, r"anomaly_maps\[0\] is a list"),
        (np.zeros((2, 3, 3), dtype=np.complex64), TypeError, "dtype complex64"),
        (np.zeros((3, 3)), ValueError, r"shape \(3, 3\); expected N x H x W"),
        (np.zeros((0, 3, 3)), ValueError, "holds no image"),
        ([], ValueError, "holds no image"),
    ],
)
def test_bad_maps_are_refused(anomaly_maps, error, message):
    with pytest.raises(error, match=message):
        evaluate(anomaly_maps, np.zeros((2, 3, 3)), val_threshold=None, native_threshold=None)


@pytest.mark.parametrize(
    ("gt_masks", "message"),
    [
        (np.full((2, 3, 3), 255, dtype=np.uint8), r"holds np.uint8\(255\)|holds 255"),
        (np.zeros((3, 3, 3), dtype=bool), "gt_masks holds 3 masks but anomaly_maps holds 2"),
        (np.zeros((2, 3, 4), dtype=bool), "gt_masks image 0 is 3 x 4 but its anomaly map is 3 x 3"),
        (np.zeros((2, 3), dtype=bool), r"gt_masks batch 0 has shape \(2, 3\)"),
    ],
)
def test_bad_masks_are_refused(gt_masks, message):
    with pytest.raises(ValueError, match=message):
        evaluate(np.zeros((2, 3, 3)), gt_masks, val_threshold=None, native_threshold=None)


@pytest.mark.parametrize(
    ("labels", "message"),
    [([0, 1, 1], "labels holds 3 entries but there are 2 maps"), ([0, 2], "0 .normal. or 1")],
)
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        evaluate(
            np.zeros((2, 3, 3)),
            np.zeros((2, 3, 3)),
            val_threshold=None,
            native_threshold=None,
            labels=labels,
        )
    with pytest.raises(ValueError, match=message):
        image_auroc(np.zeros((2, 3, 3)), labels)


@pytest.mark.parametrize(
    ("keyword", "value", "error", "message"),
    [
        ("val_threshold", math.nan, ValueError, "val_threshold must be finite; found nan"),
        ("native_threshold", math.inf, ValueError, "native_threshold must be finite; found inf"),
        ("native_threshold", "0.5", TypeError, "native_threshold must be a real number"),
        ("fpr_limit", 0.0, ValueError, r"fpr_limit must be in \(0, 1\]; found 0.0"),
        ("fpr_limit", 1.5, ValueError, r"fpr_limit must be in \(0, 1\]; found 1.5"),
    ],
)
def test_bad_thresholds_are_refused(keyword, value, error, message):
    arguments = {"val_threshold": None, "native_threshold": None, keyword: value}
    with pytest.raises(error, match=message):
        evaluate(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)), **arguments)


def test_single_metric_arguments_are_checked():
    maps, masks = np.zeros((2, 3, 3)), np.zeros((2, 3, 3))
    with pytest.raises(ValueError, match=r"fpr_limit must be in \(0, 1\]"):
        aupro(maps, masks, fpr_limit=-0.1)
    with pytest.raises(ValueError, match="threshold must be finite"):
        f1_at_threshold(maps, masks, math.nan)
    with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\]; found 0.0"):
        val_threshold(maps, quantile=0.0)
    with pytest.raises(ValueError, match="normal_maps holds no image"):
        val_threshold([])
