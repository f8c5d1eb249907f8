"""Tests of the paper's GAN method: losses, synthesis, training mechanics and the adapter."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_inputs import cpu_context
from PIL import Image

from bench.method import METHODS, FitContext, parse_method_spec
from methods.ours import (
    MODEL_FILE,
    SamplesMasksGAN,
    SamplesMasksOptions,
    parse_components,
    parse_opacity,
    resolve_settings,
)
from methods.ours.losses import (
    apply_dynamic_mask,
    defect_weight,
    dynamic_masked_cycle_loss,
    gan_loss,
    invisible_pattern,
    prediction_to_map,
    scaled_pattern_loss,
)
from methods.ours.sources import AnomalySourceError, TextureBank
from methods.ours.synthesis import (
    OpacitySchedule,
    blend_defect,
    make_synthetic_set,
    perlin_mask,
    perlin_noise,
    procedural_texture,
)
from methods.ours.training import CHECKPOINT_NAME, TrainConfig, Trainer

TINY = {"image_size": 32, "width": 4, "blocks": 1}


def tiny_config(**overrides) -> TrainConfig:
    values = {**TINY, "iterations": 6, "samples": 4, "regenerations": 3, "pool_size": 2}
    return TrainConfig(**{**values, **overrides})


def normal_images(count: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=generator)


def procedural(generator: torch.Generator, size: int) -> torch.Tensor:
    return procedural_texture(generator, size)


def tiny_method(**options) -> SamplesMasksGAN:
    values = {**TINY, "iterations": 4, "samples": 3, "regenerations": 2, "pool_size": 2}
    values.update(options)
    values.setdefault("anomaly_source", "procedural")
    return SamplesMasksGAN("quick", SamplesMasksOptions(**values))


def context(tmp_path: Path, seed: int = 0, progress=None) -> FitContext:
    ctx = cpu_context(seed, tmp_path)
    if progress is not None:
        ctx.progress = progress
    return ctx


def parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --- losses ---------------------------------------------------------------------------


def test_invisible_pattern_is_alpha_times_image_minus_beta():
    images = torch.tensor([-1.0, 0.0, 0.5, 1.0]).view(1, 1, 1, 4)
    pattern = invisible_pattern(images)
    expected = torch.tensor([-1.0, -0.995, -0.9925, -0.99]).view(1, 1, 1, 4)
    torch.testing.assert_close(pattern, expected)
    torch.testing.assert_close(
        invisible_pattern(images, 0.5, 0.25).flatten()[-1], torch.tensor(0.25)
    )


def test_scaled_pattern_loss_is_mean_absolute_error():
    prediction = torch.tensor([-1.0, -1.0, 0.0, 1.0]).view(1, 1, 2, 2)
    pattern = torch.tensor([-0.99, -1.0, -1.0, -0.995]).view(1, 1, 2, 2)
    expected = (0.01 + 0.0 + 1.0 + 1.995) / 4
    assert scaled_pattern_loss(prediction, pattern).item() == pytest.approx(expected)


def test_gan_loss_least_squares_and_log_loss_by_hand():
    logits = torch.tensor([0.5, 1.5]).view(1, 1, 1, 2)
    assert gan_loss(logits, True, "lsgan").item() == pytest.approx((0.25 + 0.25) / 2)
    assert gan_loss(logits, False, "lsgan").item() == pytest.approx((0.25 + 2.25) / 2)
    real = -(math.log(1 / (1 + math.exp(-0.5))) + math.log(1 / (1 + math.exp(-1.5)))) / 2
    fake = -(math.log(1 - 1 / (1 + math.exp(-0.5))) + math.log(1 - 1 / (1 + math.exp(-1.5)))) / 2
    assert gan_loss(logits, True, "bce").item() == pytest.approx(real, rel=1e-6)
    assert gan_loss(logits, False, "bce").item() == pytest.approx(fake, rel=1e-6)


def test_gan_loss_rejects_unknown_kind():
    with pytest.raises(ValueError, match="gan loss kind must be one of lsgan, bce, got 'wgan'"):
        gan_loss(torch.zeros(1, 1, 2, 2), True, "wgan")


def test_defect_weight_soft_hard_and_detach():
    # two pixels: channel means -1 (normal) and 0.2 -> weights 0 and 0.6
    prediction = torch.tensor([[[-1.0, 0.0]], [[-1.0, 0.2]], [[-1.0, 0.4]]])[None]  # 1x3x1x2
    prediction.requires_grad_(True)
    soft = defect_weight(prediction, "soft", detach=False)
    torch.testing.assert_close(soft, torch.tensor([[[[0.0, 0.6]]]]))
    assert soft.requires_grad
    assert not defect_weight(prediction, "soft", detach=True).requires_grad
    hard = defect_weight(prediction, "hard", detach=False)
    torch.testing.assert_close(hard, torch.tensor([[[[0.0, 1.0]]]]))
    assert not hard.requires_grad
    with pytest.raises(ValueError, match="mask mode must be one of soft, hard, got 'fuzzy'"):
        defect_weight(prediction, "fuzzy")


def test_dynamic_masked_cycle_loss_by_hand():
    defective = torch.tensor([0.0, 1.0, -1.0, 0.5]).view(1, 1, 2, 2)
    recovered = torch.tensor([0.5, 0.0, -1.0, 0.5]).view(1, 1, 2, 2)
    masks = -torch.ones(1, 1, 2, 2)
    masks_recovered = torch.tensor([-1.0, -0.5, -1.0, 1.0]).view(1, 1, 2, 2)
    plain, mask_term = dynamic_masked_cycle_loss(defective, recovered, None, masks, masks_recovered)
    assert plain.item() == pytest.approx((0.5 + 1.0 + 0 + 0) / 4)
    assert mask_term.item() == pytest.approx((0 + 0.5 + 0 + 2.0) / 4)
    # the pixel with the error of 1.0 predicted fully defective, the first half-defective
    weight = torch.tensor([0.5, 1.0, 0.0, 0.0]).view(1, 1, 2, 2)
    masked, _ = dynamic_masked_cycle_loss(defective, recovered, weight, masks, masks_recovered)
    assert masked.item() == pytest.approx((0.25 + 0 + 0 + 0) / 4)
    torch.testing.assert_close(apply_dynamic_mask(defective, weight).flatten()[:2], torch.zeros(2))


def test_prediction_to_map_range_and_native_midpoint():
    prediction = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    torch.testing.assert_close(
        prediction_to_map(prediction), torch.tensor([[[0.0, 0.5, 1.0, 1.0]]])
    )


# --- synthesis ------------------------------------------------------------------------


def test_opacity_schedule_values():
    generator = torch.Generator().manual_seed(0)
    progressive = OpacitySchedule("pos")
    values = [progressive.opacities(r, 5, 2, generator)[0].item() for r in range(5)]
    assert values == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1])
    assert progressive.opacities(0, 1, 1, generator).item() == pytest.approx(1.0)
    random = OpacitySchedule("random").opacities(0, 5, 500, generator)
    assert 0.1 <= random.min().item() and random.max().item() <= 0.9
    assert random.std().item() > 0.2
    fixed = OpacitySchedule("fixed", value=0.3).opacities(2, 5, 3, generator)
    torch.testing.assert_close(fixed, torch.full((3,), 0.3))
    with pytest.raises(ValueError, match="opacity mode must be pos, random or fixed, got 'up'"):
        OpacitySchedule("up").opacities(0, 5, 1, generator)


def test_perlin_noise_range_and_determinism():
    first = perlin_noise(64, 48, 4, 2, 30.0, torch.Generator().manual_seed(3))
    again = perlin_noise(64, 48, 4, 2, 30.0, torch.Generator().manual_seed(3))
    assert first.shape == (64, 48)
    assert torch.equal(first, again)
    assert first.abs().max().item() <= 1.0 + 1e-6
    assert first.std().item() > 0.1


def test_perlin_mask_statistics():
    generator = torch.Generator().manual_seed(0)
    masks = torch.stack([perlin_mask(64, generator) for _ in range(40)])
    assert masks.dtype == torch.bool
    coverage = masks.float().mean(dim=(1, 2))
    assert coverage.min().item() >= 0.005
    assert coverage.max().item() < 0.6
    assert 0.02 < coverage.mean().item() < 0.2
    # independent draws differ from one another
    assert not torch.equal(masks[0], masks[1])
    overlap = (masks[0] & masks[1]).sum() / masks[0].sum().clamp(min=1)
    assert overlap.item() < 0.9


def test_blend_defect_changes_only_masked_pixels_with_opacity():
    image = torch.full((3, 4, 4), 0.2)
    texture = torch.full((3, 4, 4), 1.0)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1, 2] = True
    blended = blend_defect(image, texture, mask, 0.25)
    assert blended[:, 1, 2].tolist() == pytest.approx([0.4] * 3)
    untouched = ~mask
    assert torch.equal(blended[:, untouched], image[:, untouched])


def test_synthetic_set_shapes_masks_and_gray_stays_gray():
    gray = normal_images(2, 32).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    generator = torch.Generator().manual_seed(1)
    synthetic = make_synthetic_set(gray, procedural, torch.full((5,), 1.0), generator)
    assert synthetic.defective.shape == (5, 3, 32, 32)
    assert synthetic.synthesis_masks.shape == synthetic.random_masks.shape == (5, 32, 32)
    assert not torch.equal(synthetic.synthesis_masks, synthetic.random_masks)
    spread = synthetic.defective - synthetic.defective.mean(dim=1, keepdim=True)
    assert spread.abs().max().item() < 1e-5
    assert 0.0 <= synthetic.defective.min().item() and synthetic.defective.max().item() <= 1.0


def test_texture_bank_builtin_procedural_and_folder(tmp_path):
    generator = torch.Generator().manual_seed(0)
    builtin = TextureBank("builtin")
    assert "scikit-image" in builtin.description
    for bank in (builtin, TextureBank("procedural")):
        texture = bank(generator, 32)
        assert texture.shape == (3, 32, 32)
        assert 0.0 <= texture.min().item() and texture.max().item() <= 1.0
    for index in range(2):
        array = np.full((40, 50, 3), 60 * index + 30, dtype=np.uint8)
        Image.fromarray(array).save(tmp_path / f"texture{index}.png")
    folder = TextureBank(str(tmp_path))
    assert folder.description.startswith("2 images from")
    values = {round(folder(generator, 16).mean().item(), 3) for _ in range(12)}
    assert values == {round(30 / 255, 3), round(90 / 255, 3)}


def test_texture_bank_errors(tmp_path):
    with pytest.raises(AnomalySourceError, match="expected 'builtin', 'procedural' or an existing"):
        TextureBank(str(tmp_path / "missing"))
    with pytest.raises(AnomalySourceError, match="folder holds no images"):
        TextureBank(str(tmp_path))


# --- training mechanics ---------------------------------------------------------------


def test_every_component_contributes_a_finite_loss():
    trainer = Trainer(tiny_config(), normal_images(), procedural, seed=0)
    losses = trainer.step().as_dict()
    assert all(math.isfinite(value) for value in losses.values())
    assert all(value > 0 for value in losses.values()), losses


@pytest.mark.parametrize(
    ("components", "zero"),
    [
        (("G",), {"adversarial_y", "cycle_image", "cycle_mask", "pattern", "discriminator_x"}),
        (("G", "S"), {"adversarial_y", "cycle_image", "cycle_mask", "discriminator_x"}),
        (("G", "C", "M"), {"pattern"}),
    ],
)
def test_ablations_switch_terms_and_networks(components, zero):
    trainer = Trainer(tiny_config(components=components), normal_images(), procedural, seed=0)
    losses = trainer.step().as_dict()
    assert {name for name, value in losses.items() if value == 0.0} == zero
    assert (trainer.models.g_y is None) == ("C" not in components)


def test_each_loss_updates_only_its_networks():
    trainer = Trainer(tiny_config(), normal_images(), procedural, seed=0)
    models = trainer.models
    generator_params = [p for m in models.generators() for p in m.parameters()]
    discriminator_params = [p for m in models.discriminators() for p in m.parameters()]
    assert {id(p) for g in trainer.optimizer_g.param_groups for p in g["params"]} == {
        id(p) for p in generator_params
    }
    assert {id(p) for g in trainer.optimizer_d.param_groups for p in g["params"]} == {
        id(p) for p in discriminator_params
    }
    seen = {}
    step_g, step_d = trainer.optimizer_g.step, trainer.optimizer_d.step

    def record_g(*args, **kwargs):
        seen["d_grads_at_g"] = [p.grad for p in discriminator_params]
        seen["g_grads_at_g"] = [p.grad.clone() for p in generator_params]
        return step_g(*args, **kwargs)

    def record_d(*args, **kwargs):
        seen["g_grads_at_d"] = [p.grad.clone() for p in generator_params]
        seen["d_grads_at_d"] = [p.grad for p in discriminator_params]
        return step_d(*args, **kwargs)

    trainer.optimizer_g.step = record_g
    trainer.optimizer_d.step = record_d
    trainer.step()
    # the generator objective leaves no gradient on the discriminators...
    assert all(grad is None for grad in seen["d_grads_at_g"])
    assert all(grad.abs().sum() > 0 for grad in seen["g_grads_at_g"][:2])
    # ...and the discriminator objective adds none to the generators
    assert same(seen["g_grads_at_g"], seen["g_grads_at_d"])
    assert all(grad is not None for grad in seen["d_grads_at_d"])


def test_generator_step_leaves_discriminators_and_vice_versa():
    trainer = Trainer(tiny_config(), normal_images(), procedural, seed=0)
    d_before = [parameters(m) for m in trainer.models.discriminators()]
    g_before = [parameters(m) for m in trainer.models.generators()]
    trainer.optimizer_d.step = lambda *args, **kwargs: None
    trainer.step()
    d_after = [parameters(m) for m in trainer.models.discriminators()]
    g_after = [parameters(m) for m in trainer.models.generators()]
    assert all(same(b, a) for b, a in zip(d_before, d_after, strict=True))
    assert not any(same(b, a) for b, a in zip(g_before, g_after, strict=True))


class _Poison:
    """Stands in for the synthesis masks; any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"synthesis mask was used ({name})")

    def __getitem__(self, key):
        raise AssertionError("synthesis mask was indexed")


def test_synthesis_mask_never_reaches_a_loss():
    losses = {}
    weights = {}
    for variant in ("true", "garbage", "poison"):
        trainer = Trainer(tiny_config(mask_grad=True), normal_images(), procedural, seed=0)
        trainer.regenerate(0)
        if variant == "garbage":
            generator = torch.Generator().manual_seed(9)
            shape = trainer.synthetic.synthesis_masks.shape
            trainer.synthetic.synthesis_masks = torch.rand(shape, generator=generator) > 0.5
        elif variant == "poison":
            trainer.synthetic.synthesis_masks = _Poison()
        losses[variant] = [trainer.step().as_dict() for _ in range(2)]
        weights[variant] = parameters(trainer.models)
    assert losses["true"] == losses["garbage"] == losses["poison"]
    assert same(weights["true"], weights["garbage"])


def test_regeneration_follows_the_schedule():
    trainer = Trainer(tiny_config(iterations=6, regenerations=3), normal_images(), procedural, 0)
    seen = []
    for _ in range(6):
        trainer.step()
        seen.append((trainer.regeneration, trainer.synthetic.opacities[0].item()))
    assert [r for r, _ in seen] == [0, 0, 1, 1, 2, 2]
    assert [o for _, o in seen[::2]] == pytest.approx([1.0, 0.55, 0.1])


def test_trainer_resume_equals_uninterrupted(tmp_path):
    config = tiny_config(iterations=6, regenerations=3)
    straight = Trainer(config, normal_images(), procedural, seed=4)
    straight.train(None)

    first = Trainer(config, normal_images(), procedural, seed=4)
    first.train(tmp_path / CHECKPOINT_NAME, until=3)
    resumed = Trainer(config, normal_images(), procedural, seed=4)
    assert resumed.try_resume(tmp_path / CHECKPOINT_NAME)
    assert resumed.iteration == 3
    resumed.train(tmp_path / CHECKPOINT_NAME)
    assert same(parameters(straight.models), parameters(resumed.models))
    assert resumed.iteration == 6


def test_checkpoint_of_other_configuration_is_refused_and_ignored(tmp_path, caplog):
    path = tmp_path / CHECKPOINT_NAME
    Trainer(tiny_config(), normal_images(), procedural, seed=0).train(path, until=1)
    other = Trainer(tiny_config(width=8), normal_images(), procedural, seed=0)
    state = torch.load(path, weights_only=False)
    with pytest.raises(ValueError, match="checkpoint was written with another configuration"):
        other.load_state_dict(state)
    with caplog.at_level(logging.WARNING):
        assert not other.try_resume(path)
    assert "ignoring checkpoint" in caplog.text
    assert other.iteration == 0


# --- the adapter ----------------------------------------------------------------------


def test_registered_under_canonical_name_and_alias():
    assert METHODS.get("ours") is SamplesMasksGAN
    assert METHODS.entry("ours").name == "samples-masks-gan"
    spec = parse_method_spec("ours(components=G.S.C, opacity=0.5)")
    assert spec.name == "samples-masks-gan"
    method = spec.build("cpu")
    assert method.settings["components"] == "G.S.C"
    assert method.config.opacity == OpacitySchedule("fixed", 0.5)
    assert method.config.components == ("G", "S", "C")


def test_profiles_resolve_defaults_and_options_override():
    paper = resolve_settings("paper", SamplesMasksOptions())
    assert (paper["image_size"], paper["width"], paper["blocks"]) == (256, 64, 9)
    assert (paper["iterations"], paper["samples"], paper["regenerations"]) == (300_000, 300, 20)
    assert (paper["lambda_cycle"], paper["lambda_pattern"], paper["loss"]) == (10.0, 0.4, "lsgan")
    config = SamplesMasksGAN("paper").config
    assert config.regenerate_every == 15_000
    assert (config.lr, config.betas) == (2e-4, (0.5, 0.999))
    quick = resolve_settings("quick", SamplesMasksOptions(width=12, loss="bce", components="c.g"))
    assert (quick["width"], quick["loss"], quick["components"]) == (12, "bce", "G.C")
    assert quick["image_size"] == 64


def test_fit_predict_maps_in_unit_range(tmp_path):
    method = tiny_method()
    calls = []
    method.fit(normal_images(3, 40), context(tmp_path, progress=lambda *a: calls.append(a)))
    maps = method.predict(normal_images(2, 48))
    assert maps.shape == (2, 32, 32)
    assert torch.isfinite(maps).all()
    assert 0.0 <= maps.min().item() and maps.max().item() <= 1.0
    assert method.native_threshold == 0.5
    assert calls[-1] == (4, 4, "train samples-masks-gan")
    assert (tmp_path / CHECKPOINT_NAME).is_file()
    described = method.describe()
    assert described["note"].startswith("quick profile: smoke-scale")
    assert described["anomaly_source"] == "procedural textures (generated)"
    assert described["fit"]["iterations_run"] == 4


def test_save_load_round_trip(tmp_path):
    method = tiny_method()
    method.fit(normal_images(), context(tmp_path / "scratch"))
    images = normal_images(2, 32, seed=5)
    method.save(tmp_path)
    assert (tmp_path / MODEL_FILE).is_file()
    loaded = tiny_method()
    loaded.load(tmp_path)
    assert torch.equal(loaded.predict(images), method.predict(images))
    assert loaded.describe()["fit"] == method.describe()["fit"]


def test_load_with_other_settings_uses_saved_ones(tmp_path, caplog):
    method = tiny_method(width=6)
    method.fit(normal_images(), context(tmp_path / "scratch"))
    method.save(tmp_path)
    other = tiny_method()
    with caplog.at_level(logging.WARNING):
        other.load(tmp_path)
    assert "other settings" in caplog.text
    assert other.settings["width"] == 6
    images = normal_images(1, 32, seed=2)
    assert torch.equal(other.predict(images), method.predict(images))


class _Stop(Exception):
    pass


def test_fit_resumes_after_interruption_exactly(tmp_path):
    straight = tiny_method(iterations=6, regenerations=3)
    straight.fit(normal_images(), context(tmp_path / "straight", seed=2))

    def stop_at_three(done, total, description):
        if done == 3:
            raise _Stop

    interrupted = tiny_method(iterations=6, regenerations=3)
    with pytest.raises(_Stop):
        interrupted.fit(normal_images(), context(tmp_path / "resumed", 2, stop_at_three))
    resumed = tiny_method(iterations=6, regenerations=3)
    resumed.fit(normal_images(), context(tmp_path / "resumed", seed=2))
    assert resumed.fit_info["resumed_at"] == 3
    assert resumed.fit_info["iterations_run"] == 3
    assert same(parameters(straight.trainer.models), parameters(resumed.trainer.models))


def test_fit_is_deterministic_under_a_seed(tmp_path):
    images = normal_images(2, 32, seed=7)
    maps = []
    for index, seed in enumerate((1, 1, 2)):
        method = tiny_method()
        method.fit(normal_images(), context(tmp_path / str(index), seed=seed))
        maps.append(method.predict(images))
    assert torch.equal(maps[0], maps[1])
    assert not torch.equal(maps[0], maps[2])


def test_fit_and_predict_reject_bad_shapes_and_order(tmp_path):
    method = tiny_method()
    with pytest.raises(RuntimeError, match="predict\\(\\) called before fit\\(\\) or load\\(\\)"):
        method.predict(normal_images())
    with pytest.raises(RuntimeError, match="save\\(\\) called before fit\\(\\) or load\\(\\)"):
        method.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="no saved model at"):
        method.load(tmp_path)
    with pytest.raises(
        ValueError, match=r"normal_images: expected N x 3 x H x W .*\(2, 1, 32, 32\)"
    ):
        method.fit(torch.rand(2, 1, 32, 32), context(tmp_path))
    method.fit(normal_images(), context(tmp_path))
    with pytest.raises(ValueError, match=r"images: expected B x 3 x H x W, got \(3, 32, 32\)"):
        method.predict(torch.rand(3, 32, 32))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"components": "G.X"}, "unknown component\\(s\\) X"),
        ({"components": "G.S.S"}, "a component is repeated"),
        ({"components": "S.C"}, "G \\(the adversarial core\\) is always required"),
        ({"components": "G.M"}, "M \\(dynamic mask\\) needs C"),
        ({"opacity": "high"}, "opacity='high': expected pos, random or a number in \\(0, 1\\]"),
        ({"opacity": "0"}, "opacity='0': expected pos"),
        ({"opacity": "1.5"}, "opacity='1.5': expected pos"),
        ({"loss": "wgan"}, "loss='wgan': expected one of lsgan, bce"),
        ({"mask": "fuzzy"}, "mask='fuzzy': expected one of soft, hard"),
        ({"d_x_input": "x"}, "d_x_input='x': expected one of translated, recovered"),
        ({"image_size": 30}, "image_size=30: expected a multiple of 4, at least 32"),
        ({"image_size": 28}, "image_size=28: expected a multiple of 4, at least 32"),
        ({"width": 0}, "width=0: expected a positive integer"),
        ({"iterations": 0}, "iterations=0: expected a positive integer"),
        ({"samples": -1}, "samples=-1: expected a positive integer"),
        ({"regenerations": 0}, "regenerations=0: expected a positive integer"),
        ({"blocks": -1}, "blocks=-1: expected an integer >= 0"),
        ({"pool_size": -2}, "pool_size=-2: expected an integer >= 0"),
        ({"lambda_cycle": -1.0}, "lambda_cycle=-1.0: expected a number >= 0"),
        ({"lambda_pattern": float("nan")}, "lambda_pattern=nan: expected a number >= 0"),
        ({"checkpoint_minutes": 0.0}, "checkpoint_minutes=0.0: expected a number > 0"),
        ({"anomaly_source": " "}, "anomaly_source='': expected builtin, procedural or a folder"),
    ],
)
def test_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        SamplesMasksOptions(**options)


def test_option_errors_through_the_method_spec():
    with pytest.raises(ValueError, match="invalid options for method 'samples-masks-gan'.*G.Q"):
        parse_method_spec("ours(components=G.Q)")
    with pytest.raises(ValueError, match="expected int, got 'big'"):
        parse_method_spec("ours(width=big)")
    with pytest.raises(ValueError, match="has no profile 'huge'"):
        SamplesMasksGAN("huge")


def test_parsers_normalise():
    assert parse_components("m.c.g") == ("G", "C", "M")
    assert parse_opacity(" Pos ") == OpacitySchedule("pos")
    assert parse_opacity("1") == OpacitySchedule("fixed", 1.0)


def test_anomaly_source_folder_option(tmp_path):
    for index in range(2):
        Image.fromarray(np.full((20, 20, 3), 100 * index, np.uint8)).save(tmp_path / f"{index}.jpg")
    method = tiny_method(anomaly_source=str(tmp_path))
    method.fit(normal_images(), context(tmp_path / "scratch"))
    assert method.describe()["anomaly_source"] == f"2 images from {tmp_path}"
    bad = tiny_method(anomaly_source=str(tmp_path / "none"))
    with pytest.raises(AnomalySourceError, match="anomaly_source="):
        bad.fit(normal_images(), context(tmp_path / "scratch2"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_and_predict(tmp_path):
    method = tiny_method()
    ctx = FitContext(torch.device("cuda"), 0, "quick", tmp_path)
    method.fit(normal_images(), ctx)
    maps = method.predict(normal_images())
    assert maps.device.type == "cpu"
    assert torch.isfinite(maps).all()
    cpu = tiny_method()
    cpu.fit(normal_images(), context(tmp_path / "cpu"))
    assert (maps - cpu.predict(normal_images())).abs().max().item() < 0.2
    assert F.mse_loss(maps, maps) == 0
