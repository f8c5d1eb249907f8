"""Reading images and masks of every mode and bit depth, and the errors for bad files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from bench.imageio import ImageReadError, image_size, is_image_file, read_image, read_mask


def _gray_ramp(height: int = 8, width: int = 12) -> np.ndarray:
    """A uint8 gray image with distinct values, ``H x W``."""
    return (np.arange(height * width).reshape(height, width) * 2).astype(np.uint8)


def _rgb(height: int = 8, width: int = 12) -> np.ndarray:
    gray = _gray_ramp(height, width)
    return np.stack([gray, 255 - gray, np.full_like(gray, 7)], axis=2)  # H x W x 3


def test_gray_8bit_is_repeated_over_three_channels(tmp_path: Path) -> None:
    gray = _gray_ramp()
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (3, 8, 12) and image.dtype == torch.float32
    expected = torch.from_numpy(gray.astype(np.float32) / 255.0)
    for channel in range(3):
        torch.testing.assert_close(image[channel], expected)


def test_rgb_8bit_keeps_channel_order(tmp_path: Path) -> None:
    rgb = _rgb()
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    image = read_image(tmp_path / "c.png")
    expected = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)
    torch.testing.assert_close(image, expected)


def test_rgba_drops_alpha_without_premultiplying(tmp_path: Path) -> None:
    rgb = _rgb()
    alpha = np.zeros(rgb.shape[:2], dtype=np.uint8)  # fully transparent
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    expected = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)
    torch.testing.assert_close(image, expected)


def test_gray_with_alpha(tmp_path: Path) -> None:
    gray = _gray_ramp()
    Image.fromarray(np.dstack([gray, np.full_like(gray, 255)]), mode="LA").save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    torch.testing.assert_close(image[1], torch.from_numpy(gray.astype(np.float32) / 255.0))


def test_palette_image_shows_its_palette_colours(tmp_path: Path) -> None:
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    palette_image = Image.fromarray(indices, mode="P")
    palette_image.putpalette([10, 20, 30, 200, 100, 0, 255, 255, 255] + [0] * (253 * 3))
    palette_image.save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    expected = torch.tensor(
        [[[10, 200], [255, 200]], [[20, 100], [255, 100]], [[30, 0], [255, 0]]],
        dtype=torch.float32,
    )
    torch.testing.assert_close(image, expected / 255.0)


def test_gray_16bit_uses_the_full_range(tmp_path: Path) -> None:
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    image = read_image(tmp_path / "g16.png")
    expected = torch.tensor([[0.0, 256 / 65535, 32768 / 65535, 1.0]])
    torch.testing.assert_close(image[0], expected)
    torch.testing.assert_close(image[2], expected)


def test_dark_gray_16bit_is_not_mistaken_for_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 100, 255]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "dark16.tif")
    image = read_image(tmp_path / "dark16.tif")
    torch.testing.assert_close(image[0], torch.tensor([[0.0, 100 / 65535, 255 / 65535]]))


def test_rgb_16bit_keeps_all_bits(tmp_path: Path) -> None:
    rgb = np.array([[[1, 2, 65535], [40000, 300, 0]]], dtype=np.uint16)  # 1 x 2 x 3
    cv2.imwrite(str(tmp_path / "c16.png"), rgb[..., ::-1])  # OpenCV writes BGR
    image = read_image(tmp_path / "c16.png")
    expected = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float64) / 65535.0).float()
    torch.testing.assert_close(image, expected)


def test_one_bit_image(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1], [1, 0]], dtype=bool)).save(tmp_path / "b.png")
    image = read_image(tmp_path / "b.png")
    torch.testing.assert_close(image[0], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".bmp", ".tif", ".TIFF"])
def test_other_formats_and_upper_case_extensions(tmp_path: Path, suffix: str) -> None:
    rgb = np.full((8, 8, 3), (200, 50, 20), dtype=np.uint8)
    path = tmp_path / f"x{suffix}"
    Image.fromarray(rgb).save(path, format={".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix.lower()))
    image = read_image(path)
    tolerance = 3 / 255 if "jp" in suffix.lower() else 0.0
    torch.testing.assert_close(
        image[:, 4, 4], torch.tensor([200.0, 50.0, 20.0]) / 255, atol=tolerance, rtol=0
    )


def test_resize_gives_square_size_and_stays_in_range(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "r.png")
    image = read_image(tmp_path / "r.png", size=16)
    assert image.shape == (3, 16, 16)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_constant_image_stays_constant_after_resize(tmp_path: Path) -> None:
    Image.fromarray(np.full((20, 10), 51, dtype=np.uint8)).save(tmp_path / "k.png")
    image = read_image(tmp_path / "k.png", size=7)
    torch.testing.assert_close(image, torch.full((3, 7, 7), 0.2))


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_size_is_an_error_naming_the_argument(tmp_path: Path, size: object) -> None:
    Image.fromarray(_gray_ramp()).save(tmp_path / "g.png")
    with pytest.raises(ValueError, match="size must be a positive integer"):
        read_image(tmp_path / "g.png", size=size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size must be a positive integer"):
        read_mask(tmp_path / "g.png", size=size)  # type: ignore[arg-type]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="missing.png"):
        read_mask(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="missing.png"):
        image_size(tmp_path / "missing.png")


def test_not_an_image_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match=r"cannot read image .*fake\.png"):
        read_image(tmp_path / "fake.png")
    with pytest.raises(ImageReadError, match="fake.png"):
        image_size(tmp_path / "fake.png")


def test_truncated_file_is_an_error(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_image_read_error_is_an_os_error() -> None:
    assert issubclass(ImageReadError, OSError)


def test_mask_any_non_zero_value_is_a_defect(tmp_path: Path) -> None:
    values = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "m.png")
    torch.testing.assert_close(
        read_mask(tmp_path / "m.png"), torch.tensor([[False, True, True, True]])
    )


def test_mask_16bit_and_one_bit(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1, 65535]], dtype=np.uint16)).save(tmp_path / "m16.png")
    torch.testing.assert_close(read_mask(tmp_path / "m16.png"), torch.tensor([[False, True, True]]))
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "m1.png")
    torch.testing.assert_close(read_mask(tmp_path / "m1.png"), torch.tensor([[True, False]]))


def test_mask_rgb_counts_any_channel(tmp_path: Path) -> None:
    rgb = np.zeros((1, 3, 3), dtype=np.uint8)
    rgb[0, 1] = (0, 0, 9)
    rgb[0, 2] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    torch.testing.assert_close(read_mask(tmp_path / "m.png"), torch.tensor([[False, True, True]]))


def test_mask_rgba_ignores_transparent_pixels(tmp_path: Path) -> None:
    rgba = np.array([[[255, 255, 255, 0], [255, 0, 0, 255], [0, 0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "m.png")
    torch.testing.assert_close(read_mask(tmp_path / "m.png"), torch.tensor([[False, True, False]]))


def test_mask_palette_is_judged_by_colour(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2]], dtype=np.uint8)
    palette_mask = Image.fromarray(indices, mode="P")
    # index 1 shows black, so it is background although its index is non-zero
    palette_mask.putpalette([0, 0, 0, 0, 0, 0, 128, 0, 0] + [0] * (253 * 3))
    palette_mask.save(tmp_path / "m.png")
    torch.testing.assert_close(read_mask(tmp_path / "m.png"), torch.tensor([[False, False, True]]))


def test_mask_resize_is_nearest(tmp_path: Path) -> None:
    values = np.zeros((4, 4), dtype=np.uint8)
    values[:2, :2] = 255
    Image.fromarray(values).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png", size=8)
    assert mask.dtype == torch.bool and mask.shape == (8, 8)
    assert int(mask.sum()) == 16 and bool(mask[:4, :4].all())


def test_image_size_reads_the_header(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((5, 9), dtype=np.uint8)).save(tmp_path / "s.png")
    assert image_size(tmp_path / "s.png") == (5, 9)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", True),
        ("a.PNG", True),
        ("a.Jpeg", True),
        ("a.tif", True),
        ("a.bmp", True),
        (".a.png", False),
        ("a.txt", False),
        ("a.png.bak", False),
        ("a", False),
    ],
)
def test_is_image_file(name: str, expected: bool) -> None:
    assert is_image_file(Path(name)) is expected
