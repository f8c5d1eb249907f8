"""Smoke tests parametrised over the method registry: every plugin, the day it is added.

Each registered method is trained with its ``quick`` profile on four 64 px crops of a real
texture photo, with the generic size options below shrunk where the method has them, and
must then honour the interface contract: maps ``B x H x W``, float, finite; a save/load
round trip and a second fit under the same seed reproduce the maps; ``describe`` reports
the backbone of methods that need one.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from method_inputs import cpu_context, texture_crops

from bench.method import METHODS, Method

SIZE = 64

# Options shrunk for a smoke run when a method's Options dataclass has a field of that name.
SMOKE_OPTIONS: dict[str, object] = {
    "image_size": SIZE,
    "iterations": 12,
    "samples": 6,
    "regenerations": 2,
    "epochs": 1,
    "width": 8,
    "blocks": 1,
    "batch_size": 2,
    "mlp_epochs": 1,
}


def _crops(count: int, seed: int) -> torch.Tensor:
    """``count x 3 x 64 x 64`` crops of scikit-image's gravel photo."""
    return texture_crops(count, seed, SIZE, photo="gravel")


def _build(cls: type[Method]) -> Method:
    fields = {field.name for field in dataclasses.fields(cls.Options)}
    overrides = {key: value for key, value in SMOKE_OPTIONS.items() if key in fields}
    return cls(profile="quick", options=cls.Options(**overrides))


def _fit(cls: type[Method], scratch: Path, seed: int = 0) -> Method:
    method = _build(cls)
    method.fit(_crops(4, seed=1), cpu_context(seed, scratch))
    return method


TEST_IMAGES = _crops(2, seed=2)
METHOD_NAMES = METHODS.names()


@pytest.fixture(scope="module", params=METHOD_NAMES)
def fitted(request, tmp_path_factory) -> tuple[type[Method], Method, torch.Tensor]:
    torch.set_num_threads(1)
    cls = METHODS.get(request.param)
    method = _fit(cls, tmp_path_factory.mktemp(f"scratch-{request.param}"))
    return cls, method, method.predict(TEST_IMAGES)


def test_registry_lists_the_built_in_methods() -> None:
    assert {"patchcore", "samples-masks-gan", "mean-diff"} <= set(METHOD_NAMES)


def test_maps_have_the_contracted_shape_and_values(fitted) -> None:
    cls, method, maps = fitted
    assert maps.ndim == 3, f"{cls.name}: maps of shape {tuple(maps.shape)}"
    assert maps.shape[0] == TEST_IMAGES.shape[0]
    assert maps.dtype.is_floating_point
    assert bool(torch.isfinite(maps).all()), f"{cls.name}: non-finite map values"
    threshold = method.native_threshold
    assert threshold is None or math.isfinite(threshold)


def test_save_load_reproduces_the_maps(fitted, tmp_path: Path) -> None:
    cls, method, maps = fitted
    method.save(tmp_path)
    restored = _build(cls)
    restored.load(tmp_path)
    torch.testing.assert_close(restored.predict(TEST_IMAGES), maps, rtol=1e-5, atol=1e-6)
    assert restored.native_threshold == method.native_threshold


def test_same_seed_same_maps(fitted, tmp_path: Path) -> None:
    cls, _, maps = fitted
    again = _fit(cls, tmp_path)
    torch.testing.assert_close(again.predict(TEST_IMAGES), maps, rtol=1e-5, atol=1e-6)


def test_describe_names_the_backbone_of_pretrained_methods(fitted) -> None:
    cls, method, _ = fitted
    facts = method.describe()
    assert isinstance(facts, dict)
    if cls.needs_pretrained:
        assert facts.get("backbone"), f"{cls.name}: describe() has no backbone"
        assert isinstance(facts.get("pretrained"), bool)
    assert METHODS.entry(cls.name).description, f"{cls.name}: no description to list"
