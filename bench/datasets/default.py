"""The embedded default dataset: generated on first use into a cache folder, MVTec layout.

Five texture classes (two gray photos that scikit-image ships, three drawn) with six kinds
of painted defects and exact masks; the same seed gives the same files.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data import DATASETS, ClassData, DatasetError
from bench.datasets._layout import Layout, LayoutAdapter
from bench.datasets._synthetic import DEFECTS, TEXTURES, paint_defect

logger = logging.getLogger(__name__)

VERSION = 1
"""Bumped whenever generation changes, so an old cache is never mistaken for a new one."""

CACHE_ENV = "DEFECTBENCH_CACHE"
MARKER = "defectbench-default.json"
"""Written last: a folder without it (or with another spec in it) is regenerated."""

DEFAULT_CLASSES: tuple[str, ...] = tuple(TEXTURES)
DEFECT_KINDS: tuple[str, ...] = tuple(DEFECTS)

ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class DefaultDatasetSpec:
    """What the default dataset holds; the defaults are what ``bench run`` uses.

    Attributes:
        seed: Seed of every random draw.
        image_size: Side of the square images, in pixels.
        train_per_class: Normal images in ``train/good`` (10 % become the val split).
        test_good_per_class: Normal images in ``test/good``.
        defective_per_kind: Defective test images per defect kind and class; the i-th
            image of a kind has contrast level ``i % 3`` (low, medium, high).
        classes: Texture classes to generate, in report order.
    """

    seed: int = 0
    image_size: int = 256
    train_per_class: int = 30
    test_good_per_class: int = 8
    defective_per_kind: int = 3
    classes: tuple[str, ...] = DEFAULT_CLASSES

    def __post_init__(self) -> None:
        counts = {
            "image_size": self.image_size,
            "train_per_class": self.train_per_class,
            "test_good_per_class": self.test_good_per_class,
            "defective_per_kind": self.defective_per_kind,
        }
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"DefaultDatasetSpec.{name} must be an integer >= 1, got {value!r}"
                )
        if self.image_size < 32:
            raise ValueError(f"DefaultDatasetSpec.image_size must be >= 32, got {self.image_size}")
        unknown = [name for name in self.classes if name not in TEXTURES]
        if unknown or not self.classes:
            raise ValueError(
                f"DefaultDatasetSpec.classes must be a non-empty subset of "
                f"{', '.join(TEXTURES)}; got {list(self.classes)!r}"
            )

    @property
    def images_per_class(self) -> int:
        """Image files per class (masks not counted)."""
        defective = self.defective_per_kind * len(DEFECT_KINDS)
        return self.train_per_class + self.test_good_per_class + defective


def default_cache_dir() -> Path:
    """Where the default dataset lives when no root is given.

    ``$DEFECTBENCH_CACHE/default-v<N>`` when that variable is set, else
    ``$XDG_CACHE_HOME/defectbench/default-v<N>``, else ``~/.cache/defectbench/default-v<N>``.
    """
    folder = f"default-v{VERSION}"
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / folder
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "defectbench" / folder


def ensure_default_dataset(
    cache_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    *,
    spec: DefaultDatasetSpec | None = None,
) -> Path:
    """Return the default dataset's root, generating it first when it is missing or partial.

    The marker file is written last, so a generation that was interrupted is redone. A
    folder that holds anything else than the dataset is never written into.

    Args:
        cache_dir: Root to use; ``None`` means :func:`default_cache_dir`.
        progress: ``progress(completed, total, description)``, called once per image.
        spec: What to generate; ``None`` means the standard :class:`DefaultDatasetSpec`.

    Returns:
        The root folder, in MVTec layout (``<class>/train/good``, ``<class>/test/<kind>``,
        ``<class>/ground_truth/<kind>/<stem>_mask.png``).

    Raises:
        DatasetError: ``cache_dir`` exists and holds files that are not the dataset's.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    spec = spec or DefaultDatasetSpec()
    if _is_complete(root, spec):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root):
        if _is_complete(root, spec):  # another process finished while we waited
            return root
        _clear_partial(root)
        started = time.perf_counter()
        logger.info("generating the default dataset into %s", root)
        count = _generate(root, spec, progress)
        _write_readme(root, spec)
        marker = {"version": VERSION, "spec": _spec_record(spec), "images": count}
        _atomic_write(root / MARKER, json.dumps(marker, indent=2).encode() + b"\n")
        logger.info(
            "default dataset ready: %d images in %.1f s at %s",
            count,
            time.perf_counter() - started,
            root,
        )
    return root


def generate_default_class(
    class_name: str, spec: DefaultDatasetSpec | None = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]]:
    """Yield one class's images in memory, without touching the disk.

    Yields:
        ``(relative_path, image, mask, clean)`` per image: ``relative_path`` like
        ``test/hole/002.png``; ``image`` ``H x W`` (gray) or ``H x W x 3`` uint8;
        ``mask`` ``H x W`` bool for defective images, else ``None``; ``clean`` the same
        image before its defect was painted (``None`` for normal images).
    """
    spec = spec or DefaultDatasetSpec()
    if class_name not in spec.classes:
        raise ValueError(f"unknown default class {class_name!r}; valid: {', '.join(spec.classes)}")
    texture = TEXTURES[class_name]
    class_index = DEFAULT_CLASSES.index(class_name)

    def rng_for(split: int, index: int) -> np.random.Generator:
        # one stream per image: generating fewer images leaves the others unchanged
        return np.random.default_rng([spec.seed, VERSION, class_index, split, index])

    def clean_image(rng: np.random.Generator) -> np.ndarray:
        drawn = texture.draw(rng, spec.image_size)
        if drawn.ndim == 2:
            drawn = np.repeat(drawn[..., None], 3, axis=2)
        return np.round(np.clip(drawn, 0.0, 1.0) * 255.0).astype(np.uint8)  # H x W x 3

    def stored(image: np.ndarray) -> np.ndarray:
        return image[..., 0].copy() if texture.gray else image

    for index in range(spec.train_per_class):
        yield f"train/good/{index:03d}.png", stored(clean_image(rng_for(0, index))), None, None
    for index in range(spec.test_good_per_class):
        yield f"test/good/{index:03d}.png", stored(clean_image(rng_for(1, index))), None, None
    for kind_index, kind in enumerate(DEFECT_KINDS):
        for index in range(spec.defective_per_kind):
            rng = rng_for(2 + kind_index, index)
            clean = clean_image(rng)
            contrast = index % 3
            size_level = (index + kind_index) % 3
            image, mask = paint_defect(rng, clean, kind, contrast, size_level, texture.gray)
            yield f"test/{kind}/{index:03d}.png", stored(image), mask, stored(clean)


@DATASETS.register(
    "default", description="embedded default: 5 generated texture classes, 6 defect kinds"
)
class DefaultDataset(LayoutAdapter):
    """The embedded default dataset, generated on first use (a few seconds).

    Args:
        root: Folder to generate into and read from; ``None`` means
            :func:`default_cache_dir`.
        classes: Subset of the classes (``None``: every class of ``spec``).
        val_fraction: Share of ``train/good`` held out as the validation split.
        check_files: Read every file's header while listing.
        spec: What to generate (the standard spec when ``None``); tests pass a smaller one.
    """

    name = "default"
    description = "embedded default: 5 generated texture classes, 6 defect kinds"
    layout = Layout(
        mask_suffixes=("_mask",),
        known_classes=DEFAULT_CLASSES,
        default_classes=None,
        requires_test_good=True,
    )

    def __init__(
        self,
        root: Path | None = None,
        classes: list[str] | None = None,
        *,
        val_fraction: float = 0.1,
        check_files: bool = True,
        spec: DefaultDatasetSpec | None = None,
    ) -> None:
        self.spec = spec or DefaultDatasetSpec()
        if classes is None:
            classes = list(self.spec.classes)
        super().__init__(
            root if root is not None else default_cache_dir(),
            classes,
            val_fraction=val_fraction,
            check_files=check_files,
        )
        self._prepared = False

    def prepare(self, progress: ProgressCallback | None = None) -> None:
        """Generate the data unless a complete copy is already at ``root``."""
        ensure_default_dataset(self.root, progress, spec=self.spec)
        self._prepared = True

    def classes(self) -> list[str]:
        """The selected classes; generates the data first if needed."""
        if not self._prepared:
            self.prepare()
        return super().classes()

    def load_class(self, class_name: str) -> ClassData:
        """List one class's samples; generates the data first if needed."""
        if not self._prepared:
            self.prepare()
        return super().load_class(class_name)


def _spec_record(spec: DefaultDatasetSpec) -> dict[str, object]:
    record = asdict(spec)
    record["classes"] = list(spec.classes)
    return record


def _expected_files(spec: DefaultDatasetSpec) -> list[str]:
    files = []
    for class_name in spec.classes:
        files += [f"{class_name}/train/good/{i:03d}.png" for i in range(spec.train_per_class)]
        files += [f"{class_name}/test/good/{i:03d}.png" for i in range(spec.test_good_per_class)]
        for kind in DEFECT_KINDS:
            for i in range(spec.defective_per_kind):
                files.append(f"{class_name}/test/{kind}/{i:03d}.png")
                files.append(f"{class_name}/ground_truth/{kind}/{i:03d}_mask.png")
    return files


def _is_complete(root: Path, spec: DefaultDatasetSpec) -> bool:
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("version") != VERSION or marker.get("spec") != _spec_record(spec):
        return False
    return all((root / name).is_file() for name in _expected_files(spec))


def _clear_partial(root: Path) -> None:
    """Remove what an earlier (interrupted or other-spec) generation left in ``root``."""
    ours = {*TEXTURES, MARKER, "README.md", ".lock"}
    for leftover in root.glob(".*.tmp"):  # from an interrupted _atomic_write
        leftover.unlink()
    foreign = sorted(entry.name for entry in root.iterdir() if entry.name not in ours)
    if foreign:
        raise DatasetError(
            f"{root} holds files that are not the default dataset ({', '.join(foreign[:5])}); "
            f"refusing to generate there. Choose an empty folder or remove them."
        )
    (root / MARKER).unlink(missing_ok=True)
    for class_name in TEXTURES:
        if (root / class_name).is_dir():
            shutil.rmtree(root / class_name)


def _generate(root: Path, spec: DefaultDatasetSpec, progress: ProgressCallback | None) -> int:
    total = spec.images_per_class * len(spec.classes)
    done = 0
    if progress is not None:
        progress(0, total, "generating default dataset")
    for class_name in spec.classes:
        for relative, image, mask, _ in generate_default_class(class_name, spec):
            path = root / class_name / relative
            _atomic_write(path, _png_bytes(image))
            if mask is not None:
                mask_path = path.parent.parent.parent / "ground_truth" / path.parent.name
                mask_image = mask.astype(np.uint8) * 255
                _atomic_write(mask_path / f"{path.stem}_mask.png", _png_bytes(mask_image))
            done += 1
            if progress is not None:
                progress(done, total, f"generating default dataset: {class_name}")
    return done


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root/.lock`` so two processes do not generate at once."""
    try:
        import fcntl
    except ImportError:  # NOTE: no fcntl on Windows; concurrent first runs are not guarded
        yield
        return
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_readme(root: Path, spec: DefaultDatasetSpec) -> None:
    lines = [
        f"# DefectBench default dataset (version {VERSION})",
        "",
        "Generated by `bench`; delete this folder to have it generated again.",
        "Layout: MVTec AD (`<class>/train/good`, `<class>/test/<defect>`,",
        "`<class>/ground_truth/<defect>/<image>_mask.png`).",
        "",
        f"Seed {spec.seed}, {spec.image_size} x {spec.image_size} PNG. Per class:",
        f"{spec.train_per_class} train/good, {spec.test_good_per_class} test/good, "
        f"{spec.defective_per_kind} defective test images for each of "
        f"{', '.join(DEFECT_KINDS)}.",
        "",
        "| class | texture |",
        "| --- | --- |",
        *[f"| {name} | {TEXTURES[name].description} |" for name in spec.classes],
        "",
        "brick and gravel are crops of CC0 photos shipped with scikit-image",
        "(`skimage.data.brick()`, `skimage.data.gravel()`).",
        "",
    ]
    _atomic_write(root / "README.md", "\n".join(lines).encode())
