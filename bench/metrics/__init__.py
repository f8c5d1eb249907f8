"""Exact DefectBench metrics: pixel F1 under three threshold policies, AUROC, AUPRO.

Inputs are checked in `validation`, curves come from one sort in `ranking`, and `suite`
holds what the runner calls.
"""

from bench.metrics.ranking import PixelScores, Scored, binary_auroc
from bench.metrics.suite import (
    DEFAULT_FPR_LIMIT,
    DEFAULT_VAL_QUANTILE,
    METRIC_KEYS,
    MetricResult,
    aupro,
    best_f1,
    evaluate,
    f1_at_threshold,
    image_auroc,
    pixel_auroc,
    val_threshold,
)
from bench.metrics.validation import NonFiniteMapError, validate_maps

__all__ = [
    "DEFAULT_FPR_LIMIT",
    "DEFAULT_VAL_QUANTILE",
    "METRIC_KEYS",
    "MetricResult",
    "NonFiniteMapError",
    "PixelScores",
    "Scored",
    "aupro",
    "best_f1",
    "binary_auroc",
    "evaluate",
    "f1_at_threshold",
    "image_auroc",
    "pixel_auroc",
    "val_threshold",
    "validate_maps",
]
