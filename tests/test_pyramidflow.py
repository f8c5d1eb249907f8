"""PyramidFlow: pyramid, couplings, volume normalisation, loss, options and the adapter."""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from method_inputs import cpu_context, offline_timm, texture_crops

from bench.method import parse_method_spec
from methods.pyramidflow import Options, PyramidFlow, _dihedral_augment, resolve_options
from methods.pyramidflow.model import (
    InvertibleConv1x1,
    LaplacianPyramid,
    PyramidFlowNet,
    SemiInvertibleProjection,
    VolumeNorm,
    coupling_layout,
    pairwise_fourier_loss,
    template_difference,
)

SIZE = 64
TINY = {"image_size": SIZE, "num_stack": 1, "kernel_size": 3, "epochs": 1, "batch_size": 2}

pytestmark = pytest.mark.usefixtures("offline")
brick_crops = functools.partial(texture_crops, size=SIZE)


def fit_method(seed: int = 0, **options) -> PyramidFlow:
    method = PyramidFlow("quick", Options(**{**TINY, **options}))
    method.fit(brick_crops(4, seed=1), cpu_context(seed))
    return method


@pytest.fixture(scope="module")
def fitted() -> PyramidFlow:
    with offline_timm():
        return fit_method()


# --- the flow's pieces ----------------------------------------------------------------------


def test_pyramid_composes_back_exactly_what_it_decomposed() -> None:
    features = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pyramid = LaplacianPyramid(3)
    levels = pyramid.decompose(features)
    assert [tuple(level.shape[-2:]) for level in levels] == [(16, 16), (8, 8), (4, 4)]
    assert torch.allclose(pyramid.compose(levels), features, atol=1e-5)


def test_pyramid_refuses_too_few_levels_and_indivisible_maps() -> None:
    with pytest.raises(ValueError, match="num_levels must be at least 2, got 1"):
        LaplacianPyramid(1)
    with pytest.raises(ValueError, match=r"feature map \(12, 12\) is not divisible by 8"):
        LaplacianPyramid(4).decompose(torch.zeros(1, 1, 12, 12))


def test_coupling_layout_follows_the_official_block_order() -> None:
    assert coupling_layout(4, 1) == [(1, (0, 2)), (3, (2,)), (0, (1,)), (2, (1, 3))]
    assert coupling_layout(2, 2) == [(1, (0,)), (0, (1,))] * 2


def test_volume_normalised_1x1_convolution_keeps_volume_and_inverts() -> None:
    conv = InvertibleConv1x1(5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        conv.log_diagonal.add_(torch.arange(5.0))  # a scale change the normalisation undoes
    assert abs(float(conv.log_abs_det().detach())) < 1e-5
    assert abs(float(torch.linalg.det(conv.weight().detach().double()).abs()) - 1.0) < 1e-4
    inputs = torch.randn(2, 5, 3, 3)
    assert torch.allclose(conv.inverse(conv(inputs)), inputs, atol=1e-5)


@pytest.mark.parametrize(("dims", "shape"), [((0, 1), (1, 1, 4, 4)), ((0, 2, 3), (1, 3, 1, 1))])
def test_volume_norm_centres_the_batch_and_tracks_its_mean(dims, shape) -> None:
    norm = VolumeNorm(dims)
    log_scale = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) + 2.0
    centred = norm.train()(log_scale)
    assert torch.allclose(centred.mean(dim=dims), torch.zeros(()), atol=1e-6)
    assert norm.running_mean.shape == shape
    expected = 0.1 * log_scale.mean(dim=dims, keepdim=True)
    assert torch.allclose(norm.eval()(log_scale), log_scale - expected, atol=1e-6)
    fresh = VolumeNorm(dims)
    fresh.load_state_dict(norm.state_dict())
    assert torch.equal(fresh.running_mean, norm.running_mean)


def test_flow_inverts_its_forward_pass_after_a_training_step() -> None:
    torch.manual_seed(0)
    net = PyramidFlowNet(4, num_levels=3, num_stack=1, kernel_size=3, volume_norm="CVN")
    features = torch.randn(2, 4, 16, 16)
    for coupling in net.couplings:
        torch.nn.init.normal_(coupling.net[-1].weight, std=0.05)  # leave the identity start
    net.train()(features)  # fills the volume-norm means
    net.eval()
    with torch.no_grad():
        assert torch.allclose(net.inverse(net(features)), features, atol=1e-4)


def test_flow_refuses_unknown_volume_norm_and_empty_stacks() -> None:
    with pytest.raises(ValueError, match="volume_norm must be one of CVN, SVN, got 'BN'"):
        PyramidFlowNet(4, 2, 1, 3, "BN")
    with pytest.raises(ValueError, match="num_stack must be at least 1, got 0"):
        PyramidFlowNet(4, 2, 0, 3, "CVN")


def test_semi_invertible_projection_recovers_the_pixels() -> None:
    projection = SemiInvertibleProjection(3, 8, torch.Generator().manual_seed(0))
    images = torch.rand(2, 3, 5, 5)
    assert torch.allclose(projection.inverse(projection(images)), images, atol=1e-5)
    with pytest.raises(ValueError, match=r"out_channels \(2\) must be at least in_channels \(3\)"):
        SemiInvertibleProjection(3, 2)


def test_loss_and_template_difference_vanish_for_identical_latents() -> None:
    pyramid = LaplacianPyramid(2)
    latents = pyramid.decompose(torch.rand(1, 2, 8, 8).repeat(3, 1, 1, 1))
    assert float(pairwise_fourier_loss(latents, pyramid)) == pytest.approx(0.0, abs=1e-6)
    template = [level[:1] for level in latents]
    difference = template_difference(latents, template, pyramid)
    assert difference.shape == (3, 8, 8)
    assert float(difference.abs().max()) < 1e-6
    with pytest.raises(ValueError, match="needs a batch of at least 2 images, got 1"):
        pairwise_fourier_loss(template, pyramid)


def test_dihedral_augment_returns_a_flip_or_rotation_of_each_image() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    augmented = _dihedral_augment(images, torch.Generator().manual_seed(1))
    for image, result in zip(images, augmented, strict=True):
        views = (image, image.flip(-1))
        candidates = [torch.rot90(view, k, (-2, -1)) for view in views for k in range(4)]
        assert any(torch.equal(result, candidate) for candidate in candidates)


# --- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_name", "levels", "volume_norm", "augment"),
    [
        ("carpet", 8, "SVN", True),
        ("screw", 2, "CVN", False),
        ("bottle", 4, "SVN", False),
        ("tile", 4, "CVN", True),
        (None, 4, "CVN", True),
    ],
)
def test_per_class_settings_follow_the_official_script(
    class_name, levels, volume_norm, augment
) -> None:
    resolved = resolve_options("paper", Options(), class_name)
    assert (resolved.num_levels, resolved.volume_norm, resolved.augment) == (
        levels,
        volume_norm,
        augment,
    )
    assert (resolved.image_size, resolved.num_stack, resolved.kernel_size) == (1024, 4, 7)
    assert resolve_options("paper", Options(encoder="none")).image_size == 256


def test_user_settings_override_the_class_settings() -> None:
    resolved = resolve_options("quick", Options(class_name="carpet", num_levels=2), "grid")
    assert (resolved.class_name, resolved.num_levels, resolved.volume_norm) == ("carpet", 2, "SVN")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("encoder", "vgg", "one of resnet18, none"),
        ("volume_norm", "BN", "one of CVN, SVN"),
        ("backbone", " ", "a timm model name"),
        ("image_size", 16, "an integer of at least 32"),
        ("channels", 2, "an integer of at least 3 (the projection"),
        ("num_levels", 1, "an integer of at least 2"),
        ("num_stack", 0, "an integer of at least 1"),
        ("kernel_size", 0, "an integer of at least 1"),
        ("kernel_size", 4, "an odd integer"),
        ("epochs", 0, "an integer of at least 1"),
        ("batch_size", 1, "an integer of at least 2 (the loss compares image pairs)"),
        ("lr", 0.0, "a positive number"),
    ],
)
def test_each_invalid_option_is_named_with_what_was_expected(name, value, expected) -> None:
    message = f"pyramidflow option {name}={value!r} is invalid; expected {expected}"
    with pytest.raises(ValueError, match=re.escape(message)):
        Options(**{name: value})


def test_image_size_must_suit_the_pyramid_of_the_class() -> None:
    with pytest.raises(ValueError, match=r"image_size=256 is invalid; expected a multiple of 512"):
        resolve_options("quick", Options(num_levels=8), "carpet")  # 8 levels, stride-4 features
    with pytest.raises(ValueError, match="pyramidflow option image_size=100"):
        parse_method_spec("pyramidflow(image_size=100)").build("quick")


# --- the method ---------------------------------------------------------------------------


def test_maps_are_finite_at_the_feature_resolution(fitted: PyramidFlow) -> None:
    maps = fitted.predict(brick_crops(3, seed=5))
    assert maps.shape == (3, SIZE // 4, SIZE // 4)
    assert maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert len(fitted.losses) == 1 and np.isfinite(fitted.losses[0])


def test_two_fits_under_one_seed_give_identical_maps(fitted: PyramidFlow) -> None:
    images = brick_crops(2, seed=5)
    assert torch.equal(fitted.predict(images), fit_method(seed=0).predict(images))


def test_save_and_load_round_trip_gives_identical_maps(fitted: PyramidFlow, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    restored = PyramidFlow("quick", Options(epochs=7))  # the saved options win
    restored.load(tmp_path)
    images = brick_crops(2, seed=6)
    assert restored.config == fitted.config
    assert torch.equal(restored.predict(images), fitted.predict(images))
    assert restored.describe() == fitted.describe()


def test_load_warns_only_about_options_that_differ(tmp_path: Path, caplog) -> None:
    method = PyramidFlow("quick", Options(**{**TINY, "epochs": 1}))
    method.fit(brick_crops(2, seed=1), dataclasses.replace(cpu_context(), class_name="screw"))
    method.save(tmp_path)
    PyramidFlow("quick", Options(**{**TINY, "epochs": 1})).load(tmp_path)
    assert "was trained with" not in caplog.text  # its class is not a difference
    PyramidFlow("quick", Options(**{**TINY, "epochs": 3})).load(tmp_path)
    assert "was trained with epochs=1" in caplog.text


def test_encoder_free_variant_fits_and_round_trips(tmp_path: Path) -> None:
    method = fit_method(encoder="none", num_levels=2, channels=4)
    images = brick_crops(1, seed=8)
    maps = method.predict(images)
    assert maps.shape == (1, SIZE, SIZE) and method.describe()["backbone"] is None
    method.save(tmp_path)
    restored = PyramidFlow("quick")
    restored.load(tmp_path)
    assert torch.equal(restored.predict(images), maps)


def test_a_bright_defect_scores_higher_than_the_normal_texture(fitted: PyramidFlow) -> None:
    image = brick_crops(1, seed=7)
    defective = image.clone()
    defective[:, :, 24:40, 24:40] = 1.0
    maps = fitted.predict(torch.cat([image, defective]))
    inside = maps[1, 7:9, 7:9].mean()
    # One epoch of training: the template difference is already larger where the square is
    # than at the same place of the clean image and than the defective image's average.
    assert inside > 1.5 * maps[0, 7:9, 7:9].mean()
    assert inside > maps[1].mean()


def test_describe_marks_the_fallback_and_the_class_settings(fitted: PyramidFlow) -> None:
    facts = fitted.describe()
    assert facts["backbone"] == "tf_efficientnet_lite0"
    assert facts["requested_backbone"] == "resnet18.tv_in1k"
    assert facts["pretrained"] is True and facts["fallback"] is True
    assert "4 pyramid levels, CVN" in facts["note"] and "offline fallback" in facts["note"]


def test_a_class_pyramid_too_deep_for_the_image_keeps_the_levels_that_fit(caplog) -> None:
    resolved = resolve_options("quick", Options(), "carpet")  # official: 8 levels, SVN
    assert (resolved.image_size, resolved.num_levels, resolved.volume_norm) == (256, 7, "SVN")
    assert "class carpet uses 8 pyramid levels; 7 fit image_size=256" in caplog.text
    assert resolve_options("quick", Options(image_size=96), "carpet").num_levels == 4


def test_fit_takes_the_class_from_the_context() -> None:
    method = PyramidFlow("quick", Options(**{**TINY, "epochs": 1}))
    fit_context = dataclasses.replace(cpu_context(), class_name="screw")
    method.fit(brick_crops(2, seed=1), fit_context)
    assert (method.config.num_levels, method.config.augment) == (2, False)


def test_fit_needs_a_full_batch_of_normal_images() -> None:
    method = PyramidFlow("quick", Options(**{**TINY, "batch_size": 3}))
    with pytest.raises(ValueError, match="needs at least batch_size=3 normal images, got 2"):
        method.fit(brick_crops(2, seed=1), cpu_context())


def test_unfitted_method_refuses_predict_and_save(tmp_path: Path) -> None:
    method = PyramidFlow("quick")
    with pytest.raises(RuntimeError, match=r"pyramidflow: predict\(\) called before fit"):
        method.predict(torch.rand(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match=r"pyramidflow: save\(\) called before fit"):
        method.save(tmp_path)


def test_load_names_a_missing_or_foreign_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pyramidflow checkpoint .* does not exist"):
        PyramidFlow("quick").load(tmp_path)
    torch.save({"format_version": 99}, tmp_path / "pyramidflow.pt")
    with pytest.raises(ValueError, match="format_version 99, this code reads 1"):
        PyramidFlow("quick").load(tmp_path)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(2, 1, SIZE, SIZE), r"images must be B x 3 x H x W, got \(2, 1, 64, 64\)"),
        (torch.rand(0, 3, SIZE, SIZE), "images is empty"),
    ],
)
def test_bad_image_batches_are_named(fitted: PyramidFlow, images, message) -> None:
    with pytest.raises(ValueError, match=message):
        fitted.predict(images)


@pytest.mark.slow
def test_real_magnetic_tile_slice(sample_data_root: Path) -> None:
    from bench.imageio import read_image, read_mask  # noqa: PLC0415 - only for this test

    root = sample_data_root / "magnetic_tile" / "magnetic_tile"
    train = sorted((root / "train" / "good").glob("*.png"))[:8]
    defective = sorted((root / "test" / "blowhole").glob("*.png"))[:3]
    good = sorted((root / "test" / "good").glob("*.png"))[:2]
    size = 128

    def stack(paths):
        return torch.stack([read_image(path, size) for path in paths])

    method = PyramidFlow("quick", Options(image_size=size, epochs=2))
    method.fit(stack(train), cpu_context())
    maps = method.predict(stack(defective + good))
    masks = torch.stack(
        [
            read_mask(root / "ground_truth" / "blowhole" / f"{p.stem}_mask.png", 32)
            for p in defective
        ]
    )
    assert maps.shape == (5, 32, 32) and torch.isfinite(maps).all()
    assert maps[:3][masks].mean() > maps[:3][~masks].mean()
