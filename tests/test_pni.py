"""PNI: neighbourhood and position priors, the score, options, the adapter and its error paths."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import pytest
import torch
from method_inputs import cpu_context, offline_timm, texture_crops
from sklearn.metrics import roc_auc_score

from bench.method import parse_method_spec
from methods._patch_features import averaging_projection, coreset_order, locally_aware_features
from methods.pni import PNI, Options, resolve_options
from methods.pni.model import (
    NeighbourhoodMLP,
    gather_neighbours,
    neighbour_offsets,
    pni_scores,
    position_histogram,
    thresholded_score,
)

SIZE = 96
# Small but real: the bundled pretrained fallback on 96 px crops of a real brick texture.
TINY = {
    "image_size": SIZE,
    "coreset_ratio": 0.5,
    "dist_coreset_size": 32,
    "mlp_hidden": 32,
    "mlp_epochs": 1,
    "mlp_batch_size": 64,
    "mlp_max_samples": 256,
    "blur_sigma": 2.0,
}

pytestmark = pytest.mark.usefixtures("offline")
brick_crops = functools.partial(texture_crops, size=SIZE)


def fit_method(seed: int = 0, **options) -> PNI:
    method = PNI("quick", Options(**{**TINY, **options}))
    method.fit(brick_crops(4, seed=1), cpu_context(seed))
    return method


@pytest.fixture(scope="module")
def fitted() -> PNI:
    with offline_timm():
        return fit_method()


# --- model pieces against hand-worked cases ------------------------------------------------


def test_neighbour_offsets_leave_out_the_centre_in_row_major_order() -> None:
    offsets = neighbour_offsets(1)
    assert offsets.tolist() == [
        [-1, -1],
        [-1, 0],
        [-1, 1],
        [0, -1],
        [0, 1],
        [1, -1],
        [1, 0],
        [1, 1],
    ]
    assert neighbour_offsets(2).shape == (24, 2)


def test_gather_neighbours_concatenates_the_eight_surrounding_features() -> None:
    features = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).reshape(2, 2, 3, 3)
    padded = torch.nn.functional.pad(features, (1, 1, 1, 1))
    gathered = gather_neighbours(
        padded, torch.tensor([1, 0]), torch.tensor([1, 0]), torch.tensor([1, 2]), radius=1
    )
    assert gathered.shape == (2, 8 * 2)
    # Image 1, centre (1, 1): every neighbour is inside the grid.
    expected = [features[1, :, 1 + dy, 1 + dx] for dy, dx in neighbour_offsets(1).tolist()]
    assert torch.equal(gathered[0], torch.cat(expected))
    # Image 0, corner (0, 2): neighbours beyond the border are the zero padding.
    first = gathered[1].reshape(8, 2)
    assert torch.equal(first[0], torch.zeros(2))  # (-1, -1) lies above the grid
    assert torch.equal(first[3], features[0, :, 0, 1])  # (0, -1)
    assert torch.equal(first[6], features[0, :, 1, 2])  # (1, 0)


def test_position_histogram_spreads_votes_over_the_window_and_normalises() -> None:
    # One image, a 1 x 3 grid: entries 0, 1, 1.
    assignments = torch.tensor([[[0, 1, 1]]])
    histogram = position_histogram(assignments, num_entries=3, radius=1)
    expected = torch.tensor([[1 / 2, 1 / 2, 0.0], [1 / 3, 2 / 3, 0.0], [0.0, 1.0, 0.0]])
    assert torch.allclose(histogram, expected)


def test_thresholded_score_uses_the_nearest_allowed_entry_or_the_farthest() -> None:
    distances = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    allowed = torch.tensor([[False, True, True], [False, False, False]])
    gamma = 0.5
    scores = thresholded_score(distances, allowed, gamma)
    assert scores.tolist() == pytest.approx(
        [gamma * 2 - math.log(gamma), gamma * 3 - math.log(gamma)]
    )


def test_pni_scores_average_the_neighbourhood_and_position_scores() -> None:
    distances = torch.tensor([[1.0, 4.0]])
    # Neighbourhood prior allows only entry 1 (through its distribution entry 0); the
    # position prior allows only entry 0.
    neighbour_probs = torch.tensor([[0.9, 0.1]])
    position_probs = torch.tensor([[0.8, 0.2]])
    emb_to_dist = torch.tensor([1, 0])
    score = pni_scores(distances, neighbour_probs, position_probs, emb_to_dist, 0.5, 0.5, 1.0)
    assert score.tolist() == pytest.approx([0.5 * (4.0 + 1.0)])


def test_mlp_has_the_requested_number_of_linear_layers() -> None:
    mlp = NeighbourhoodMLP(16, 5, hidden=8, num_layers=4)
    linear = [layer for layer in mlp.layers if isinstance(layer, torch.nn.Linear)]
    assert [layer.out_features for layer in linear] == [8, 8, 8, 5]
    assert mlp.eval()(torch.zeros(3, 16)).shape == (3, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_layers": 1}, "num_layers must be at least 2"),
        ({"hidden": 0}, "sizes must be positive"),
    ],
)
def test_mlp_rejects_impossible_sizes(kwargs: dict, message: str) -> None:
    arguments = {"in_features": 4, "num_entries": 3, "hidden": 8, "num_layers": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        NeighbourhoodMLP(**arguments)


def test_locally_aware_features_average_a_window_and_join_layers_on_the_finest_grid() -> None:
    fine = torch.ones(1, 2, 4, 4)
    coarse = torch.full((1, 4, 2, 2), 3.0)
    projection = averaging_projection([2, 4], feature_dim=2, embed_dim=2)
    features = locally_aware_features([fine, coarse], 3, projection)
    assert features.shape == (1, 4, 4, 2)
    # Inside the fine grid the 3 x 3 mean of a constant is the constant; every window on the
    # 2 x 2 coarse grid holds 4 real values and 5 zeros of padding; each layer gets one value.
    assert features[0, 1, 1].tolist() == pytest.approx([1.0, 3.0 * 4 / 9])
    # At a corner the zero padding shares the window: 4 of 9 values are real.
    assert features[0, 0, 0, 0].item() == pytest.approx(4 / 9)


@pytest.mark.parametrize(
    ("maps", "patch_size", "message"),
    [([torch.ones(1, 2, 4, 4)], 4, "patch_size"), ([], 3, "feature_maps")],
)
def test_locally_aware_features_reject_bad_input(maps, patch_size, message) -> None:
    with pytest.raises(ValueError, match=message):
        locally_aware_features(maps, patch_size, torch.eye(2))


def test_coreset_order_prefix_serves_both_coreset_sizes() -> None:
    points = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    order = coreset_order(points, 20, 8, torch.Generator().manual_seed(3))
    again = coreset_order(points, 5, 8, torch.Generator().manual_seed(3))
    assert len(set(order.tolist())) == 20
    assert torch.equal(order[:5], again)


# --- options ------------------------------------------------------------------------------


def test_profiles_resolve_to_the_official_and_the_quick_settings() -> None:
    paper = resolve_options("paper", Options())
    assert (paper.backbone, paper.layers, paper.image_size, paper.patch_size) == (
        "wide_resnet101_2.tv_in1k",
        "layer2+layer3",
        480,
        5,
    )
    assert (paper.coreset_ratio, paper.dist_coreset_size, paper.neighbour_radius) == (0.01, 2048, 4)
    assert (paper.mlp_layers, paper.mlp_epochs, paper.temperature, paper.blur_sigma) == (
        10,
        15,
        2.0,
        8.0,
    )
    quick = resolve_options("quick", Options(mlp_epochs=3))
    assert quick.mlp_epochs == 3 and quick.image_size == 256


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("backbone", " ", "a timm model name"),
        ("layers", "layer2+conv9", "stages joined by '\\+'"),
        ("layers", "layer2+layer2", "each stage named once"),
        ("image_size", 16, "at least 32"),
        ("patch_size", 0, "at least 1"),
        ("patch_size", 4, "an odd integer"),
        ("feature_dim", 0, "at least 1"),
        ("embed_dim", 0, "at least 1"),
        ("projection_dim", 0, "at least 1"),
        ("dist_coreset_size", 0, "at least 1"),
        ("neighbour_radius", 0, "at least 1"),
        ("mlp_layers", 1, "at least 2"),
        ("mlp_hidden", 0, "at least 1"),
        ("mlp_epochs", 0, "at least 1"),
        ("mlp_batch_size", 1, "at least 2"),
        ("mlp_lr_step", 0, "at least 1"),
        ("mlp_max_samples", -1, "at least 0"),
        ("coreset_ratio", 0.0, r"a fraction in \(0, 1\]"),
        ("coreset_ratio", 1.5, r"a fraction in \(0, 1\]"),
        ("prob_gamma", 0.0, "a positive number"),
        ("temperature", -1.0, "a positive number"),
        ("mlp_lr", 0.0, "a positive number"),
        ("tau_neighbourhood", -0.1, "a non-negative number"),
        ("tau_position", -0.1, "a non-negative number"),
        ("blur_sigma", -1.0, "a non-negative number"),
    ],
)
def test_each_invalid_option_is_named_with_what_was_expected(name, value, expected) -> None:
    prefix = re.escape(f"pni option {name}={value!r} is invalid; expected")
    with pytest.raises(ValueError, match=prefix):
        Options(**{name: value})
    with pytest.raises(ValueError, match=expected):
        Options(**{name: value})


def test_an_invalid_option_is_refused_when_the_cli_spec_is_parsed() -> None:
    with pytest.raises(ValueError, match="pni option patch_size=4"):
        parse_method_spec("pni(patch_size=4)")
    assert parse_method_spec("pni(mlp_epochs=2)").build("quick").config.mlp_epochs == 2


# --- the method ---------------------------------------------------------------------------


def test_maps_have_the_image_size_and_are_finite(fitted: PNI) -> None:
    maps = fitted.predict(brick_crops(2, seed=5))
    assert maps.shape == (2, SIZE, SIZE)
    assert maps.dtype == torch.float32
    assert torch.isfinite(maps).all()


def test_two_fits_under_one_seed_give_identical_maps(fitted: PNI) -> None:
    images = brick_crops(2, seed=5)
    again = fit_method(seed=0)
    assert torch.equal(fitted.predict(images), again.predict(images))


def test_save_and_load_round_trip_gives_identical_maps(fitted: PNI, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    restored = PNI("quick", Options(mlp_epochs=9))  # the saved options win
    restored.load(tmp_path)
    images = brick_crops(2, seed=6)
    assert restored.config == fitted.config
    assert torch.equal(restored.predict(images), fitted.predict(images))
    assert restored.describe() == fitted.describe()


def test_a_bright_defect_scores_higher_than_the_normal_texture(fitted: PNI) -> None:
    image = brick_crops(1, seed=7)
    defective = image.clone()
    defective[:, :, 36:60, 36:60] = 1.0
    maps = fitted.predict(torch.cat([image, defective]))
    inside = maps[1, 40:56, 40:56].mean()
    assert inside > maps[0].max()
    assert inside > maps[1, :, :20].mean()


def test_describe_marks_the_fallback_and_the_missing_refinement(fitted: PNI) -> None:
    facts = fitted.describe()
    assert facts["backbone"] == "tf_efficientnet_lite0"
    assert facts["requested_backbone"] == "wide_resnet50_2.tv_in1k"
    assert facts["pretrained"] is True and facts["fallback"] is True
    assert "without" in facts["note"] and "refinement" in facts["note"]
    assert "latency" in facts["note"]


def test_unfitted_method_refuses_predict_and_save(tmp_path: Path) -> None:
    method = PNI("quick")
    with pytest.raises(RuntimeError, match=r"pni: predict\(\) called before fit"):
        method.predict(torch.rand(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match=r"pni: save\(\) called before fit"):
        method.save(tmp_path)


def test_load_names_a_missing_or_foreign_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pni checkpoint .* does not exist"):
        PNI("quick").load(tmp_path)
    torch.save({"format_version": 99}, tmp_path / "pni.pt")
    with pytest.raises(ValueError, match="format_version 99, this code reads 1"):
        PNI("quick").load(tmp_path)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(2, 1, SIZE, SIZE), r"images must be B x 3 x H x W, got \(2, 1, 96, 96\)"),
        (torch.rand(0, 3, SIZE, SIZE), "images is empty"),
    ],
)
def test_bad_image_batches_are_named(fitted: PNI, images, message) -> None:
    with pytest.raises(ValueError, match=message):
        fitted.predict(images)


def test_fit_refuses_a_grid_with_no_position_inside_the_border() -> None:
    method = PNI("quick", Options(**{**TINY, "image_size": 32}))
    with pytest.raises(
        ValueError, match=r"4 x 4 patch grid leaves no position .* raise image_size"
    ):
        method.fit(brick_crops(2, seed=1), cpu_context())


@pytest.mark.slow
def test_real_magnetic_tile_slice(sample_data_root: Path) -> None:
    from bench.imageio import read_image, read_mask  # noqa: PLC0415 - only for this test

    root = sample_data_root / "magnetic_tile" / "magnetic_tile"
    train = sorted((root / "train" / "good").glob("*.png"))[:20]
    defective = sorted((root / "test" / "blowhole").glob("*.png"))[:3]
    good = sorted((root / "test" / "good").glob("*.png"))[:2]
    # Blowholes span a few pixels: at 128 px the 8-pixel patches of the backbone blur them
    # away (PatchCore too scores chance there), so the slice keeps the data's 256 px.
    size = 256

    def stack(paths):
        return torch.stack([read_image(path, size) for path in paths])

    method = PNI("quick", Options(image_size=size, mlp_epochs=2))
    method.fit(stack(train), cpu_context())
    maps = method.predict(stack(defective + good))
    masks = torch.stack(
        [
            read_mask(root / "ground_truth" / "blowhole" / f"{p.stem}_mask.png", size)
            for p in defective
        ]
    )
    assert maps.shape == (5, size, size) and torch.isfinite(maps).all()
    assert roc_auc_score(masks.flatten().numpy(), maps[:3].flatten().numpy()) > 0.9


def test_an_mlp_that_never_reaches_a_finite_loss_is_an_error(monkeypatch) -> None:
    real_cross_entropy = torch.nn.functional.cross_entropy

    def diverged(*args, **kwargs):
        return real_cross_entropy(*args, **kwargs) * float("nan")

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", diverged)
    with pytest.raises(RuntimeError, match=r"not finite in any of 1 epochs; try a lower mlp_lr"):
        fit_method()
