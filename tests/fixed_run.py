"""A small run store written from hand-made rows, so that report tests need no training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bench.store import RunStore

CLASSES = ("carpet", "wood")
SETTINGS = ("clean", "general@1", "general@3", "hard")
METHODS = ("mean-diff", "ours", "ours(components=G.S)")
SIZE = 16
SAMPLES = 2

_BASE = {"mean-diff": 0.30, "ours": 0.62, "ours(components=G.S)": 0.55}
_PENALTY = {"clean": 0.0, "general@1": 0.02, "general@3": 0.07, "general": 0.07, "hard": 0.15}
_DESCRIBE = {
    "mean-diff": {},
    "ours": {"backbone": "resnet18", "pretrained": True, "weights": "timm cache"},
    "ours(components=G.S)": {
        "backbone": "resnet18",
        "pretrained": False,
        "note": "random backbone weights (test setting)",
    },
}


def write_fixed_run(
    root: Path,
    run_id: str = "fixed-run",
    methods: tuple[str, ...] = METHODS,
    settings: tuple[str, ...] = SETTINGS,
    classes: tuple[str, ...] = CLASSES,
    profile: str = "quick",
    image_size: int = SIZE,
    dataset: str = "default",
    offset: float = 0.0,
    arrays: bool = True,
) -> RunStore:
    """Write a run folder ``root/run_id`` with one row per method x class x setting.

    Values follow a fixed formula: a base per method, a small step per class, a penalty per
    setting, plus ``offset``. ``mean-diff`` has no native threshold (NaN with its note) and
    the ablation variant lacks an AUPRO on ``wood``/``hard`` and a recorded predict time.
    """
    store = RunStore(root / run_id)
    store.write_manifest(
        {
            "run_id": run_id,
            "config": {
                "methods": list(methods),
                "dataset": dataset,
                "data_root": None,
                "classes": None,
                "settings": list(settings),
                "profile": profile,
                "seed": 0,
                "image_size": image_size,
            },
            "device": "cpu",
            "created": "2025-01-01T00:00:00+0000",
            "versions": {"torch": "2.5.0", "defectbench": "0.1.0"},
            "git_revision": "0123abc",
            "hardware": {"cpu": "Test CPU", "cpu_cores": 2, "memory_gib": 8.0, "gpu": None},
        }
    )
    rng = np.random.default_rng(0)
    for class_index, class_name in enumerate(classes):
        masks = np.zeros((SAMPLES, image_size, image_size), dtype=bool)
        masks[:, 4:9, 5:10] = True
        for setting in settings:
            images = rng.integers(0, 256, (SAMPLES, 3, image_size, image_size), dtype=np.uint8)
            if arrays:
                store.write_arrays(
                    store.samples_path(dataset, class_name, setting),
                    images=images,
                    masks=masks,
                    ids=np.array([f"defect/{i:03d}" for i in range(SAMPLES)]),
                )
            for method_index, method in enumerate(methods):
                anomaly_maps = rng.random((SAMPLES, image_size, image_size)).astype(np.float32)
                anomaly_maps[masks] += 0.5 + 0.2 * method_index
                if arrays:
                    store.write_arrays(
                        store.maps_path(method, dataset, class_name, setting), maps=anomaly_maps
                    )
                store.write_result(
                    _row(method, dataset, class_name, class_index, setting, profile, image_size)
                    | {"metrics": _metrics(method, class_index, setting, offset)}
                )
    return store


def _metrics(method: str, class_index: int, setting: str, offset: float) -> dict[str, float]:
    f1 = _BASE[method] + 0.04 * class_index - _PENALTY[setting] + offset
    values = {
        "f1_oracle": f1 + 0.1,
        "f1_val": f1,
        "f1_native": f1 - 0.05 if method != "mean-diff" else math.nan,
        "threshold_oracle": 0.5,
        "pixel_auroc": min(0.99, 0.7 + f1 / 2),
        "aupro": min(0.95, 0.5 + f1 / 2),
        "image_auroc": min(1.0, 0.6 + f1 / 2),
    }
    if method == "ours(components=G.S)" and class_index == 1 and setting == "hard":
        values["aupro"] = math.nan
    return values


def _row(method, dataset, class_name, class_index, setting, profile, image_size) -> dict:
    name = method.split("@")[0].split("(")[0]
    setting_name, _, severity = setting.partition("@")
    notes = {}
    if method == "mean-diff":
        notes["f1_native"] = "the method has no native threshold"
    if method == "ours(components=G.S)" and class_index == 1 and setting == "hard":
        notes["aupro"] = "no defect region in the test masks"
    speed = {"mean-diff": 1.0, "ours": 4.0, "ours(components=G.S)": 3.0}[method]
    return {
        "method": method,
        "method_name": name,
        "dataset": dataset,
        "class": class_name,
        "setting": setting,
        "setting_name": setting_name,
        "severity": int(severity) if severity else None,
        "profile": profile,
        "seed": 0,
        "image_size": image_size,
        "notes": notes,
        "val_threshold": 0.9,
        "native_threshold": None if method == "mean-diff" else 0.5,
        "test_images": 10,
        "defective_images": 6,
        "gray_input": False,
        "predict_peak_memory_mib": 100.0 * speed,
        "predict_added_memory_mib": 10.0 * speed,
        "predict_seconds": None if method == "ours(components=G.S)" else 0.5 * speed,
        "predict_batch": 8,
        "fit": {
            "profile": profile,
            "fit_seconds": 0.01 if method == "mean-diff" else 2.0 * speed + class_index,
            "fit_peak_memory_mib": 200.0 * speed,
            "fit_added_memory_mib": 20.0 * speed,
            "latency_ms_median": 1.5 * speed,
            "latency_ms_p95": 2.0 * speed,
            "latency_device": "cpu",
            "parameters": int(1000 * speed),
        },
        "describe": _DESCRIBE[method],
    }
