"""Shared test set-up: offline hubs, few threads, and the optional real sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

SAMPLE_DATA_ENV = "DEFECTBENCH_SAMPLE_DATA"


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
