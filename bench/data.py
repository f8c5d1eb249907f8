"""Samples, per-class splits and the dataset registry shared by every dataset adapter."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.registry import Registry

DATASETS: Registry[type[DatasetAdapter]] = Registry(
    "dataset", "defectbench.datasets", "bench.datasets"
)


class DatasetError(ValueError):
    """A dataset folder does not have the expected layout; the message names the path."""


@dataclass(frozen=True)
class Sample:
    """One image on disk and, for test images, its ground truth.

    Attributes:
        image_path: The image file.
        mask_path: The mask file; ``None`` for normal images (an empty mask).
        label: 0 normal, 1 defective.
        class_name: Texture class, e.g. ``carpet``.
        defect: Defect type folder name (``good`` for normal images).
        sample_id: Stable id, unique within a dataset, e.g. ``carpet/test/hole/003``;
            perturbation parameters are seeded from it.
    """

    image_path: Path
    mask_path: Path | None
    label: int
    class_name: str
    defect: str
    sample_id: str


@dataclass(frozen=True)
class ClassData:
    """The three splits of one class.

    Attributes:
        train: Normal images methods train on.
        val: Held-out normal images from ``train/good`` (never a test image), used to
            choose the ``val`` threshold.
        test: Normal and defective test images with masks.
    """

    class_name: str
    train: tuple[Sample, ...]
    val: tuple[Sample, ...]
    test: tuple[Sample, ...]


class DatasetAdapter(ABC):
    """Reads one dataset layout from ``root``.

    Args:
        root: Folder that holds the class folders.
        classes: Classes to use; ``None`` means the adapter's default selection.
    """

    name: str = ""
    description: str = ""

    def __init__(self, root: Path, classes: list[str] | None = None) -> None:
        self.root = Path(root)
        self.requested_classes = classes

    def prepare(self, progress: Callable[[int, int, str], None] | None = None) -> None:
        """Make the data ready on disk (e.g. generate it) before classes are listed.

        Adapters that read existing folders do nothing; ``progress(completed, total,
        description)`` lets the caller show a bar for adapters that do work here.
        """
        return None

    @abstractmethod
    def classes(self) -> list[str]:
        """Class names this adapter will load, in report order."""

    @abstractmethod
    def load_class(self, class_name: str) -> ClassData:
        """List the samples of one class; errors name the offending path."""


def stack_images(samples: tuple[Sample, ...] | list[Sample], size: int) -> torch.Tensor:
    """Load images as one ``N x 3 x size x size`` float tensor in [0, 1]."""
    from bench.imageio import read_image

    return torch.stack([read_image(s.image_path, size) for s in samples])


def stack_masks(samples: tuple[Sample, ...] | list[Sample], size: int) -> torch.Tensor:
    """Load masks as one ``N x size x size`` bool tensor (empty for normal samples)."""
    from bench.imageio import read_mask

    return torch.stack(
        [
            read_mask(s.mask_path, size)
            if s.mask_path is not None
            else torch.zeros(size, size, dtype=torch.bool)
            for s in samples
        ]
    )
