"""The setting registry: built-ins from ``perturbations.SETTINGS`` plus third-party entry points.

Third-party packages expose a ``perturbations.Setting`` in entry point group
``defectbench.settings``; the entry point name must equal the setting's ``name``.
"""

from __future__ import annotations

import logging

import torch

import perturbations
from bench.registry import Registry, RegistryError
from perturbations import Setting

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "defectbench.settings"


def build_registry() -> Registry[Setting]:
    """Return a registry holding every built-in setting; entry points load on first use."""
    registry: Registry[Setting] = Registry("setting", ENTRY_POINT_GROUP, None)
    for setting in perturbations.SETTINGS.values():
        registry.add(
            setting.name,
            setting,
            description=setting.description,
            origin=f"perturbations.SETTINGS[{setting.name!r}]",
        )
    return registry


SETTINGS: Registry[Setting] = build_registry()


def get_setting(name: str, registry: Registry[Setting] | None = None) -> Setting:
    """Look a setting up by name and check that what is registered is a usable ``Setting``.

    Args:
        name: Registered name or alias, e.g. ``hard``.
        registry: Where to look; ``SETTINGS`` when not given.

    Raises:
        RegistryError: Unknown name (with "did you mean"), or an entry point that holds
            something other than a ``Setting`` or a ``Setting`` under another name (its
            name seeds the parameters, so the two must agree).
    """
    registry = SETTINGS if registry is None else registry
    entry = registry.entry(name)
    if not isinstance(entry.obj, Setting):
        message = (
            f"setting {entry.name!r} from {entry.origin} is a {type(entry.obj).__name__}, "
            f"expected a perturbations.Setting"
        )
        raise RegistryError(message)
    if entry.obj.name != entry.name:
        message = (
            f"setting {entry.name!r} from {entry.origin} is named {entry.obj.name!r}; "
            f"the registered name and Setting.name must be equal"
        )
        raise RegistryError(message)
    return entry.obj


def hue_noop(images: torch.Tensor, setting: str | Setting) -> torch.Tensor:
    """Tell, per image, whether the setting's hue shift left it unchanged because it is gray.

    Brightness and contrast keep gray images gray, so testing the unperturbed batch is
    enough.

    Args:
        images: ``B x C x H x W`` float in [0, 1], before or after perturbation.
        setting: A registered name or a ``Setting``.

    Returns:
        ``B`` booleans; all False for settings that do not shift hue.
    """
    resolved = setting if isinstance(setting, Setting) else get_setting(setting)
    gray = perturbations.is_grayscale(images)
    return gray if resolved.changes_hue else torch.zeros_like(gray)


def hue_noop_note(setting: str | Setting, gray_images: int, total_images: int) -> str | None:
    """The sentence a report prints when a hue-shifting setting met gray images.

    Args:
        setting: A registered name or a ``Setting``.
        gray_images: How many test images were gray (summed ``hue_noop`` counts).
        total_images: How many test images the setting was applied to.

    Returns:
        The note, or ``None`` when there is nothing to say.
    """
    resolved = setting if isinstance(setting, Setting) else get_setting(setting)
    if not 0 <= gray_images <= total_images:
        message = (
            f"gray_images: expected a count from 0 to total_images ({total_images}), "
            f"found {gray_images}"
        )
        raise ValueError(message)
    if not resolved.changes_hue or gray_images == 0:
        return None
    if gray_images == total_images:
        return (
            f"Setting {resolved.name!r}: all {total_images} test images are gray, so its hue "
            f"shift changed nothing; only brightness and contrast apply."
        )
    return (
        f"Setting {resolved.name!r}: {gray_images} of {total_images} test images are gray; "
        f"its hue shift changed nothing on them."
    )
