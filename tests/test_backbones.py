"""Backbone loading when the hub cannot be reached."""

from __future__ import annotations

import pytest
import timm
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError

from methods._backbones import FALLBACK_BACKBONE, load_feature_extractor


def _failing_create_model(error: Exception):
    real = timm.create_model

    def create_model(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise error
        return real(*args, **kwargs)

    return create_model


def test_an_unreachable_hub_switches_later_lookups_to_the_cache(monkeypatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        timm, "create_model", _failing_create_model(LocalEntryNotFoundError("no network"))
    )
    extractor = load_feature_extractor("resnet18", ["layer2"])
    assert extractor.info.used == FALLBACK_BACKBONE and extractor.info.fallback
    assert constants.HF_HUB_OFFLINE is True


def test_other_load_errors_leave_the_hub_online(monkeypatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(timm, "create_model", _failing_create_model(RuntimeError("bad file")))
    extractor = load_feature_extractor("resnet18", ["layer2"])
    assert extractor.info.used == FALLBACK_BACKBONE
    assert constants.HF_HUB_OFFLINE is False


def test_the_switch_is_logged_once(monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        timm, "create_model", _failing_create_model(LocalEntryNotFoundError("no network"))
    )
    load_feature_extractor("resnet18", ["layer2"])
    load_feature_extractor("resnet18", ["layer2"])
    switched = [r for r in caplog.records if "hub is unreachable" in r.getMessage()]
    assert len(switched) == 1
