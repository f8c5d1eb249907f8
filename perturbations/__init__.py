"""Photometric perturbations of test images (brightness, contrast, hue) and named settings.

This package knows nothing but tensors: the harness imports it, never the reverse.
"""

from perturbations.settings import (
    DEFAULT_SEVERITY,
    IDENTITY,
    SETTINGS,
    SEVERITIES,
    TRANSFORMS,
    Jitter,
    PhotometricParameters,
    Setting,
    UnknownSettingError,
    apply_parameters,
    apply_setting,
    check_severity,
    draw_parameters,
    get_setting,
    parameter_seed,
)
from perturbations.transforms import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    check_images,
    is_grayscale,
)

__all__ = [
    "DEFAULT_SEVERITY",
    "IDENTITY",
    "SETTINGS",
    "SEVERITIES",
    "TRANSFORMS",
    "Jitter",
    "PhotometricParameters",
    "Setting",
    "UnknownSettingError",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "apply_parameters",
    "apply_setting",
    "check_images",
    "check_severity",
    "draw_parameters",
    "get_setting",
    "is_grayscale",
    "parameter_seed",
]
