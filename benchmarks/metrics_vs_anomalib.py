"""Time DefectBench's exact metric suite against anomalib's metrics on the same maps.

Synthetic but realistic test set (seeded): N maps of S x S float32 made like upsampled
feature-distance maps, ~25 % normal images, defects drawn as blobs, scratches and irregular
patches. Each library runs in its own forked process so that its peak RSS is its own.

    .venv/bin/python benchmarks/metrics_vs_anomalib.py                  # 1000 x 256 x 256
    .venv/bin/python benchmarks/metrics_vs_anomalib.py --sklearn        # also scikit-learn
    .venv/bin/python benchmarks/metrics_vs_anomalib.py --num-images 50  # quick look
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import platform
import resource
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

BATCH = 32  # maps per update() call, as a test loop would feed anomalib's metrics


def make_test_set(num_images: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``N x S x S`` float32 maps in (0, 1) and ``N x S x S`` bool masks."""
    rng = np.random.default_rng(seed)
    maps = np.empty((num_images, size, size), dtype=np.float32)
    masks = np.zeros((num_images, size, size), dtype=bool)
    for index in range(num_images):
        mask = np.zeros((size, size), dtype=np.uint8)
        if rng.random() >= 0.25:
            for _ in range(rng.integers(1, 4)):
                _draw_defect(mask, rng, size)
        masks[index] = mask > 0

        # Background: coarse noise upsampled bilinearly, like a 1/4-resolution feature map.
        coarse = rng.normal(0.0, 1.0, (size // 4, size // 4)).astype(np.float32)
        background = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
        response = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=3.0)
        response *= rng.uniform(1.0, 6.0)
        if rng.random() < 0.1:  # a false alarm: a bright spot on a normal area
            spot = np.zeros((size, size), dtype=np.float32)
            cv2.circle(spot, tuple(int(v) for v in rng.integers(0, size, 2)), 6, 1.0, -1)
            response += 3.0 * cv2.GaussianBlur(spot, (0, 0), sigmaX=3.0)
        logits = 0.6 * background + response - 3.0
        maps[index] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return maps, masks


def _draw_defect(mask: np.ndarray, rng: np.random.Generator, size: int) -> None:
    kind = rng.integers(0, 3)
    centre = tuple(int(v) for v in rng.integers(size // 8, size - size // 8, 2))
    if kind == 0:  # blob
        axes = tuple(int(v) for v in rng.integers(3, size // 8, 2))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:  # scratch
        points = np.array(centre) + np.cumsum(rng.integers(-size // 6, size // 6, (4, 2)), 0)
        cv2.polylines(mask, [points.astype(np.int32)], False, 1, int(rng.integers(1, 4)))
    else:  # irregular patch: thresholded smooth noise inside a box
        half = int(rng.integers(6, size // 8))
        noise = cv2.GaussianBlur(rng.random((2 * half, 2 * half)).astype(np.float32), (0, 0), 3)
        patch = (noise > np.quantile(noise, 0.6)).astype(np.uint8)
        top, left = max(centre[0] - half, 0), max(centre[1] - half, 0)
        region = mask[top : top + 2 * half, left : left + 2 * half]
        region |= patch[: region.shape[0], : region.shape[1]]


def run_defectbench(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    from bench.metrics import evaluate

    result = evaluate(
        torch.from_numpy(maps), torch.from_numpy(masks), val_threshold=None, native_threshold=None
    )
    values = result.values
    return {
        "f1_max": values["f1_oracle"],
        "f1_threshold": values["threshold_oracle"],
        "pixel_auroc": values["pixel_auroc"],
        "aupro": values["aupro"],
        "image_auroc": values["image_auroc"],
    }


def run_anomalib(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """anomalib 2.x metrics as its test loop uses them: update per batch, then compute."""
    from anomalib.metrics.aupro import _AUPRO
    from anomalib.metrics.auroc import _AUROC
    from anomalib.metrics.f1_score import _F1Max

    f1_max, pixel_auroc, aupro, image_auroc = _F1Max(), _AUROC(), _AUPRO(fpr_limit=0.3), _AUROC()
    for start in range(0, len(maps), BATCH):
        anomaly_maps = torch.from_numpy(maps[start : start + BATCH])
        gt_masks = torch.from_numpy(masks[start : start + BATCH]).to(torch.uint8)
        f1_max.update(anomaly_maps, gt_masks)
        pixel_auroc.update(anomaly_maps, gt_masks)
        aupro.update(anomaly_maps, gt_masks)
        image_auroc.update(anomaly_maps.flatten(1).amax(1), gt_masks.flatten(1).amax(1))
    values = {"f1_max": float(f1_max.compute())}
    values["f1_threshold"] = float(f1_max.threshold)
    values["pixel_auroc"] = float(pixel_auroc.compute())
    values["aupro"] = float(aupro.compute())
    values["image_auroc"] = float(image_auroc.compute())
    return values


def run_sklearn(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """scikit-learn reference for the threshold-free pixel and image metrics (no AUPRO)."""
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    scores, truth = maps.reshape(-1), masks.reshape(-1)
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    with np.errstate(invalid="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    best = int(np.argmax(f1))
    return {
        "f1_max": float(f1[best]),
        "f1_threshold": float(thresholds[best]),
        "pixel_auroc": float(roc_auc_score(truth, scores)),
        "aupro": math.nan,
        "image_auroc": float(roc_auc_score(masks.any(axis=(1, 2)), maps.max(axis=(1, 2)))),
    }


RUNNERS: dict[str, Callable[[np.ndarray, np.ndarray], dict[str, float]]] = {
    "defectbench": run_defectbench,
    "anomalib": run_anomalib,
    "sklearn": run_sklearn,
}

_DATA: tuple[np.ndarray, np.ndarray] | None = None  # shared with forked children


def _timed_child(name: str, num_images: int, connection) -> None:
    torch.set_num_threads(2)
    maps, masks = _DATA
    maps, masks = maps[:num_images], masks[:num_images]
    start = time.perf_counter()
    values = RUNNERS[name](maps, masks)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    connection.send((values, seconds, peak_mib))
    connection.close()


def measure(name: str, num_images: int) -> tuple[dict[str, float], float, float]:
    """Run one library in a forked process; returns values, seconds and peak RSS (MiB)."""
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_timed_child, args=(name, num_images, child))
    process.start()
    child.close()
    values, seconds, peak_mib = parent.recv()
    process.join()
    return values, seconds, peak_mib


def cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each library")
    parser.add_argument(
        "--anomalib-images", type=int, default=None, help="fewer images for anomalib"
    )
    parser.add_argument("--sklearn", action="store_true", help="also time scikit-learn")
    args = parser.parse_args()

    global _DATA
    start = time.perf_counter()
    _DATA = make_test_set(args.num_images, args.size, args.seed)
    maps, masks = _DATA
    print(
        f"machine: {cpu_model()}, {multiprocessing.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, numpy {np.__version__}"
    )
    print(
        f"test set: {args.num_images} maps of {args.size} x {args.size} "
        f"({maps.size / 1e6:.1f} M pixels), {masks.any(axis=(1, 2)).sum()} defective images, "
        f"{100 * masks.mean():.2f} % defect pixels, seed {args.seed}; "
        f"made in {time.perf_counter() - start:.1f} s"
    )

    libraries = ["defectbench", "anomalib"] + (["sklearn"] if args.sklearn else [])
    results = {}
    for name in libraries:
        num_images = args.num_images
        if name == "anomalib" and args.anomalib_images is not None:
            num_images = args.anomalib_images
        runs = [measure(name, num_images) for _ in range(args.repeats)]
        seconds = [run[1] for run in runs]
        results[name] = (runs[0][0], seconds, max(run[2] for run in runs), num_images)
        print(
            f"{name:12s} {num_images} maps: median {statistics.median(seconds):.2f} s "
            f"(runs {', '.join(f'{s:.2f}' for s in seconds)}), "
            f"peak RSS {results[name][2]:.0f} MiB (inputs included)"
        )

    print("\nvalues (defectbench - other):")
    header = f"{'metric':14s}" + "".join(f"{name:>22s}" for name in libraries)
    print(header + "".join(f"{'diff ' + name:>18s}" for name in libraries[1:]))
    ours = results["defectbench"][0]
    for key in ours:
        row = f"{key:14s}" + "".join(f"{results[name][0][key]:22.12f}" for name in libraries)
        row += "".join(f"{ours[key] - results[name][0][key]:18.2e}" for name in libraries[1:])
        print(row)

    ours_median = statistics.median(results["defectbench"][1])
    for name in libraries[1:]:
        scale = args.num_images / results[name][3]
        speedup = statistics.median(results[name][1]) * scale / ours_median
        note = f" (scaled from {results[name][3]} maps)" if scale != 1 else ""
        print(f"speed-up over {name}: {speedup:.1f}x{note}")


if __name__ == "__main__":
    main()
