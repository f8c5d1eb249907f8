"""MVTec-layout adapters (mvtec, dtd, woven, folder): listing, splits and every error."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import DATASETS, DatasetError, stack_images, stack_masks
from bench.datasets._layout import validation_indices
from bench.datasets.mvtec_layout import DTD_CLASSES, MVTEC_OBJECTS, MVTEC_TEXTURES
from bench.imageio import ImageReadError


def _image(path: Path, value: int = 128, mode: str = "L", size: int = 8) -> Path:
    """Write a small constant image (any PIL mode) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        array = np.full((size, size, 3), value, dtype=np.uint8)
        Image.fromarray(array, mode="RGB").save(path)
    elif mode == "I;16":
        Image.fromarray(np.full((size, size), value * 257, dtype=np.uint16)).save(path)
    else:
        Image.fromarray(np.full((size, size), value, dtype=np.uint8)).convert(mode).save(path)
    return path


def _mask(path: Path, value: int = 255, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((size, size), dtype=np.uint8)
    array[2:5, 3:6] = value
    Image.fromarray(array).save(path)
    return path


def _make_class(
    root: Path,
    name: str = "carpet",
    train: int = 10,
    good: int = 2,
    defects: dict[str, int] | None = None,
    mask_suffix: str = "_mask",
    defect_dir: str | None = None,
) -> Path:
    """A class folder in MVTec layout with tiny images; returns the class folder."""
    class_dir = root / name
    for index in range(train):
        _image(class_dir / "train" / "good" / f"{index:03d}.png", value=index)
    for index in range(good):
        _image(class_dir / "test" / "good" / f"{index:03d}.png")
    for defect, count in (defects if defects is not None else {"hole": 2}).items():
        for index in range(count):
            _image(class_dir / "test" / defect / f"{index:03d}.png", value=30)
            mask_folder = class_dir / "ground_truth" / (defect_dir or defect)
            _mask(mask_folder / f"{index:03d}{mask_suffix}.png")
    return class_dir


def _adapter(name: str, root: Path, classes: list[str] | None = None, **kwargs: object):
    return DATASETS.get(name)(root, classes, **kwargs)


# --- registry and splits -------------------------------------------------------------------


def test_registered_names() -> None:
    assert {"mvtec", "dtd", "woven", "folder"} <= set(DATASETS.names())
    for name in ("mvtec", "dtd", "woven", "folder"):
        entry = DATASETS.entry(name)
        assert entry.description and entry.obj.name == name


@pytest.mark.parametrize(
    ("count", "fraction", "expected"),
    [
        (100, 0.1, [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]),
        (30, 0.1, [5, 15, 25]),
        (10, 0.1, [5]),
        (2, 0.1, [1]),
        (1, 0.1, []),
        (0, 0.1, []),
        (5, 0.0, []),
        (15, 0.1, [3, 11]),
        (3, 0.9, [0, 2]),  # never every image
    ],
)
def test_validation_indices(count: int, fraction: float, expected: list[int]) -> None:
    assert validation_indices(count, fraction) == expected


@pytest.mark.parametrize("fraction", [-0.1, 1.0, float("nan")])
def test_bad_val_fraction_is_an_error(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction must be in"):
        _adapter("folder", tmp_path, val_fraction=fraction)


def test_folder_lists_samples_with_masks_labels_and_ids(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet", train=10, good=2, defects={"hole": 2, "cut": 1})
    adapter = _adapter("folder", tmp_path)
    assert adapter.classes() == ["carpet"]
    data = adapter.load_class("carpet")
    assert data.class_name == "carpet"
    assert len(data.train) == 9 and len(data.val) == 1
    assert data.val[0].sample_id == "carpet/train/good/005"
    assert [s.sample_id for s in data.test] == [
        "carpet/test/cut/000",
        "carpet/test/good/000",
        "carpet/test/good/001",
        "carpet/test/hole/000",
        "carpet/test/hole/001",
    ]
    by_id = {s.sample_id: s for s in data.test}
    hole = by_id["carpet/test/hole/001"]
    assert hole.label == 1 and hole.defect == "hole"
    assert hole.mask_path == tmp_path / "carpet" / "ground_truth" / "hole" / "001_mask.png"
    good = by_id["carpet/test/good/000"]
    assert good.label == 0 and good.mask_path is None and good.defect == "good"


def test_val_split_holds_no_test_image_and_does_not_overlap_train(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet", train=31, good=3)
    data = _adapter("folder", tmp_path).load_class("carpet")
    val_paths = {s.image_path for s in data.val}
    assert len(data.val) == 3
    assert all(s.defect == "good" and s.label == 0 for s in data.val)
    assert all("/train/good/" in s.sample_id for s in data.val)
    assert not val_paths & {s.image_path for s in data.test}
    assert not val_paths & {s.image_path for s in data.train}
    assert len(data.train) + len(data.val) == 31


def test_listing_is_deterministic(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet", train=12)
    first = _adapter("folder", tmp_path).load_class("carpet")
    second = _adapter("folder", tmp_path).load_class("carpet")
    assert first == second


def test_loaded_tensors_from_mixed_modes(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "mixed", train=2, good=0, defects={"spot": 1})
    _image(class_dir / "train" / "good" / "010.png", value=200, mode="RGB", size=12)
    _image(class_dir / "train" / "good" / "011.png", value=100, mode="I;16", size=5)
    _image(class_dir / "train" / "good" / "012.png", value=50, mode="P")
    _image(class_dir / "train" / "good" / "013.png", value=50, mode="RGBA")
    data = _adapter("folder", tmp_path, val_fraction=0.0).load_class("mixed")
    images = stack_images(data.train, size=8)
    assert images.shape == (6, 3, 8, 8) and images.dtype == torch.float32
    torch.testing.assert_close(
        images[:, :, 4, 4].mean(dim=1),
        torch.tensor([0, 1, 200, 100, 50, 50], dtype=torch.float32) / 255,
        atol=1e-3,
        rtol=0,
    )
    masks = stack_masks(data.test, size=8)
    assert masks.dtype == torch.bool and int(masks.sum()) == 9


def test_mask_values_any_non_zero_counts(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "carpet", defects={"hole": 1})
    _mask(class_dir / "ground_truth" / "hole" / "000_mask.png", value=1)
    data = _adapter("folder", tmp_path).load_class("carpet")
    masks = stack_masks(data.test, size=8)
    assert int(masks.sum()) == 9  # 3 x 3 square of value 1; normal images empty


def test_hidden_files_and_folders_are_ignored(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "carpet", train=4)
    _image(class_dir / "train" / "good" / ".hidden.png")
    _image(class_dir / "test" / ".ipynb_checkpoints" / "000.png")
    _image(class_dir / "test" / "good" / "._000.png")  # macOS resource fork
    _mask(class_dir / "ground_truth" / "hole" / ".000_mask.png")
    (class_dir / "train" / "good" / "Thumbs.db").write_bytes(b"junk")
    (class_dir / "train" / "good" / "notes.txt").write_text("not an image")
    _make_class(tmp_path / ".trash", "carpet")
    adapter = _adapter("folder", tmp_path)
    assert adapter.classes() == ["carpet"]
    data = adapter.load_class("carpet")
    assert len(data.train) + len(data.val) == 4
    assert all(not s.image_path.name.startswith(".") for s in data.test)
    assert {s.defect for s in data.test} == {"good", "hole"}


def test_extensions_are_case_insensitive(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "carpet", train=2, defects={})
    _image(class_dir / "train" / "good" / "a.PNG")
    _image(class_dir / "train" / "good" / "b.JPG")
    _image(class_dir / "train" / "good" / "c.Jpeg")
    _image(class_dir / "train" / "good" / "d.BMP")
    _image(class_dir / "train" / "good" / "e.TIF")
    _image(class_dir / "train" / "good" / "f.tiff")
    _image(class_dir / "test" / "crack" / "x.JPG")
    _mask(class_dir / "ground_truth" / "crack" / "x_mask.PNG")
    data = _adapter("folder", tmp_path, val_fraction=0.0).load_class("carpet")
    assert sorted(s.image_path.name for s in data.train) == [
        "000.png",
        "001.png",
        "a.PNG",
        "b.JPG",
        "c.Jpeg",
        "d.BMP",
        "e.TIF",
        "f.tiff",
    ]
    crack = [s for s in data.test if s.defect == "crack"]
    assert crack[0].mask_path is not None and crack[0].mask_path.name == "x_mask.PNG"


def test_root_that_is_one_class_is_named_after_the_folder(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "magnetic")
    adapter = _adapter("folder", class_dir)
    assert adapter.classes() == ["magnetic"]
    data = adapter.load_class("magnetic")
    assert data.test[0].sample_id.startswith("magnetic/test/")


def test_folder_classes_are_sorted_and_need_train_good(tmp_path: Path) -> None:
    _make_class(tmp_path, "zebra")
    _make_class(tmp_path, "apple")
    (tmp_path / "notes").mkdir()
    assert _adapter("folder", tmp_path).classes() == ["apple", "zebra"]
    assert _adapter("folder", tmp_path, ["all"]).classes() == ["apple", "zebra"]
    assert _adapter("folder", tmp_path, ["zebra"]).classes() == ["zebra"]


def test_mask_may_share_the_image_name_in_folder_layout(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet", mask_suffix="")
    data = _adapter("folder", tmp_path).load_class("carpet")
    holes = [s for s in data.test if s.label == 1]
    assert [s.mask_path.name for s in holes if s.mask_path] == ["000.png", "001.png"]


# --- configured datasets -------------------------------------------------------------------


def test_mvtec_default_is_the_five_textures(tmp_path: Path) -> None:
    for name in MVTEC_TEXTURES + ("bottle",):
        _make_class(tmp_path, name, train=2)
    adapter = _adapter("mvtec", tmp_path)
    assert adapter.classes() == list(MVTEC_TEXTURES)
    assert _adapter("mvtec", tmp_path, ["grid", "carpet"]).classes() == ["grid", "carpet"]
    assert _adapter("mvtec", tmp_path, ["textures", "bottle"]).classes() == [
        *MVTEC_TEXTURES,
        "bottle",
    ]


def test_mvtec_objects_group_needs_the_object_folders(tmp_path: Path) -> None:
    for name in MVTEC_OBJECTS:
        _make_class(tmp_path, name, train=2)
    assert _adapter("mvtec", tmp_path, ["objects"]).classes() == list(MVTEC_OBJECTS)
    with pytest.raises(DatasetError, match="missing under .*carpet, grid, leather, tile, wood"):
        _adapter("mvtec", tmp_path, ["all"]).classes()


def test_mvtec_default_with_a_missing_texture_names_it(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet", train=2)
    with pytest.raises(
        DatasetError, match=r"missing .*grid, leather, tile, wood.*found there: carpet"
    ):
        _adapter("mvtec", tmp_path).classes()


def test_mvtec_needs_the_mask_suffix(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet", mask_suffix="")
    with pytest.raises(DatasetError, match=r"has no mask: expected 000_mask\.<"):
        _adapter("mvtec", tmp_path, ["carpet"]).load_class("carpet")


def test_mvtec_needs_test_good(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet", good=0)
    with pytest.raises(DatasetError, match=r"no folder .*carpet/test/good"):
        _adapter("mvtec", tmp_path, ["carpet"]).load_class("carpet")


def test_dtd_masks_share_the_image_name_under_bad(tmp_path: Path) -> None:
    _make_class(tmp_path, "Woven_001", defects={"bad": 3}, mask_suffix="")
    adapter = _adapter("dtd", tmp_path, ["woven_001"])  # any case when unambiguous
    assert adapter.classes() == ["Woven_001"]
    data = adapter.load_class("Woven_001")
    bad = [s for s in data.test if s.label == 1]
    assert len(bad) == 3 and {s.defect for s in bad} == {"bad"}
    assert bad[0].mask_path == tmp_path / "Woven_001" / "ground_truth" / "bad" / "000.png"


def test_dtd_default_is_all_twelve(tmp_path: Path) -> None:
    for name in DTD_CLASSES:
        (tmp_path / name / "train" / "good").mkdir(parents=True)
    assert _adapter("dtd", tmp_path).classes() == list(DTD_CLASSES)


def test_woven_has_defective_test_images_only(tmp_path: Path) -> None:
    _make_class(tmp_path, "texture_1", good=0, defects={"defective": 2}, mask_suffix="")
    _make_class(tmp_path, "texture_2", good=0, defects={"defective": 1})
    adapter = _adapter("woven", tmp_path)
    assert adapter.classes() == ["texture_1", "texture_2"]
    for name in adapter.classes():
        data = adapter.load_class(name)
        assert data.test and all(s.label == 1 and s.mask_path is not None for s in data.test)


# --- errors --------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data root .*nowhere does not exist.*--data-root"):
        _adapter("mvtec", tmp_path / "nowhere").classes()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        _adapter("folder", tmp_path / "file.txt").classes()


def test_no_root_says_data_root_is_needed() -> None:
    with pytest.raises(DatasetError, match="dataset 'mvtec' needs a data root: pass --data-root"):
        DATASETS.get("mvtec")(root=None)


def test_unknown_class_suggests_close_names(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet")
    with pytest.raises(DatasetError, match=r"unknown mvtec class 'carpt'\. Did you mean 'carpet'"):
        _adapter("mvtec", tmp_path, ["carpt"]).classes()
    with pytest.raises(DatasetError, match=r"unknown folder class 'rug'.*Valid: carpet, all"):
        _adapter("folder", tmp_path, ["rug"]).classes()


def test_load_class_without_folder(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet")
    with pytest.raises(
        DatasetError, match=r"class 'grid' has no folder .*grid; classes found: carpet"
    ):
        _adapter("folder", tmp_path).load_class("grid")


def test_empty_selection_is_an_error(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet")
    with pytest.raises(DatasetError, match="no folder classes selected"):
        _adapter("folder", tmp_path, []).classes()


def test_no_train_images(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "carpet", train=0)
    (class_dir / "train" / "good").mkdir(parents=True)
    with pytest.raises(
        DatasetError, match=r"class 'carpet' has no training images in .*train/good"
    ):
        _adapter("folder", tmp_path).load_class("carpet")


def test_no_train_folder(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet", train=0)
    with pytest.raises(DatasetError, match=r"no folder .*carpet/train/good"):
        _adapter("folder", tmp_path).load_class("carpet")


def test_no_test_images(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "carpet", good=0, defects={})
    (class_dir / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"class 'carpet' has no test images in .*carpet/test"):
        _adapter("folder", tmp_path).load_class("carpet")


def test_no_test_folder(tmp_path: Path) -> None:
    _make_class(tmp_path, "carpet", good=0, defects={})
    with pytest.raises(DatasetError, match=r"no folder .*carpet/test \(test images go in"):
        _adapter("folder", tmp_path).load_class("carpet")


def test_empty_defect_folder_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class_dir = _make_class(tmp_path, "carpet")
    (class_dir / "test" / "crack").mkdir()
    with caplog.at_level(logging.WARNING):
        data = _adapter("folder", tmp_path).load_class("carpet")
    assert "crack" not in {s.defect for s in data.test}
    assert "skipping empty test folder" in caplog.text and "crack" in caplog.text


def test_defective_image_without_mask(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "carpet")
    (class_dir / "ground_truth" / "hole" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"defective image .*hole/001\.png has no mask"):
        _adapter("folder", tmp_path).load_class("carpet")


def test_defective_images_without_ground_truth_folder(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "carpet", defects={})
    _image(class_dir / "test" / "hole" / "000.png")
    with pytest.raises(DatasetError, match=r"hole/000\.png has no mask: .* in .*ground_truth/hole"):
        _adapter("folder", tmp_path).load_class("carpet")


@pytest.mark.parametrize(
    ("extra_file", "message"),
    [
        (
            "ground_truth/hole/007_mask.png",
            r"mask .*hole/007_mask\.png has no image in .*test/hole",
        ),
        ("ground_truth/scratch/000_mask.png", r"scratch/000_mask\.png has no image"),
        ("ground_truth/hole/000.png", r"hole/000\.png has several masks"),
        ("train/good/003.jpg", r"two images share the name '003'"),
        ("test/stray.png", r"image .*test/stray\.png lies directly in"),
    ],
)
def test_a_stray_file_is_an_error_naming_it(tmp_path: Path, extra_file: str, message: str) -> None:
    class_dir = _make_class(tmp_path, "carpet")
    _image(class_dir / extra_file)
    with pytest.raises(DatasetError, match=message):
        _adapter("folder", tmp_path).load_class("carpet")


def test_masks_for_normal_images_are_ignored(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "carpet")
    _mask(class_dir / "ground_truth" / "good" / "000_mask.png", value=0)
    data = _adapter("folder", tmp_path).load_class("carpet")
    assert all(s.mask_path is None for s in data.test if s.label == 0)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "carpet")
    (class_dir / "test" / "hole" / "001.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"hole/001\.png"):
        _adapter("folder", tmp_path).load_class("carpet")
    # without the header check the error comes when the image is read
    data = _adapter("folder", tmp_path, check_files=False).load_class("carpet")
    with pytest.raises(ImageReadError, match=r"hole/001\.png"):
        stack_images(data.test, size=8)


def test_unreadable_mask_names_the_file(tmp_path: Path) -> None:
    class_dir = _make_class(tmp_path, "carpet")
    (class_dir / "ground_truth" / "hole" / "000_mask.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"hole/000_mask\.png"):
        _adapter("folder", tmp_path).load_class("carpet")


def test_mask_of_another_size_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class_dir = _make_class(tmp_path, "carpet")
    _mask(class_dir / "ground_truth" / "hole" / "000_mask.png", size=16)
    with caplog.at_level(logging.WARNING):
        _adapter("folder", tmp_path).load_class("carpet")
    assert "000_mask.png is 16x16 but its image" in caplog.text


# --- real data -----------------------------------------------------------------------------


def test_real_magnetic_tile_sample(sample_data_root: Path) -> None:
    adapter = _adapter("folder", sample_data_root / "magnetic_tile")
    assert adapter.classes() == ["magnetic_tile"]
    data = adapter.load_class("magnetic_tile")
    assert len(data.train) + len(data.val) == 100
    assert len(data.val) == 10
    assert len(data.test) == 226
    assert sum(s.mask_path is not None for s in data.test) == 196
    assert sum(s.label for s in data.test) == 196
    defects = {s.defect for s in data.test}
    assert defects == {"good", "blowhole", "break", "crack", "fray", "uneven"}
    masks = stack_masks([s for s in data.test if s.label == 1][:4], size=64)
    assert all(bool(mask.any()) for mask in masks)


def test_a_root_without_class_folders_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "carpet" / "test").mkdir(parents=True)  # no train/good: not a class
    with pytest.raises(DatasetError, match=r"folder: no class folder under .* train/good"):
        _adapter("folder", tmp_path, None).classes()
