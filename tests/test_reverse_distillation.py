"""Reverse distillation (rd) and RD++ (rrd): networks, losses, noise, adapters, error paths."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from method_inputs import cpu_context, texture_crops
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn

from bench.method import METHODS, parse_method_spec
from methods._backbones import BackboneUnavailableError, load_feature_extractor
from methods._reverse_distillation import (
    OneClassBottleneck,
    ResidualBottleneck,
    ReverseDistillationNet,
    ReverseDistillationStudent,
    StudentDecoder,
    anomaly_map,
    check_pyramid,
    distillation_loss,
)
from methods.rd import TEACHER_LAYERS, ReverseDistillation, ReverseDistillationOptions
from methods.rrd import RevisitedReverseDistillation, RevisitedReverseDistillationOptions
from methods.rrd.model import (
    CONTRAST_WEIGHT,
    RECONSTRUCTION_WEIGHT,
    MultiProjectionLayer,
    ProjectionLayer,
    add_noise_patches,
    contrast_loss,
    fractal_noise,
    projection_loss,
    reconstruction_loss,
    sinkhorn_divergence,
    ssot_loss,
)

SIZE = 64
# Small but real: the bundled pretrained EfficientNet-Lite0 teacher on 64 px brick crops.
TINY = {"image_size": SIZE, "epochs": 2, "batch_size": 2, "sigma": 1.0}
METHOD_CLASSES = {"rd": ReverseDistillation, "rrd": RevisitedReverseDistillation}
OPTION_CLASSES = {"rd": ReverseDistillationOptions, "rrd": RevisitedReverseDistillationOptions}

pytestmark = pytest.mark.usefixtures("offline")
brick_crops = functools.partial(texture_crops, size=SIZE)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These tiny networks run faster on one thread, and a second thread that waits for a
    # core held by another process makes each step many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit_method(name: str, tmp_path: Path, seed: int = 0, **options):
    method = METHOD_CLASSES[name]("quick", OPTION_CLASSES[name](**{**TINY, **options}))
    method.fit(brick_crops(4, seed=1), cpu_context(seed, tmp_path))
    return method


class TinyTeacher(nn.Module):
    """Fixed random convolutions with strides 4, 8, 16 and 4, 8, 16 channels."""

    channels = [4, 8, 16]
    reductions = [4, 8, 16]

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.convs = nn.ModuleList()
        in_channels, stride = 3, 4
        for out_channels in self.channels:
            conv = nn.Conv2d(in_channels, out_channels, stride, stride=stride)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
            self.convs.append(conv)
            in_channels, stride = out_channels, 2
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features, maps = images, []
        for conv in self.convs:
            features = conv(features)
            maps.append(features)
        return maps


# --- networks -------------------------------------------------------------------------------


def test_student_restores_every_teacher_shape() -> None:
    teacher = TinyTeacher()
    student = ReverseDistillationStudent(teacher.channels, width_multiplier=2)
    images = torch.rand(2, 3, 64, 64)
    teacher_maps = teacher(images)
    embedding = student.bottleneck(teacher_maps)
    assert embedding.shape == (2, 32, 2, 2)  # 2 x C3 channels at stride 32
    student_maps = student(teacher_maps)
    assert [m.shape for m in student_maps] == [m.shape for m in teacher_maps]


def test_wide_resnet_sizes_match_the_original_architecture() -> None:
    # wide_resnet50_2 teacher maps: 256, 512, 1024 channels; the original bottleneck's
    # embedding has 2048 channels and 3 blocks, the decoder 3, 4 and 6 blocks of widths
    # 512, 256, 128 with 2x2 transposed convolutions.
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        bottleneck = OneClassBottleneck([256, 512, 1024], width_multiplier=2)
        decoder = StudentDecoder([256, 512, 1024], width_multiplier=2)
    assert bottleneck.out_channels == 2048
    assert len(bottleneck.embed) == 3
    assert bottleneck.embed[0].conv1.in_channels == 3 * 1024
    assert bottleneck.embed[0].conv2.stride == (2, 2)
    stages = [decoder.stage3, decoder.stage2, decoder.stage1]
    assert [len(stage) for stage in stages] == [3, 4, 6]
    assert [stage[0].conv2.in_channels for stage in stages] == [512, 256, 128]
    assert all(isinstance(stage[0].conv2, nn.ConvTranspose2d) for stage in stages)
    assert [stage[-1].conv3.out_channels for stage in stages] == [1024, 512, 256]


def test_residual_block_resamples_as_asked() -> None:
    features = torch.rand(1, 8, 8, 8)
    assert ResidualBottleneck(8, 16, 4, "down")(features).shape == (1, 16, 4, 4)
    assert ResidualBottleneck(8, 16, 4, "up")(features).shape == (1, 16, 16, 16)
    assert ResidualBottleneck(8, 8, 4, "none")(features).shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match="resample must be 'down', 'up' or 'none', got 'left'"):
        ResidualBottleneck(8, 8, 4, "left")


def test_student_needs_three_scales() -> None:
    with pytest.raises(ValueError, match=r"exactly 3 teacher scales, got channels \[4, 8\]"):
        ReverseDistillationStudent([4, 8])


def test_net_keeps_gradients_out_of_the_teacher() -> None:
    teacher = TinyTeacher()
    net = ReverseDistillationNet(teacher, ReverseDistillationStudent(teacher.channels, 1), None)
    teacher_maps, student_maps = net(torch.rand(2, 3, 64, 64))
    assert all(not m.requires_grad for m in teacher_maps)
    assert all(m.requires_grad for m in student_maps)
    assert net.trainable_modules() == [net.student]


def test_projection_layer_widths_and_shapes() -> None:
    layer = ProjectionLayer(16)
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(16, 8), (8, 4), (4, 8), (8, 16)]
    maps = [torch.rand(2, c, s, s) for c, s in ((4, 16), (8, 8), (16, 4))]
    projected = MultiProjectionLayer([4, 8, 16])(maps)
    assert [p.shape for p in projected] == [m.shape for m in maps]


def test_check_pyramid_errors_name_the_option() -> None:
    check_pyramid([4, 8, 16], 64, "option image_size")
    with pytest.raises(ValueError, match=r"option image_size: teacher strides must be r, 2r, 4r"):
        check_pyramid([4, 8, 32], 64, "option image_size")
    with pytest.raises(ValueError, match="image_size 80 must be a multiple of 32 and at least 64"):
        check_pyramid([4, 8, 16], 80, "option image_size")
    with pytest.raises(ValueError, match="image_size 32 must be a multiple of 32 and at least 64"):
        check_pyramid([4, 8, 16], 32, "option image_size")


# --- losses and maps against independent computations ---------------------------------------


def _cosine(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    return (a * b).sum(axis) / (np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis))


def test_distillation_losses_match_numpy() -> None:
    generator = torch.Generator().manual_seed(3)
    teacher = [torch.randn(2, c, s, s, generator=generator) for c, s in ((3, 4), (5, 2))]
    student = [torch.randn(t.shape, generator=generator) for t in teacher]
    flat = sum(
        np.mean(1 - _cosine(t.reshape(2, -1).numpy(), s.reshape(2, -1).numpy(), 1))
        for t, s in zip(teacher, student, strict=True)
    )
    pixel = sum(
        np.mean(1 - _cosine(t.numpy(), s.numpy(), 1)) for t, s in zip(teacher, student, strict=True)
    )
    assert distillation_loss(teacher, student, "flat").item() == pytest.approx(flat, rel=1e-5)
    assert distillation_loss(teacher, student, "pixel").item() == pytest.approx(pixel, rel=1e-5)
    assert distillation_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="mode must be one of flat, pixel, got 'mse'"):
        distillation_loss(teacher, student, "mse")


def test_anomaly_map_hand_worked() -> None:
    # One 2 x 2 scale, two channels: 1 - cos per position, then bilinear (corners aligned)
    # up to 3 x 3, where the centre is the mean of the four corners.
    teacher = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]])
    student = torch.tensor([[[[1.0, 0.0], [-1.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]]])
    # positions: (1,0)·(1,0)=1 -> 0; (1,1)·(0,1) -> 1 - 1/sqrt2; (1,0)·(-1,0) -> 2;
    # (0,1)·(1,0) -> 1.
    corners = np.array([[0.0, 1 - 1 / np.sqrt(2)], [2.0, 1.0]])
    added = anomaly_map([teacher, teacher], [student, student], 3, "add")[0].numpy()
    assert added.shape == (3, 3)
    np.testing.assert_allclose(added[::2, ::2], 2 * corners, atol=1e-6)
    np.testing.assert_allclose(added[1, 1], 2 * corners.mean(), atol=1e-6)
    multiplied = anomaly_map([teacher, teacher], [student, student], 2, "multiply")[0]
    np.testing.assert_allclose(multiplied.numpy(), corners**2, atol=1e-6)
    with pytest.raises(ValueError, match="mode must be one of add, multiply, got 'max'"):
        anomaly_map([teacher], [student], 3, "max")
    with pytest.raises(ValueError, match="needs at least one pair of feature maps"):
        anomaly_map([], [], 3)


def test_reconstruction_and_contrast_losses_match_references() -> None:
    generator = torch.Generator().manual_seed(5)
    noisy = [torch.randn(3, c, 4, 4, generator=generator) for c in (2, 4)]
    abnormal = [torch.randn(t.shape, generator=generator) for t in noisy]
    normal = [torch.randn(t.shape, generator=generator) for t in noisy]
    expected_reconstruction = sum(
        np.mean(1 - _cosine(a.numpy(), n.numpy(), 1)) for a, n in zip(abnormal, normal, strict=True)
    )
    assert reconstruction_loss(abnormal, normal).item() == pytest.approx(
        expected_reconstruction, rel=1e-5
    )
    # The official term: CosineEmbeddingLoss(margin=-0.5) with every target +1.
    official = nn.CosineEmbeddingLoss(margin=-0.5)
    expected_contrast = sum(
        official(t.flatten(1), n.flatten(1), torch.ones(3)).item()
        for t, n in zip(noisy, normal, strict=True)
    )
    assert contrast_loss(noisy, normal).item() == pytest.approx(expected_contrast, rel=1e-5)


def test_sinkhorn_divergence_of_single_points_and_equal_clouds() -> None:
    first, second = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.3, 0.4]])
    assert sinkhorn_divergence(first, second).item() == pytest.approx(0.125, rel=1e-4)
    cloud = torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    assert abs(sinkhorn_divergence(cloud, cloud.flip(0)).item()) < 1e-5


def test_ssot_of_a_shuffled_batch_is_zero_and_projection_loss_weights() -> None:
    generator = torch.Generator().manual_seed(7)
    normal = [torch.randn(4, c, 4, 4, generator=generator, requires_grad=True) for c in (2, 4)]
    abnormal = [torch.randn(t.shape, generator=generator) for t in normal]
    noisy = [torch.randn(t.shape, generator=generator) for t in normal]
    permutation = torch.tensor([2, 0, 3, 1])
    ssot = ssot_loss(normal, permutation)
    assert abs(ssot.item()) < 1e-5
    losses = projection_loss(noisy, abnormal, normal, permutation)
    expected = (
        losses.ssot
        + RECONSTRUCTION_WEIGHT * losses.reconstruction
        + CONTRAST_WEIGHT * losses.contrast
    ) / 1.11
    assert losses.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses.reconstruction.item() == pytest.approx(
        reconstruction_loss(abnormal, normal).item()
    )
    skipped = projection_loss(noisy, abnormal, normal, permutation, include_ssot=False)
    assert skipped.ssot.item() == 0.0
    assert skipped.total.item() == pytest.approx(losses.total.item(), abs=1e-5)
    ssot.backward()  # zero gradient, which is why the quick profile may skip the term
    assert max(m.grad.abs().max().item() for m in normal) < 1e-6


def test_fractal_noise_is_seeded_and_bounded() -> None:
    first = fractal_noise((3, 20, 24), torch.Generator().manual_seed(1))
    again = fractal_noise((3, 20, 24), torch.Generator().manual_seed(1))
    other = fractal_noise((3, 20, 24), torch.Generator().manual_seed(2))
    assert first.shape == (3, 20, 24)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # Each octave of unit-gradient Perlin noise is within sqrt(3)/2; amplitudes 0.6^k.
    bound = np.sqrt(3) / 2 * sum(0.6**k for k in range(6))
    assert first.abs().max().item() <= bound
    assert first.std().item() > 0.01


def test_noise_patches_change_one_rectangle_of_the_expected_size() -> None:
    images = torch.full((4, 3, 256, 256), 0.5)
    noisy = add_noise_patches(images, torch.Generator().manual_seed(0), strength=0.2)
    for index in range(4):
        changed = (noisy[index] != images[index]).any(0).nonzero()
        rows, cols = changed[:, 0], changed[:, 1]
        height = int(rows.max() - rows.min()) + 1
        width = int(cols.max() - cols.min()) + 1
        assert 10 <= height < 32 and 10 <= width < 32
        assert rows.min() >= 1 and cols.min() >= 1
        assert len(changed) > 0.9 * height * width  # a filled rectangle
    assert torch.equal(add_noise_patches(images, torch.Generator().manual_seed(0)), noisy)


# --- the adapters ---------------------------------------------------------------------------


def test_registered_with_aliases() -> None:
    assert METHODS.get("rd") is ReverseDistillation
    assert METHODS.get("rd4ad") is ReverseDistillation
    assert METHODS.get("rrd") is RevisitedReverseDistillation
    assert METHODS.get("rdpp") is RevisitedReverseDistillation
    assert parse_method_spec("rd4ad(epochs=3)").key == "rd(epochs=3)"


def test_paper_profiles_hold_the_original_settings() -> None:
    rd = ReverseDistillation("paper").resolved()
    assert (rd["backbone"], rd["image_size"], rd["epochs"], rd["batch_size"]) == (
        "wide_resnet50_2.tv_in1k",
        256,
        200,
        16,
    )
    assert (rd["lr"], rd["decoder_width"], rd["sigma"], rd["loss"]) == (0.005, 2, 4.0, "flat")
    rrd = RevisitedReverseDistillation("paper").resolved()
    assert (rrd["proj_lr"], rrd["weight_proj"], rrd["step_every"], rrd["ssot"]) == (
        0.001,
        0.2,
        2,
        True,
    )
    quick = RevisitedReverseDistillation("quick").resolved()
    assert (quick["step_every"], quick["ssot"]) == (1, False)
    custom = ReverseDistillation("quick", ReverseDistillationOptions(epochs=3)).resolved()
    assert custom["epochs"] == 3 and custom["image_size"] == 128


@pytest.mark.parametrize("name", ["rd", "rrd"])
def test_fit_keeps_the_teacher_frozen_and_maps_finite(name: str, tmp_path: Path) -> None:
    method = METHOD_CLASSES[name]("quick", OPTION_CLASSES[name](**TINY))
    fresh_teacher = load_feature_extractor("tf_efficientnet_lite0", TEACHER_LAYERS)
    initial = method._build_net(fresh_teacher, seed=0)  # where fit's student starts
    initial_student = {k: v.clone() for k, v in initial.student.state_dict().items()}
    method.fit(brick_crops(4, seed=1), cpu_context(scratch_dir=tmp_path))
    teacher_after = method.net.teacher.state_dict()
    # Weights and batch-norm statistics: a teacher left in train mode would change the latter.
    assert all(torch.equal(v, teacher_after[k]) for k, v in fresh_teacher.state_dict().items())
    assert not any(p.requires_grad for p in method.net.teacher.parameters())
    trained = method.net.student.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in initial_student.items())
    maps = method.predict(brick_crops(3, seed=2))
    assert maps.shape == (3, SIZE, SIZE)
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    facts = method.describe()
    assert facts["backbone"] == "tf_efficientnet_lite0" and facts["pretrained"] is True
    assert facts["fallback"] is False and facts["note"] == ""


@pytest.mark.parametrize("name", ["rd", "rrd"])
def test_same_seed_same_maps_and_save_load_round_trip(name: str, tmp_path: Path) -> None:
    first = fit_method(name, tmp_path / "a")
    second = fit_method(name, tmp_path / "b")
    test_images = brick_crops(2, seed=3)
    maps = first.predict(test_images)
    assert torch.equal(maps, second.predict(test_images))  # another seed: see the resume test

    first.save(tmp_path)
    loaded = METHOD_CLASSES[name]("paper")
    loaded.load(tmp_path)
    assert loaded.profile == "quick" and loaded.options == first.options
    assert torch.equal(loaded.predict(test_images), maps)
    assert loaded.describe() == first.describe()


def test_resumed_training_equals_uninterrupted(tmp_path: Path) -> None:
    whole = fit_method("rrd", tmp_path / "whole", checkpoint_minutes=1e-9)
    checkpoint = tmp_path / "whole" / "rrd-checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    # A second run with the same arguments continues at epoch 1 and ends identical.
    resumed = fit_method("rrd", tmp_path / "whole", checkpoint_minutes=1e-9)
    test_images = brick_crops(2, seed=3)
    assert torch.equal(resumed.predict(test_images), whole.predict(test_images))
    # Another seed ignores the checkpoint.
    other = fit_method("rrd", tmp_path / "whole", seed=5, checkpoint_minutes=1e-9)
    assert not torch.equal(other.predict(test_images), whole.predict(test_images))


def test_offline_fallback_is_marked(tmp_path: Path) -> None:
    method = fit_method("rd", tmp_path, backbone="wide_resnet50_2", epochs=1)
    facts = method.describe()
    assert facts["requested_backbone"] == "wide_resnet50_2"
    assert facts["backbone"] == "tf_efficientnet_lite0" and facts["fallback"] is True
    assert "offline fallback teacher" in facts["note"]
    assert ReverseDistillation().describe()["note"] == "not fitted yet"


def test_no_weights_and_no_fallback_raises(tmp_path: Path) -> None:
    method = ReverseDistillation("quick", ReverseDistillationOptions(allow_fallback=False))
    with pytest.raises(BackboneUnavailableError, match="no pretrained weights for backbone"):
        method.fit(brick_crops(2, seed=1), cpu_context(scratch_dir=tmp_path))


# --- every error path ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backbone": " "}, "option backbone: expected a timm model name, got an empty string"),
        ({"image_size": 32}, "option image_size: expected an integer >= 64, got 32"),
        ({"epochs": 0}, "option epochs: expected an integer >= 1, got 0"),
        ({"batch_size": 0}, "option batch_size: expected an integer >= 1, got 0"),
        ({"decoder_width": 0}, "option decoder_width: expected an integer >= 1, got 0"),
        ({"lr": 0.0}, "option lr: expected a number > 0, got 0.0"),
        ({"lr": float("nan")}, "option lr: expected a number > 0, got nan"),
        ({"checkpoint_minutes": -1.0}, "option checkpoint_minutes: expected a number > 0"),
        ({"sigma": -1.0}, "option sigma: expected a number >= 0, got -1.0"),
        ({"loss": "mse"}, "option loss: expected one of flat, pixel, got 'mse'"),
        ({"map_mode": "max"}, "option map_mode: expected one of add, multiply, got 'max'"),
    ],
)
def test_option_errors(options: dict, message: str) -> None:
    for option_class in OPTION_CLASSES.values():
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            option_class(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"proj_lr": 0.0}, "option proj_lr: expected a number > 0, got 0.0"),
        ({"weight_proj": -0.1}, "option weight_proj: expected a number >= 0, got -0.1"),
        ({"noise_strength": -1.0}, "option noise_strength: expected a number >= 0, got -1.0"),
        ({"step_every": 0}, "option step_every: expected an integer >= 1, got 0"),
    ],
)
def test_rrd_option_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RevisitedReverseDistillationOptions(**options)


def test_cli_options_are_typed_and_checked() -> None:
    spec = parse_method_spec("rrd(step_every=2,weight_proj=0.5)")
    method = spec.build("quick")
    assert method.options.step_every == 2 and method.options.weight_proj == 0.5
    with pytest.raises(ValueError, match="option loss: expected one of flat, pixel"):
        parse_method_spec("rd(loss=l2)")
    with pytest.raises(ValueError, match="method 'rd' has no option 'proj_lr'"):
        parse_method_spec("rd(proj_lr=0.1)")
    with pytest.raises(ValueError, match="method 'rd' has no profile 'cpu'"):
        ReverseDistillation("cpu")


def test_image_size_must_fit_the_teacher(tmp_path: Path) -> None:
    method = ReverseDistillation("quick", ReverseDistillationOptions(image_size=80))
    with pytest.raises(ValueError, match="rd option image_size: image_size 80 must be a multiple"):
        method.fit(brick_crops(2, seed=1), cpu_context(scratch_dir=tmp_path))


def test_input_errors_name_the_argument(tmp_path: Path) -> None:
    method = ReverseDistillation("quick", ReverseDistillationOptions(**TINY))
    with pytest.raises(RuntimeError, match="rd has no trained student yet; call fit"):
        method.predict(brick_crops(1, seed=0))
    with pytest.raises(RuntimeError, match="rd has no trained student yet"):
        method.save(tmp_path)
    with pytest.raises(TypeError, match="normal_images: expected a B x 3 x H x W tensor, got list"):
        method.fit([1, 2], cpu_context(scratch_dir=tmp_path))
    with pytest.raises(ValueError, match=r"normal_images: expected a non-empty B x 3 x H x W"):
        method.fit(torch.rand(2, 1, 64, 64), cpu_context(scratch_dir=tmp_path))
    with pytest.raises(ValueError, match=r"got \(0, 3, 64, 64\)"):
        method.fit(torch.rand(0, 3, 64, 64), cpu_context(scratch_dir=tmp_path))
    with pytest.raises(ValueError, match="normal_images: expected floats in \\[0, 1\\], got dtype"):
        method.fit(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), cpu_context(scratch_dir=tmp_path))


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    method = fit_method("rd", tmp_path / "scratch", epochs=1)
    directory = tmp_path / "model"
    directory.mkdir()
    with pytest.raises(FileNotFoundError, match="no saved rd model here \\(expected rd.json\\)"):
        ReverseDistillation().load(directory)
    method.save(directory)
    config_path = directory / "rd.json"
    config = json.loads(config_path.read_text())

    with pytest.raises(ValueError, match="written by method 'rd', not 'rrd'"):
        (directory / "rrd.json").write_text(config_path.read_text())
        RevisitedReverseDistillation().load(directory)

    config_path.write_text("{not json")
    with pytest.raises(ValueError, match="rd.json: not valid JSON"):
        ReverseDistillation().load(directory)
    config_path.write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99, this code reads 1"):
        ReverseDistillation().load(directory)

    config_path.write_text(json.dumps(config))
    weights = torch.load(directory / "rd-weights.pt", weights_only=True)
    torch.save({"other": weights["module0"]}, directory / "rd-weights.pt")
    with pytest.raises(ValueError, match=r"holds \['other'\], expected 1 modules for rd"):
        ReverseDistillation().load(directory)
    (directory / "rd-weights.pt").unlink()
    with pytest.raises(FileNotFoundError, match="rd-weights.pt: rd weights missing"):
        ReverseDistillation().load(directory)


# --- real data ---------------------------------------------------------------------------------


def _read_rgb(path: Path, size: int) -> torch.Tensor:
    image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _magnetic_tile_slice(root: Path, size: int = 128):
    base = root / "magnetic_tile" / "magnetic_tile"
    if not base.is_dir():
        pytest.skip(f"{base} is missing")
    train = sorted((base / "train" / "good").glob("*.png"))[:16]
    defective = sorted((base / "test" / "blowhole").glob("*.png"))[:4]
    good = sorted((base / "test" / "good").glob("*.png"))[:2]
    images = torch.stack([_read_rgb(p, size) for p in defective + good])
    masks = []
    for path in defective:
        mask = Image.open(base / "ground_truth" / "blowhole" / f"{path.stem}_mask.png")
        masks.append(np.asarray(mask.convert("L").resize((size, size), Image.NEAREST)) > 127)
    masks += [np.zeros((size, size), dtype=bool)] * len(good)
    return torch.stack([_read_rgb(p, size) for p in train]), images, np.stack(masks)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rd", "rrd"])
def test_quick_profile_on_real_magnetic_tiles(
    name: str, sample_data_root: Path, tmp_path: Path
) -> None:
    train, test_images, gt_masks = _magnetic_tile_slice(sample_data_root)
    method = METHOD_CLASSES[name]("quick", OPTION_CLASSES[name](epochs=12))
    method.fit(train, cpu_context(scratch_dir=tmp_path))
    maps = method.predict(test_images)
    assert maps.shape == (6, 128, 128)
    assert torch.isfinite(maps).all()
    pixel_auroc = roc_auc_score(gt_masks.ravel(), maps.numpy().ravel())
    assert pixel_auroc > 0.6, f"{name} pixel AUROC {pixel_auroc:.3f} on real blowholes"
