"""What the method tests fit on: crops of a real texture photo, a CPU context, offline timm."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import torch

from bench.method import FitContext

_real_create_model = timm.create_model


def offline_create_model(*args, **kwargs):
    """timm.create_model as on a machine without network or cache, whatever this one has."""
    if kwargs.get("pretrained"):
        raise RuntimeError("no network (simulated)")
    return _real_create_model(*args, **kwargs)


@contextlib.contextmanager
def offline_timm() -> Iterator[None]:
    """:func:`offline_create_model` stands in for timm.create_model inside the block.

    For module-scoped fixtures; a test asks for the ``offline`` fixture of conftest instead.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timm, "create_model", offline_create_model)
        yield


def texture_crops(count: int, seed: int, size: int, photo: str = "brick") -> torch.Tensor:
    """``count x 3 x size x size`` crops of a grey scikit-image photo at random places.

    Args:
        count: Number of crops.
        seed: Seed of the crop positions.
        size: Side of each crop in pixels.
        photo: Name of the grey 512 x 512 photo in :mod:`skimage.data`.
    """
    image = getattr(skimage.data, photo)()
    texture = torch.from_numpy(image.astype(np.float32) / 255.0)
    generator = torch.Generator().manual_seed(seed)
    crops = []
    for _ in range(count):
        top, left = (int(v) for v in torch.randint(0, 512 - size, (2,), generator=generator))
        crops.append(texture[top : top + size, left : left + size])
    return torch.stack(crops).unsqueeze(1).repeat(1, 3, 1, 1)  # count x 3 x size x size


def cpu_context(seed: int = 0, scratch_dir: Path = Path("unused")) -> FitContext:
    """A fit context on the CPU with the ``quick`` profile."""
    return FitContext(torch.device("cpu"), seed, "quick", scratch_dir)
