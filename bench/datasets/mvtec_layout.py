"""Adapters for MVTec AD, DTD-Synthetic, Woven Fabric Textures and any MVTec-layout folder.

Where to get each set and how it is laid out: ``datasets/README.md``.
"""

from __future__ import annotations

import logging

from bench.data import DATASETS
from bench.datasets._layout import Layout, LayoutAdapter

logger = logging.getLogger(__name__)

MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS = (
    "bottle",
    "cable",
    "capsule",
    "hazelnut",
    "metal_nut",
    "pill",
    "screw",
    "toothbrush",
    "transistor",
    "zipper",
)
DTD_CLASSES = (
    "Blotchy_099",
    "Fibrous_183",
    "Marbled_078",
    "Matted_069",
    "Mesh_114",
    "Perforated_037",
    "Stratified_154",
    "Woven_001",
    "Woven_068",
    "Woven_104",
    "Woven_125",
    "Woven_127",
)
WOVEN_CLASSES = ("texture_1", "texture_2")


@DATASETS.register("mvtec", description="MVTec AD; texture classes unless --classes says more")
class MVTecAD(LayoutAdapter):
    """MVTec AD (Bergmann et al., CVPR 2019): the five texture classes by default.

    ``classes`` also takes ``objects`` (the ten object classes), ``textures`` and ``all``.
    Masks are ``ground_truth/<defect>/<stem>_mask.png``.
    """

    name = "mvtec"
    description = "MVTec AD; texture classes unless --classes says more"
    layout = Layout(
        mask_suffixes=("_mask",),
        known_classes=MVTEC_TEXTURES + MVTEC_OBJECTS,
        default_classes=MVTEC_TEXTURES,
        groups={"textures": MVTEC_TEXTURES, "objects": MVTEC_OBJECTS},
        requires_test_good=True,
    )


@DATASETS.register("dtd", description="DTD-Synthetic: 12 textures with synthetic defects")
class DTDSynthetic(LayoutAdapter):
    """DTD-Synthetic (Aota et al., WACV 2023): twelve DTD textures with drawn defects.

    Defective images lie in ``test/bad`` and their masks in ``ground_truth/bad`` under the
    image's own file name.
    """

    name = "dtd"
    description = "DTD-Synthetic: 12 textures with synthetic defects"
    layout = Layout(
        mask_suffixes=("",),
        known_classes=DTD_CLASSES,
        default_classes=DTD_CLASSES,
        requires_test_good=True,
    )


@DATASETS.register("woven", description="Woven Fabric Textures (MVTec, 2018): texture_1, texture_2")
class WovenFabric(LayoutAdapter):
    """Woven Fabric Textures (Bergmann et al., 2018): two woven fabrics, 512 x 512 gray.

    Every test image is defective (``test/defective``, no ``test/good``), so image-level
    metrics have no normal test image for these classes. Masks in
    ``ground_truth/defective`` may carry the ``_mask`` suffix or the image's own name.
    """

    name = "woven"
    description = "Woven Fabric Textures (MVTec, 2018): texture_1, texture_2"
    layout = Layout(
        mask_suffixes=("_mask", ""),
        known_classes=WOVEN_CLASSES,
        default_classes=WOVEN_CLASSES,
        requires_test_good=False,
    )


@DATASETS.register("folder", description="any folder in MVTec layout (one class or many)")
class Folder(LayoutAdapter):
    """Any folder in MVTec layout.

    The classes are the sub-folders of the root that have ``train/good``; a root that
    itself has ``train`` and ``test`` is one class named after the folder. Masks may be
    ``<stem>_mask.<ext>`` or ``<stem>.<ext>``.
    """

    name = "folder"
    description = "any folder in MVTec layout (one class or many)"
    layout = Layout(mask_suffixes=("_mask", ""), requires_test_good=False)
