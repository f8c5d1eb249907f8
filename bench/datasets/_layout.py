"""One reader for the MVTec AD folder layout, configured per dataset by a :class:`Layout`.

``<class>/train/<good>``, ``<class>/test/<defect>`` and
``<class>/ground_truth/<defect>/<image stem><mask suffix>.<ext>``.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from bench.data import ClassData, DatasetAdapter, DatasetError, Sample
from bench.imageio import image_size, is_image_file

logger = logging.getLogger(__name__)

ALL_CLASSES = "all"
"""The ``classes`` value that selects every class an adapter knows or finds."""

DATASETS_README = "datasets/README.md"


@dataclass(frozen=True)
class Layout:
    """How one dataset spells the MVTec layout.

    Attributes:
        good: Name of the folder of normal images under ``train`` and ``test``.
        mask_suffixes: Endings tried after an image's stem to find its mask in
            ``ground_truth/<defect>/`` (``"_mask"`` for MVTec AD, ``""`` when the mask
            has the image's own name); any image extension, in any case, may follow.
        known_classes: Class names in report order; empty when classes are discovered as
            the sub-folders of the root that have ``train/<good>``.
        default_classes: Classes used when none are requested; ``None`` means all.
        groups: Names that stand for several classes in ``classes`` (e.g. ``objects``).
        requires_test_good: Whether a class without ``test/<good>`` is an error (the
            woven fabric set has defective test images only).
    """

    good: str = "good"
    mask_suffixes: tuple[str, ...] = ("_mask",)
    known_classes: tuple[str, ...] = ()
    default_classes: tuple[str, ...] | None = None
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    requires_test_good: bool = False


def validation_indices(count: int, fraction: float) -> list[int]:
    """Indices of the sorted ``train/good`` images held out for validation.

    ``round(count * fraction)`` images (at least one when ``count >= 2`` and ``fraction >
    0``; never all of them), spread evenly: the middle image of each of that many equal
    runs. ``count=100, fraction=0.1`` gives 5, 15, ..., 95.

    Args:
        count: Number of normal training images.
        fraction: Share held out, in [0, 1).

    Returns:
        Sorted indices into the sorted training images.
    """
    if not 0.0 <= fraction < 1.0 or math.isnan(fraction):
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction!r}")
    if count < 2 or fraction == 0.0:
        return []
    held_out = min(count - 1, max(1, math.floor(count * fraction + 0.5)))
    return [math.floor((index + 0.5) * count / held_out) for index in range(held_out)]


class LayoutAdapter(DatasetAdapter):
    """Base of the adapters for MVTec-layout folders; subclasses set ``layout``.

    Args:
        root: Folder that holds the class folders (``None`` is an error that says so).
        classes: Class names, group names of the layout, or ``all``; ``None`` means the
            layout's default selection. Names match case-insensitively when unambiguous.
        val_fraction: Share of ``train/good`` held out as the validation split.
        check_files: Read every file's header while listing, so that a file that is not
            an image fails before any training (costs about a millisecond per file).
    """

    layout: ClassVar[Layout] = Layout()

    def __init__(
        self,
        root: Path | None,
        classes: list[str] | None = None,
        *,
        val_fraction: float = 0.1,
        check_files: bool = True,
    ) -> None:
        if root is None:
            raise DatasetError(
                f"dataset {self.name!r} needs a data root: pass --data-root with the folder "
                f"that holds its class folders (see {DATASETS_README})"
            )
        super().__init__(root, classes)
        validation_indices(10, val_fraction)  # raises on a bad fraction
        self.val_fraction = val_fraction
        self.check_files = check_files

    def classes(self) -> list[str]:
        """Class names this adapter will load, in report order.

        Raises:
            DatasetError: The root is missing, a requested class is unknown, or a selected
                class has no folder.
        """
        self._check_root()
        available = self.available_classes()
        if not available:
            message = (
                f"{self.name}: no class folder under {self.root} (a class folder holds "
                f"train/{self.layout.good} with images; point --data-root at the folder that "
                f"holds the class folders, see {DATASETS_README})"
            )
            raise DatasetError(message)
        selected = self._select(available)
        missing = [name for name in selected if name not in available]
        if missing:
            found = ", ".join(available) or "none"
            message = (
                f"{self.name} class folder(s) missing under {self.root}: "
                f"{', '.join(missing)} (each needs train/{self.layout.good}). "
                f"Classes found there: {found}. Choose classes with --classes, or see "
                f"{DATASETS_README} for the layout."
            )
            raise DatasetError(message)
        return selected

    def available_classes(self) -> list[str]:
        """Classes present under the root: known ones in their order, then others sorted."""
        self._check_root()
        if self._root_is_one_class():
            return [self.root.name]
        present = sorted(
            entry.name
            for entry in self.root.iterdir()
            if not entry.name.startswith(".") and (entry / "train" / self.layout.good).is_dir()
        )
        known = [name for name in self.layout.known_classes if name in present]
        return known + [name for name in present if name not in known]

    def load_class(self, class_name: str) -> ClassData:
        """List the samples of one class; errors name the offending path.

        Raises:
            DatasetError: Missing or empty ``train/<good>`` or ``test``, a defective image
                without its mask, a mask without its image, two files with one stem, or an
                image lying directly in ``test``.
            bench.imageio.ImageReadError: A file is not a readable image (``check_files``).
        """
        class_dir = self._class_dir(class_name)
        good = self.layout.good
        train_dir = class_dir / "train" / good
        if not train_dir.is_dir():
            raise DatasetError(
                f"class {class_name!r} has no folder {train_dir} (normal training images go "
                f"in <class>/train/{good}; see {DATASETS_README})"
            )
        train_files = self._images_in(train_dir)
        if not train_files:
            raise DatasetError(f"class {class_name!r} has no training images in {train_dir}")
        normal = [self._sample(class_name, "train", good, path, None) for path in train_files]
        held_out = set(validation_indices(len(normal), self.val_fraction))
        train = tuple(s for index, s in enumerate(normal) if index not in held_out)
        val = tuple(s for index, s in enumerate(normal) if index in held_out)

        test = tuple(self._test_samples(class_name, class_dir))
        self._check_unique_ids([*normal, *test])
        if self.check_files:
            self._check_headers([*normal, *test])
        logger.debug(
            "%s/%s: %d train, %d val, %d test (%d defective)",
            self.name,
            class_name,
            len(train),
            len(val),
            len(test),
            sum(s.label for s in test),
        )
        return ClassData(class_name=class_name, train=train, val=val, test=test)

    def _check_root(self) -> None:
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise DatasetError(
                f"{self.name} data root {self.root} {what}; point --data-root at the folder "
                f"that holds the class folders (see {DATASETS_README})"
            )

    def _root_is_one_class(self) -> bool:
        return (self.root / "train").is_dir() and (self.root / "test").is_dir()

    def _class_dir(self, class_name: str) -> Path:
        self._check_root()
        if self._root_is_one_class() and class_name == self.root.name:
            return self.root
        class_dir = self.root / class_name
        if not class_dir.is_dir():
            found = ", ".join(self.available_classes()) or "none"
            raise DatasetError(
                f"{self.name} class {class_name!r} has no folder {class_dir}; "
                f"classes found: {found}"
            )
        return class_dir

    def _select(self, available: list[str]) -> list[str]:
        """Resolve the requested names (groups, ``all``, any case) to class names."""
        layout = self.layout
        universe = list(layout.known_classes) + [
            name for name in available if name not in layout.known_classes
        ]
        requested = self.requested_classes
        if requested is None:
            if layout.default_classes is not None:
                return list(layout.default_classes)
            return list(layout.known_classes) or available
        if isinstance(requested, str):
            requested = [requested]
        selected: list[str] = []
        for raw_name in requested:
            name = raw_name.strip()
            if name.lower() == ALL_CLASSES:
                names = list(layout.known_classes) or available
            elif name.lower() in layout.groups:
                names = list(layout.groups[name.lower()])
            else:
                names = [self._match_class(name, universe)]
            selected.extend(n for n in names if n not in selected)
        if not selected:
            raise DatasetError(f"no {self.name} classes selected from {list(requested)!r}")
        return selected

    def _match_class(self, name: str, universe: list[str]) -> str:
        if name in universe:
            return name
        folded = [candidate for candidate in universe if candidate.lower() == name.lower()]
        if len(folded) == 1:
            return folded[0]
        keywords = [ALL_CLASSES, *self.layout.groups]
        close = difflib.get_close_matches(name, [*universe, *keywords], n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        valid = ", ".join([*universe, *keywords])
        raise DatasetError(f"unknown {self.name} class {name!r}.{hint} Valid: {valid}.")

    def _images_in(self, folder: Path) -> list[Path]:
        """Image files directly in ``folder``, sorted by name; hidden files skipped."""
        images = []
        for entry in sorted(folder.iterdir(), key=lambda path: path.name):
            if entry.is_file() and is_image_file(entry):
                images.append(entry)
            elif entry.is_file() and not entry.name.startswith("."):
                logger.debug("skipping %s: not an image file name", entry)
        return images

    def _sub_folders(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted(
            (entry for entry in folder.iterdir() if entry.is_dir()),
            key=lambda path: path.name,
        )

    def _visible(self, folders: list[Path]) -> list[Path]:
        return [folder for folder in folders if not folder.name.startswith(".")]

    def _test_samples(self, class_name: str, class_dir: Path) -> list[Sample]:
        good = self.layout.good
        test_dir = class_dir / "test"
        if not test_dir.is_dir():
            raise DatasetError(
                f"class {class_name!r} has no folder {test_dir} (test images go in "
                f"<class>/test/{good} and <class>/test/<defect>; see {DATASETS_README})"
            )
        loose = self._images_in(test_dir)
        if loose:
            raise DatasetError(
                f"image {loose[0]} lies directly in {test_dir}; put normal test images in "
                f"test/{good} and defective ones in test/<defect>"
            )
        defect_dirs = self._visible(self._sub_folders(test_dir))
        if self.layout.requires_test_good and not (test_dir / good).is_dir():
            raise DatasetError(f"class {class_name!r} has no folder {test_dir / good}")

        ground_truth = class_dir / "ground_truth"
        samples: list[Sample] = []
        claimed_masks: set[Path] = set()
        for defect_dir in defect_dirs:
            defect = defect_dir.name
            images = self._images_in(defect_dir)
            if not images:
                logger.warning("skipping empty test folder %s", defect_dir)
                continue
            if defect == good:
                samples.extend(self._sample(class_name, "test", good, p, None) for p in images)
                continue
            masks = self._masks_by_stem(ground_truth / defect)
            for image_path in images:
                mask_path = self._find_mask(image_path, ground_truth / defect, masks)
                claimed_masks.add(mask_path)
                samples.append(self._sample(class_name, "test", defect, image_path, mask_path))
        if not samples:
            raise DatasetError(f"class {class_name!r} has no test images in {test_dir}")
        self._check_no_orphan_masks(ground_truth, claimed_masks)
        return samples

    def _masks_by_stem(self, mask_dir: Path) -> dict[str, list[Path]]:
        by_stem: dict[str, list[Path]] = {}
        if mask_dir.is_dir():
            for path in self._images_in(mask_dir):
                by_stem.setdefault(path.stem, []).append(path)
        return by_stem

    def _find_mask(self, image_path: Path, mask_dir: Path, masks: dict[str, list[Path]]) -> Path:
        candidates = [
            path
            for suffix in self.layout.mask_suffixes
            for path in masks.get(image_path.stem + suffix, [])
        ]
        if not candidates:
            names = " or ".join(
                f"{image_path.stem}{suffix}.<png|jpg|bmp|tif>"
                for suffix in self.layout.mask_suffixes
            )
            raise DatasetError(
                f"defective image {image_path} has no mask: expected {names} in {mask_dir}"
            )
        if len(candidates) > 1:
            raise DatasetError(
                f"defective image {image_path} has several masks: "
                f"{', '.join(str(path) for path in candidates)}; keep one"
            )
        return candidates[0]

    def _check_no_orphan_masks(self, ground_truth: Path, claimed: set[Path]) -> None:
        for mask_dir in self._visible(self._sub_folders(ground_truth)):
            if mask_dir.name == self.layout.good:
                continue  # some datasets ship empty masks for normal images
            for mask_path in self._images_in(mask_dir):
                if mask_path not in claimed:
                    test_dir = ground_truth.parent / "test" / mask_dir.name
                    naming = " or ".join(
                        f"<image stem>{suffix}.<ext>" for suffix in self.layout.mask_suffixes
                    )
                    raise DatasetError(
                        f"mask {mask_path} has no image in {test_dir} (masks are named {naming})"
                    )

    def _sample(
        self, class_name: str, split: str, defect: str, image_path: Path, mask_path: Path | None
    ) -> Sample:
        return Sample(
            image_path=image_path,
            mask_path=mask_path,
            label=0 if defect == self.layout.good else 1,
            class_name=class_name,
            defect=defect,
            sample_id=f"{class_name}/{split}/{defect}/{image_path.stem}",
        )

    def _check_unique_ids(self, samples: list[Sample]) -> None:
        seen: dict[str, Path] = {}
        for sample in samples:
            other = seen.setdefault(sample.sample_id, sample.image_path)
            if other != sample.image_path:
                raise DatasetError(
                    f"two images share the name {sample.image_path.stem!r}: {other} and "
                    f"{sample.image_path}; keep one (sample ids come from file names)"
                )

    def _check_headers(self, samples: list[Sample]) -> None:
        for sample in samples:
            size = image_size(sample.image_path)
            if sample.mask_path is not None and image_size(sample.mask_path) != size:
                logger.warning(
                    "mask %s is %s but its image %s is %s; the mask is resized (nearest)",
                    sample.mask_path,
                    "x".join(map(str, image_size(sample.mask_path))),
                    sample.image_path,
                    "x".join(map(str, size)),
                )
