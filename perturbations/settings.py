"""Named photometric settings (clean, general, hard), their severities, and seeded draws.

Parameters depend only on (setting, severity, run seed, sample id), never on the batch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch

from perturbations.transforms import adjust_brightness, adjust_contrast, adjust_hue, check_images

logger = logging.getLogger(__name__)

TRANSFORMS: tuple[str, ...] = ("brightness", "contrast", "hue")
"""Transforms a setting may use, in the order they are applied."""

IDENTITY: dict[str, float] = {"brightness": 1.0, "contrast": 1.0, "hue": 0.0}
"""The parameter value that leaves an image unchanged, per transform."""

MAX_HALF_WIDTH: dict[str, float] = {"brightness": 1.0, "contrast": 1.0, "hue": 0.5}
"""Largest half-width: factors stay >= 0; a hue shift of +-0.5 already covers the circle."""

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
DEFAULT_SEVERITY = 3


class UnknownSettingError(LookupError):
    """Raised for a setting name that is not in ``SETTINGS``; the message suggests names."""


@dataclass(frozen=True)
class Jitter:
    """One transform of a setting: its parameter is drawn uniformly from identity +- width.

    Attributes:
        transform: ``brightness``, ``contrast`` or ``hue``.
        half_widths: Half-width of the range at severities 1..5 (five non-decreasing
            values). Brightness and contrast factors are drawn from ``[1 - w, 1 + w]``,
            hue shifts (fractions of the colour circle) from ``[-w, w]``.
    """

    transform: str
    half_widths: tuple[float, float, float, float, float]

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            message = f"Jitter.transform: expected one of {TRANSFORMS}, found {self.transform!r}"
            raise ValueError(message)
        widths = tuple(self.half_widths)
        if len(widths) != len(SEVERITIES):
            message = (
                f"Jitter.half_widths of {self.transform}: expected {len(SEVERITIES)} values "
                f"(severities {SEVERITIES[0]}..{SEVERITIES[-1]}), found {len(widths)}"
            )
            raise ValueError(message)
        limit = MAX_HALF_WIDTH[self.transform]
        if any(not 0.0 <= width <= limit for width in widths):
            message = (
                f"Jitter.half_widths of {self.transform}: expected values in [0, {limit}], "
                f"found {widths}"
            )
            raise ValueError(message)
        if any(later < earlier for earlier, later in pairwise(widths)):
            message = (
                f"Jitter.half_widths of {self.transform}: expected non-decreasing values "
                f"(a higher severity never shifts less), found {widths}"
            )
            raise ValueError(message)

    def range(self, severity: int = DEFAULT_SEVERITY) -> tuple[float, float]:
        """Return ``(low, high)`` of the parameter at ``severity``."""
        width = self.half_widths[check_severity(severity) - 1]
        identity = IDENTITY[self.transform]
        return identity - width, identity + width


@dataclass(frozen=True)
class Setting:
    """A named photometric test condition.

    Attributes:
        name: Registry name, also part of every parameter seed.
        description: One line for ``bench list settings`` and reports.
        jitters: The transforms this setting changes; the others stay at identity.
    """

    name: str
    description: str
    jitters: tuple[Jitter, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            message = f"Setting.name: expected a non-empty string, found {self.name!r}"
            raise ValueError(message)
        transforms = [jitter.transform for jitter in self.jitters]
        if len(set(transforms)) != len(transforms):
            message = f"Setting {self.name!r}: each transform at most once, found {transforms}"
            raise ValueError(message)

    @property
    def transforms(self) -> tuple[str, ...]:
        """The transforms this setting changes, in the order they are applied."""
        used = {jitter.transform for jitter in self.jitters}
        return tuple(name for name in TRANSFORMS if name in used)

    @property
    def changes_hue(self) -> bool:
        """Whether the setting shifts hue (a no-op on gray images)."""
        return "hue" in self.transforms

    def ranges(self, severity: int = DEFAULT_SEVERITY) -> dict[str, tuple[float, float]]:
        """Return ``{transform: (low, high)}`` for every transform the setting changes."""
        by_name = {jitter.transform: jitter for jitter in self.jitters}
        return {name: by_name[name].range(severity) for name in self.transforms}


_BRIGHTNESS = Jitter("brightness", (0.1, 0.25, 0.4, 0.55, 0.7))
_CONTRAST = Jitter("contrast", (0.1, 0.25, 0.4, 0.55, 0.7))
_HUE = Jitter("hue", (0.1, 0.2, 0.3, 0.4, 0.5))

SETTINGS: dict[str, Setting] = {
    setting.name: setting
    for setting in (
        Setting("clean", "Test images as loaded, no photometric change."),
        Setting(
            "general",
            "Brightness and contrast shifts (the paper's general setting).",
            (_BRIGHTNESS, _CONTRAST),
        ),
        Setting(
            "hard",
            "Brightness, contrast and hue shifts (the paper's hard setting).",
            (_BRIGHTNESS, _CONTRAST, _HUE),
        ),
    )
}
"""Built-in settings by name; the single source the harness registry is filled from."""


@dataclass(frozen=True, eq=False)
class PhotometricParameters:
    """The parameters drawn for one batch, one value per image (identity where unused).

    Attributes:
        sample_ids: ``B`` sample ids, in batch order.
        brightness: ``B`` brightness factors, float64.
        contrast: ``B`` contrast factors, float64.
        hue: ``B`` hue shifts in fractions of the colour circle, float64.
    """

    sample_ids: tuple[str, ...]
    brightness: torch.Tensor
    contrast: torch.Tensor
    hue: torch.Tensor

    def as_records(self) -> list[dict[str, str | float]]:
        """One ``{sample_id, brightness, contrast, hue}`` dict per image, for reports."""
        columns = zip(
            self.brightness.tolist(), self.contrast.tolist(), self.hue.tolist(), strict=True
        )
        return [
            {"sample_id": sample_id, "brightness": b, "contrast": c, "hue": h}
            for sample_id, (b, c, h) in zip(self.sample_ids, columns, strict=True)
        ]


def get_setting(setting: str | Setting) -> Setting:
    """Return the built-in setting of that name (a ``Setting`` is returned as is).

    Raises:
        UnknownSettingError: The name is not in ``SETTINGS``; the message suggests close
            names and lists the valid ones.
    """
    if isinstance(setting, Setting):
        return setting
    if setting in SETTINGS:
        return SETTINGS[setting]
    close = difflib.get_close_matches(str(setting), list(SETTINGS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(name) for name in close)}?" if close else ""
    message = f"unknown setting {setting!r}.{hint} Valid settings: {', '.join(sorted(SETTINGS))}."
    raise UnknownSettingError(message)


def check_severity(severity: int) -> int:
    """Return ``severity`` if it is an int in 1..5, else raise ``ValueError``."""
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        message = (
            f"severity: expected an integer from {SEVERITIES[0]} to {SEVERITIES[-1]}, "
            f"found {severity!r}"
        )
        raise ValueError(message)
    return severity


def parameter_seed(setting_name: str, severity: int, seed: int, sample_id: str) -> int:
    """Seed of one image's generator: SHA-256 of the four keys, first 63 bits.

    Stable across processes, platforms and Python versions (unlike ``hash()``).
    """
    key = json.dumps([setting_name, severity, seed, sample_id], separators=(",", ":"))
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def draw_parameters(
    setting: str | Setting,
    sample_ids: Sequence[str],
    seed: int,
    severity: int = DEFAULT_SEVERITY,
) -> PhotometricParameters:
    """Draw each image's parameters from its own generator.

    Every image draws three uniforms (brightness, contrast, hue, in that order) from a
    CPU ``torch.Generator`` seeded by ``parameter_seed``; transforms the setting does not
    use stay at identity. So an image gets the same parameters in any batch, at any
    position.

    Args:
        setting: A name from ``SETTINGS`` or a ``Setting``.
        sample_ids: ``B`` stable sample ids.
        seed: The run seed.
        severity: 1 (mild) to 5 (strong); 3 gives the documented ranges.

    Returns:
        The ``B`` parameters of each transform.
    """
    setting = get_setting(setting)
    check_severity(severity)
    sample_ids = _check_sample_ids(sample_ids)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, found {seed!r}")

    ranges = setting.ranges(severity)
    values: dict[str, list[float]] = {name: [] for name in TRANSFORMS}
    for sample_id in sample_ids:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(parameter_seed(setting.name, severity, seed, sample_id))
        uniforms = torch.rand(len(TRANSFORMS), generator=generator, dtype=torch.float64)
        for name, uniform in zip(TRANSFORMS, uniforms.tolist(), strict=True):
            if name in ranges:
                low, high = ranges[name]
                values[name].append(low + (high - low) * uniform)
            else:
                values[name].append(IDENTITY[name])

    as_tensor = {name: torch.tensor(v, dtype=torch.float64) for name, v in values.items()}
    return PhotometricParameters(tuple(sample_ids), **as_tensor)


def apply_parameters(images: torch.Tensor, parameters: PhotometricParameters) -> torch.Tensor:
    """Apply drawn parameters: brightness, then contrast, then hue.

    Args:
        images: ``B x C x H x W`` float in [0, 1].
        parameters: ``B`` values per transform, e.g. from ``draw_parameters``.

    Returns:
        ``B x C x H x W`` float in [0, 1], same dtype and device; the input is not changed.
    """
    check_images(images)
    if len(parameters.sample_ids) != images.shape[0]:
        message = (
            f"parameters: drawn for {len(parameters.sample_ids)} images, "
            f"but images has a batch of {images.shape[0]}"
        )
        raise ValueError(message)

    perturbed = images.clone()
    if bool((parameters.brightness != IDENTITY["brightness"]).any()):
        perturbed = adjust_brightness(perturbed, parameters.brightness)
    if bool((parameters.contrast != IDENTITY["contrast"]).any()):
        perturbed = adjust_contrast(perturbed, parameters.contrast)
    if bool((parameters.hue != IDENTITY["hue"]).any()):
        perturbed = adjust_hue(perturbed, parameters.hue)
    return perturbed


def apply_setting(
    images: torch.Tensor,
    setting: str | Setting,
    sample_ids: Sequence[str],
    seed: int,
    severity: int = DEFAULT_SEVERITY,
) -> torch.Tensor:
    """Perturb a batch of test images under a named setting.

    Args:
        images: ``B x 3 x H x W`` float in [0, 1] (``B x 1 x H x W`` is accepted too).
        setting: A name from ``SETTINGS`` or a ``Setting``.
        sample_ids: ``B`` stable sample ids, in batch order.
        seed: The run seed.
        severity: 1 (mild) to 5 (strong); 3 gives the documented ranges.

    Returns:
        ``B x C x H x W`` float in [0, 1]; identical pixels for an image whatever batch
        it is in.

    Example:
        >>> images = torch.full((2, 3, 4, 4), 0.5)
        >>> apply_setting(images, "clean", ["a", "b"], seed=0).equal(images)
        True
    """
    check_images(images)
    sample_ids = _check_sample_ids(sample_ids)
    if len(sample_ids) != images.shape[0]:
        message = (
            f"sample_ids: expected one id per image ({images.shape[0]}), found {len(sample_ids)}"
        )
        raise ValueError(message)
    parameters = draw_parameters(setting, sample_ids, seed, severity)
    return apply_parameters(images, parameters)


def _check_sample_ids(sample_ids: Sequence[str]) -> list[str]:
    if isinstance(sample_ids, str) or not isinstance(sample_ids, Sequence):
        message = f"sample_ids: expected a list of strings, found {type(sample_ids).__name__}"
        raise TypeError(message)
    wrong = [sample_id for sample_id in sample_ids if not isinstance(sample_id, str)]
    if wrong:
        message = f"sample_ids: expected strings, found {wrong[0]!r}"
        raise TypeError(message)
    return list(sample_ids)
