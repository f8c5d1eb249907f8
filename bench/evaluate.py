"""Scoring anomaly maps that another tool wrote as ``.npy`` files."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

from bench import metrics
from bench.data import DATASETS, Sample, stack_masks
from bench.runner import _resize_maps

logger = logging.getLogger(__name__)

REPORTED = ("f1_oracle", "pixel_auroc", "aupro", "image_auroc")


def map_path(maps_root: Path, sample: Sample) -> Path:
    """Where the map of a test sample is expected: ``<maps>/<class>/test/<defect>/<stem>.npy``."""
    return maps_root / sample.class_name / "test" / sample.defect / f"{sample.image_path.stem}.npy"


def load_map(path: Path, size: int) -> torch.Tensor:
    """Read one ``H x W`` float map and resize it (bilinear) to ``size x size``."""
    if not path.is_file():
        raise FileNotFoundError(f"missing anomaly map {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read anomaly map {path}: {error}") from error
    array = np.squeeze(array)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        message = (
            f"anomaly map {path} has shape {array.shape} and dtype {array.dtype}; "
            "expected H x W numbers"
        )
        raise ValueError(message)
    return _resize_maps(torch.from_numpy(array.astype(np.float32))[None], size)[0]


def evaluate_folder(
    dataset: str,
    data_root: Path | None,
    maps_root: Path,
    classes: list[str] | None = None,
    image_size: int = 256,
) -> dict[str, Any]:
    """Metrics per class and their mean for the maps under ``maps_root``.

    Returns:
        ``{"classes": {class: {metric: value}}, "mean": {metric: value}, "notes": {...}}``.
    """
    adapter_cls = DATASETS.get(dataset)
    adapter = adapter_cls(root=data_root, classes=classes)  # type: ignore[arg-type]
    per_class: dict[str, dict[str, float]] = {}
    notes: dict[str, dict[str, str]] = {}
    for class_name in adapter.classes():
        class_data = adapter.load_class(class_name)
        anomaly_maps = torch.stack(
            [load_map(map_path(maps_root, s), image_size) for s in class_data.test]
        )
        sample_ids = [s.sample_id for s in class_data.test]
        metrics.validate_maps(anomaly_maps, str(maps_root), sample_ids)
        result = metrics.evaluate(
            anomaly_maps,
            stack_masks(class_data.test, image_size),
            val_threshold=None,
            native_threshold=None,
            labels=torch.tensor([s.label for s in class_data.test]),
        )
        per_class[class_name] = {key: float(result.values[key]) for key in REPORTED}
        notes[class_name] = {k: v for k, v in result.notes.items() if k in REPORTED}
    mean = {
        key: float(np.nanmean([values[key] for values in per_class.values()]))
        if any(math.isfinite(values[key]) for values in per_class.values())
        else float("nan")
        for key in REPORTED
    }
    return {
        "dataset": dataset,
        "maps": str(maps_root),
        "classes": per_class,
        "mean": mean,
        "notes": notes,
    }


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_folder`'s result."""
    rows = [
        [name, *[_cell(values[k]) for k in REPORTED]] for name, values in results["classes"].items()
    ]
    rows.append(["mean", *[_cell(results["mean"][k]) for k in REPORTED]])
    return tabulate(rows, headers=["class", *REPORTED], tablefmt="simple")


def _cell(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.4f}"
