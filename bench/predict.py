"""Defect maps for a user's own images from a model saved in a run store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from bench.imageio import read_image
from bench.method import MethodSpec
from bench.runner import predict_maps, resolve_device
from bench.store import MODEL_RECORD

logger = logging.getLogger(__name__)


def load_saved_method(model_dir: Path, device: str = "auto"):
    """Rebuild the method saved in ``model_dir`` (a ``runs/<id>/models/<m>/<d>/<c>`` folder)."""
    record_path = model_dir / MODEL_RECORD
    if not record_path.is_file():
        message = (
            f"{model_dir} is not a saved model folder (no {MODEL_RECORD}); "
            "expected runs/<id>/models/<method>/<dataset>/<class>"
        )
        raise ValueError(message)
    record = json.loads(record_path.read_text())
    spec = MethodSpec(record["method_name"], tuple(sorted(record.get("options", {}).items())))
    method = spec.build(record["profile"])
    method.load(model_dir)
    method.to(resolve_device(device))
    return method, record


def predict_images(
    model_dir: Path, images: list[Path], output: Path, device: str = "auto", image_size: int = 256
) -> list[Path]:
    """Write ``<stem>_map.npy``, ``<stem>_map.png`` and, given a threshold, ``<stem>_mask.png``.

    The binary mask uses the method's native threshold, else the ``val`` threshold chosen on
    held-out normal images when the model was evaluated in its run.
    """
    by_stem: dict[str, Path] = {}
    for path in images:
        if path.stem in by_stem and by_stem[path.stem] != path:
            message = (
                f"{by_stem[path.stem]} and {path} share the name {path.stem!r}, so their maps "
                f"would overwrite each other in {output}; score them in separate runs"
            )
            raise ValueError(message)
        by_stem[path.stem] = path
    method, record = load_saved_method(model_dir, device)
    threshold = method.native_threshold
    if threshold is None:
        threshold = record.get("val_threshold")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        image = read_image(path, image_size)[None]
        anomaly_map = predict_maps(method, image, image_size)[0].numpy()
        np.save(output / f"{path.stem}_map.npy", anomaly_map)
        low, high = float(anomaly_map.min()), float(anomaly_map.max())
        scaled = (anomaly_map - low) / (high - low) if high > low else np.zeros_like(anomaly_map)
        Image.fromarray((scaled * 255).astype(np.uint8)).save(output / f"{path.stem}_map.png")
        if threshold is not None:
            mask = (anomaly_map > threshold).astype(np.uint8) * 255
            Image.fromarray(mask).save(output / f"{path.stem}_mask.png")
        written.append(output / f"{path.stem}_map.npy")
        logger.info("%s -> %s", path, output / f"{path.stem}_map.npy")
    if threshold is None:
        logger.warning(
            "%s has no threshold (native or val); only maps were written", record["method"]
        )
    return written
