"""Shared test set-up: offline hubs, few threads, and the optional real sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
from method_inputs import offline_create_model  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

SAMPLE_DATA_ENV = "DEFECTBENCH_SAMPLE_DATA"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm.create_model without network or cache; modules ask with ``usefixtures``."""
    monkeypatch.setattr(timm, "create_model", offline_create_model)


@pytest.fixture(scope="session")
def sample_data_root() -> Path:
    """Root of the real sample data (MVTec layout); skips the test when it is not set."""
    value = os.environ.get(SAMPLE_DATA_ENV)
    if not value:
        pytest.skip(f"{SAMPLE_DATA_ENV} is not set")
    root = Path(value)
    if not root.is_dir():
        pytest.skip(f"{SAMPLE_DATA_ENV}={value} is not a folder")
    return root


def write_tiny_mvtec(root: Path, classes: tuple[str, ...] = ("stripes", "dots"), size: int = 32):
    """A small MVTec-layout dataset: bright square defects on a textured background."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for class_index, class_name in enumerate(classes):
        base = root / class_name
        yy, xx = np.mgrid[0:size, 0:size]
        pattern = 0.5 + 0.2 * np.sin((xx + class_index * yy) / 2.0)

        def texture(pattern: np.ndarray = pattern) -> np.ndarray:
            noise = rng.normal(0, 0.03, (size, size))
            return np.clip(pattern + noise, 0, 1)

        def save(path: Path, array: np.ndarray) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            rgb = np.repeat((array * 255).astype(np.uint8)[..., None], 3, axis=2)
            Image.fromarray(rgb).save(path)

        for index in range(8):
            save(base / "train" / "good" / f"{index:03d}.png", texture())
        for index in range(3):
            save(base / "test" / "good" / f"{index:03d}.png", texture())
        for index in range(4):
            image = texture()
            mask = np.zeros((size, size), dtype=np.uint8)
            top, left = rng.integers(2, size - 10, size=2)
            mask[top : top + 6, left : left + 6] = 255
            image[mask > 0] = 1.0
            save(base / "test" / "square" / f"{index:03d}.png", image)
            mask_path = base / "ground_truth" / "square" / f"{index:03d}_mask.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(mask_path)
    return root


@pytest.fixture(scope="session")
def tiny_dataset_root(tmp_path_factory) -> Path:
    """Two classes in MVTec layout at 32 px with square defects and exact masks."""
    return write_tiny_mvtec(tmp_path_factory.mktemp("tiny-mvtec"))
