"""The embedded default dataset: determinism, exact masks, caching and its adapter."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data import DATASETS, DatasetError, stack_images, stack_masks
from bench.datasets._synthetic import DEFECTS, TEXTURES, paint_defect
from bench.datasets.default import (
    DEFAULT_CLASSES,
    DEFECT_KINDS,
    MARKER,
    DefaultDataset,
    DefaultDatasetSpec,
    default_cache_dir,
    ensure_default_dataset,
    generate_default_class,
)

# one gray photo class and one drawn colour class, one image per defect kind: fast
SMALL = DefaultDatasetSpec(
    image_size=64,
    train_per_class=3,
    test_good_per_class=1,
    defective_per_kind=1,
    classes=("brick", "weave"),
)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_default_dataset(tmp_path_factory.mktemp("default"), spec=SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }


def test_standard_spec_contents() -> None:
    spec = DefaultDatasetSpec()
    assert spec.image_size == 256
    assert DEFAULT_CLASSES == ("brick", "gravel", "weave", "woodgrain", "tiles")
    assert DEFECT_KINDS == ("scratch", "hole", "stain", "crack", "color", "thread")
    assert spec.images_per_class == 30 + 8 + 3 * 6
    assert {name for name in DEFAULT_CLASSES if TEXTURES[name].gray} == {"brick", "gravel"}


def test_generated_layout_and_modes(small_root: Path) -> None:
    assert (small_root / MARKER).is_file() and (small_root / "README.md").is_file()
    for class_name in SMALL.classes:
        class_dir = small_root / class_name
        assert len(list((class_dir / "train" / "good").iterdir())) == 3
        assert len(list((class_dir / "test" / "good").iterdir())) == 1
        for kind in DEFECT_KINDS:
            assert (class_dir / "test" / kind / "000.png").is_file()
            mask = Image.open(class_dir / "ground_truth" / kind / "000_mask.png")
            assert mask.mode == "L" and mask.size == (64, 64)
            assert set(np.unique(np.asarray(mask))) == {0, 255}
    assert Image.open(small_root / "brick" / "train" / "good" / "000.png").mode == "L"
    assert Image.open(small_root / "weave" / "train" / "good" / "000.png").mode == "RGB"
    marker = json.loads((small_root / MARKER).read_text())
    assert marker["images"] == 2 * (3 + 1 + 6) and marker["spec"]["seed"] == 0


def test_same_seed_gives_identical_files(small_root: Path, tmp_path: Path) -> None:
    again = ensure_default_dataset(tmp_path / "again", spec=SMALL)
    assert _files(again) == _files(small_root)


def test_other_seed_gives_other_images() -> None:
    first = dict((p, i) for p, i, _, _ in generate_default_class("weave", SMALL))
    other_spec = replace(SMALL, seed=1)
    other = dict((p, i) for p, i, _, _ in generate_default_class("weave", other_spec))
    assert first.keys() == other.keys()
    assert not np.array_equal(first["train/good/000.png"], other["train/good/000.png"])


def test_fewer_images_leave_the_others_unchanged() -> None:
    bigger = replace(SMALL, train_per_class=5)
    small = {p: i for p, i, _, _ in generate_default_class("brick", SMALL)}
    large = {p: i for p, i, _, _ in generate_default_class("brick", bigger)}
    for path, image in small.items():
        np.testing.assert_array_equal(image, large[path])


def test_training_images_differ_from_each_other() -> None:
    images = [i for p, i, _, _ in generate_default_class("brick", SMALL) if "train" in p]
    assert not np.array_equal(images[0], images[1])


@pytest.mark.parametrize("class_name", ["brick", "weave"])
def test_masks_are_exact(class_name: str) -> None:
    for path, image, mask, clean in generate_default_class(class_name, SMALL):
        defective = path.split("/")[1] != "good"
        assert (mask is not None) == defective, path
        if not defective:
            continue
        assert mask.any(), path
        changed = image != clean
        if changed.ndim == 3:
            changed = changed.any(axis=2)
        assert not (changed & ~mask).any(), f"{path}: pixels changed outside the mask"
        change = np.abs(image.astype(float) - clean.astype(float))[mask].mean() / 255
        assert change >= 0.03, f"{path}: defect too faint ({change:.3f})"


def test_gray_classes_stay_gray() -> None:
    for _, image, _, _ in generate_default_class("brick", SMALL):
        assert image.ndim == 2


def test_marker_is_what_makes_a_folder_complete(small_root: Path, tmp_path: Path) -> None:
    root = ensure_default_dataset(tmp_path / "d", spec=SMALL)
    before = _files(root)
    (root / MARKER).unlink()  # as if generation had stopped before its last step
    stray = root / "weave" / "test" / "hole" / "999.png"
    stray.write_bytes(b"half")
    ensure_default_dataset(root, spec=SMALL)
    assert not stray.exists()
    assert _files(root) == before


def test_a_deleted_file_triggers_regeneration(tmp_path: Path) -> None:
    root = ensure_default_dataset(tmp_path / "d", spec=SMALL)
    missing = root / "brick" / "ground_truth" / "crack" / "000_mask.png"
    content = missing.read_bytes()
    missing.unlink()
    ensure_default_dataset(root, spec=SMALL)
    assert missing.read_bytes() == content


def test_another_spec_regenerates(tmp_path: Path) -> None:
    root = ensure_default_dataset(tmp_path / "d", spec=SMALL)
    fewer = replace(SMALL, classes=("weave",))
    ensure_default_dataset(root, spec=fewer)
    assert not (root / "brick").exists()
    assert json.loads((root / MARKER).read_text())["spec"]["classes"] == ["weave"]


def test_complete_folder_is_not_rewritten(small_root: Path) -> None:
    path = small_root / "weave" / "train" / "good" / "000.png"
    stamp = path.stat().st_mtime_ns
    calls: list[tuple[int, int, str]] = []
    ensure_default_dataset(small_root, lambda *a: calls.append(a), spec=SMALL)
    assert path.stat().st_mtime_ns == stamp and calls == []


def test_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(
        DatasetError, match=r"holds files that are not the default dataset \(holiday"
    ):
        ensure_default_dataset(tmp_path, spec=SMALL)
    assert (tmp_path / "holiday.jpg").exists()


def test_progress_counts_every_image(tmp_path: Path) -> None:
    calls: list[tuple[int, int, str]] = []
    ensure_default_dataset(tmp_path / "d", lambda *a: calls.append(a), spec=SMALL)
    total = 2 * (3 + 1 + 6)
    assert calls[0][:2] == (0, total) and calls[-1][:2] == (total, total)
    assert [c[0] for c in calls] == list(range(total + 1))
    assert "weave" in calls[-1][2]


def test_default_cache_dir_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DEFECTBENCH_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "default-v1"
    monkeypatch.delenv("DEFECTBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "defectbench" / "default-v1"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "defectbench" / "default-v1"


def test_adapter_without_root_generates_into_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DEFECTBENCH_CACHE", str(tmp_path))
    adapter = DATASETS.get("default")(spec=SMALL)
    assert adapter.root == tmp_path / "default-v1"
    assert not adapter.root.exists()  # nothing happens before it is used
    assert adapter.classes() == ["brick", "weave"]
    assert (tmp_path / "default-v1" / MARKER).is_file()


def test_adapter_splits_and_tensors(small_root: Path) -> None:
    adapter = DefaultDataset(small_root, spec=SMALL)
    assert adapter.classes() == ["brick", "weave"]
    data = adapter.load_class("weave")
    assert len(data.train) == 2 and len(data.val) == 1
    assert data.val[0].sample_id == "weave/train/good/001"
    assert len(data.test) == 1 + len(DEFECT_KINDS)
    defective = [s for s in data.test if s.label == 1]
    assert {s.defect for s in defective} == set(DEFECT_KINDS)
    masks = stack_masks(data.test, size=64)
    assert [bool(m.any()) for m in masks] == [s.label == 1 for s in data.test]
    images = stack_images(data.test, size=32)
    assert images.shape == (7, 3, 32, 32)
    gray = stack_images(adapter.load_class("brick").train, size=32)
    assert bool((gray[:, 0] == gray[:, 1]).all())


def test_adapter_class_subset(small_root: Path) -> None:
    assert DefaultDataset(small_root, ["weave"], spec=SMALL).classes() == ["weave"]


def test_adapter_prepare_reports_progress(tmp_path: Path) -> None:
    calls: list[tuple[int, int, str]] = []
    adapter = DefaultDataset(tmp_path / "d", spec=SMALL)
    adapter.prepare(lambda *a: calls.append(a))
    assert calls and calls[-1][0] == calls[-1][1]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("train_per_class", 0, "train_per_class must be an integer >= 1"),
        ("defective_per_kind", 1.5, "defective_per_kind must be an integer >= 1"),
        ("image_size", 16, "image_size must be >= 32"),
        ("classes", ("brick", "marble"), "classes must be a non-empty subset"),
        ("classes", (), "classes must be a non-empty subset"),
    ],
)
def test_bad_spec_is_an_error(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DefaultDatasetSpec(**{field: value})


def test_unknown_class_to_generate() -> None:
    with pytest.raises(ValueError, match="unknown default class 'marble'"):
        next(generate_default_class("marble", SMALL))


def test_invisible_defect_is_an_error() -> None:
    black = np.zeros((64, 64, 3), dtype=np.uint8)  # a hole darkens: nothing to see on black
    with pytest.raises(RuntimeError, match="could not draw a visible hole defect"):
        paint_defect(np.random.default_rng(0), black, "hole", 0, 1, gray=True)


def test_every_defect_kind_paints_on_every_texture() -> None:
    assert set(DEFECTS) == set(DEFECT_KINDS)
    for class_index, (name, texture) in enumerate(TEXTURES.items()):
        rng = np.random.default_rng(class_index)
        drawn = texture.draw(rng, 64)
        clean = np.round(np.atleast_3d(drawn) * 255).astype(np.uint8)
        clean = np.broadcast_to(clean, (64, 64, 3)).copy()
        for kind in DEFECTS:
            image, mask = paint_defect(rng, clean, kind, 2, 2, gray=texture.gray)
            assert mask.any(), (name, kind)
            if texture.gray:
                assert (image[..., 0] == image[..., 2]).all()
