"""PNG figures of a run: map grids as in the paper's Figs. 3-4, and metric-vs-severity curves.

Sizes are fixed (no tight bounding box), so a figure's pixel size follows from its rows and
columns alone; :func:`grid_pixel_size` and :data:`CURVE_PIXEL_SIZE` state them.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DPI = 80
PANEL_INCHES = 1.5
"""Width and height of one image panel."""

COLOUR_BAR_INCHES = 0.5
"""Height of the bottom strip that holds each method's colour bar."""

LABEL_INCHES = 0.5
"""Width of the left strip that holds the row labels."""

TITLE_INCHES = 0.4
"""Height of the top strip that holds the column titles."""

GAP = 0.04
"""White gap between panels, as a share of a panel."""

CURVE_INCHES = (4.5, 3.0)
CURVE_PIXEL_SIZE = (round(CURVE_INCHES[0] * DPI), round(CURVE_INCHES[1] * DPI))
"""``(width, height)`` of a severity curve PNG."""

MAP_COLOURS = "jet"


@dataclass(frozen=True)
class GridRow:
    """One row of a map grid: a test image under one setting, and every method's output.

    Attributes:
        label: Row label, e.g. ``hard · 003``.
        image: ``H x W x 3`` uint8 input after the setting's perturbation.
        gt_mask: ``H x W`` bool ground truth.
        anomaly_maps: Method key to its ``H x W`` raw map (no threshold); a method missing
            from the dict has no map for this row (an unfinished job).
        val_thresholds: Method key to its val threshold, ``None`` where there is none.
    """

    label: str
    image: np.ndarray
    gt_mask: np.ndarray
    anomaly_maps: dict[str, np.ndarray]
    val_thresholds: dict[str, float | None]


def grid_pixel_size(rows: int, methods: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of a map grid with ``rows`` rows and ``methods`` methods.

    Columns: the input, a map and a mask per method, the ground truth; around them a margin
    for row labels (left), column titles (top) and colour bars (bottom).
    """
    columns = 2 + 2 * methods
    width = (LABEL_INCHES + columns * PANEL_INCHES) * DPI
    height = (TITLE_INCHES + rows * PANEL_INCHES + COLOUR_BAR_INCHES) * DPI
    return round(width), round(height)


def safe_file_name(text: str) -> str:
    """``ours(components=G.S)`` -> ``ours_components_G.S_``: one portable file name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def write_map_grid(
    path: Path, rows: Sequence[GridRow], methods: Sequence[str], labels: dict[str, str]
) -> None:
    """Draw inputs, raw maps, val-threshold masks and ground truth, one test image per row.

    Each method's maps share one colour scale over the whole grid (its minimum to maximum
    there), shown by a colour bar under its map column, so rows of one method compare.

    Args:
        path: PNG to write (folders are created).
        rows: The grid's rows, at least one.
        methods: Method keys, in column order.
        labels: Method key to its column title.

    Raises:
        ValueError: If ``rows`` is empty.
    """
    if not rows:
        raise ValueError(f"map grid {path}: expected at least one row, got none")
    plt = _pyplot()
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable

    # One mosaic image in one axes: far quicker to draw than an axes per panel.
    size = rows[0].gt_mask.shape
    scales = {m: _colour_scale([row.anomaly_maps.get(m) for row in rows]) for m in methods}
    colours = colormaps[MAP_COLOURS]
    titles = ["input"]
    titles += [f"{labels[m]}\n{kind}" for m in methods for kind in ("map", "mask @ val")]
    titles.append("ground truth")
    mosaic_rows, missing = [], []
    for r, row in enumerate(rows):
        panels = [row.image.astype(np.float32) / 255.0]
        for method in methods:
            anomaly_map = row.anomaly_maps.get(method)
            if anomaly_map is None:
                panels.append(None)
            else:
                panels.append(colours(scales[method](anomaly_map))[..., :3])
            panels.append(_gray(_val_mask(row, method)))
        panels.append(_gray(row.gt_mask))
        missing += [(r, c) for c, panel in enumerate(panels) if panel is None]
        mosaic_rows.append([_panel(panel, size) for panel in panels])
    gap = max(1, round(GAP * size[0]))
    mosaic = _tile(mosaic_rows, gap)

    width, height = grid_pixel_size(len(rows), len(methods))
    figure = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    left, bottom = LABEL_INCHES * DPI / width, COLOUR_BAR_INCHES * DPI / height
    top = TITLE_INCHES * DPI / height
    axis = figure.add_axes((left, bottom, 1 - left, 1 - bottom - top))
    axis.imshow(mosaic, aspect="auto", interpolation="antialiased")
    axis.set_axis_off()
    column_width, row_height = (1 - left) / len(titles), (1 - bottom - top) / len(rows)
    for c, title in enumerate(titles):
        x = left + (c + 0.5) * column_width
        figure.text(x, 1 - top / 2, title, ha="center", va="center", fontsize=7)
    for r, row in enumerate(rows):
        y = 1 - top - (r + 0.5) * row_height
        figure.text(left / 2, y, row.label, ha="center", va="center", rotation=90, fontsize=7)
    for r, c in missing:
        x, y = left + (c + 0.5) * column_width, 1 - top - (r + 0.5) * row_height
        figure.text(x, y, "n/a", ha="center", va="center", fontsize=8)

    for index, method in enumerate(methods):
        if scales[method] is None:
            continue
        x = left + (1 + 2 * index + 0.1) * column_width
        bar_axis = figure.add_axes((x, bottom * 0.55, 0.8 * column_width, bottom * 0.25))
        bar = figure.colorbar(
            ScalarMappable(norm=scales[method], cmap=MAP_COLOURS),
            cax=bar_axis,
            orientation="horizontal",
        )
        bar.ax.tick_params(labelsize=6)
    _save(figure, path)


def write_severity_curve(
    path: Path,
    title: str,
    curves: dict[str, dict[str, list[tuple[int, float]]]],
    policy_titles: dict[str, str],
) -> None:
    """Draw mean F1 against severity (0 = clean) for each setting and threshold policy.

    Args:
        path: PNG to write.
        title: Figure title (the method).
        curves: Setting name to ``{policy: [(severity, value), ...]}``; values in [0, 1],
            undefined points already left out.
        policy_titles: Policy to its legend text.

    Raises:
        ValueError: If no curve has a point.
    """
    if not any(points for by_policy in curves.values() for points in by_policy.values()):
        raise ValueError(f"severity curve {path}: expected at least one point, got none")
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=CURVE_INCHES, dpi=DPI, layout="constrained")
    styles = {"oracle": "--", "val": "-", "native": ":"}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (setting, by_policy) in enumerate(curves.items()):
        for policy, points in by_policy.items():
            if not points:
                continue
            severities, values = zip(*sorted(points), strict=True)
            axis.plot(
                severities,
                [100 * value for value in values],
                styles.get(policy, "-"),
                marker="o",
                color=colours[index % len(colours)],
                label=f"{setting}, {policy_titles[policy]}",
            )
    axis.set_xlabel("severity (0 = clean)", fontsize=8)
    axis.set_ylabel("mean pixel F1 (%)", fontsize=8)
    axis.set_xticks(range(0, 6))
    axis.tick_params(labelsize=7)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=6)
    _save(figure, path)


def _colour_scale(maps: Sequence[np.ndarray | None]):
    """One ``Normalize`` from the smallest to the largest value of a method's maps, or None."""
    from matplotlib.colors import Normalize

    present = [m for m in maps if m is not None]
    if not present:
        return None
    low = float(min(m.min() for m in present))
    high = float(max(m.max() for m in present))
    if high <= low:  # a constant map: widen so that imshow and the bar are defined
        high = low + 1.0
    return Normalize(vmin=low, vmax=high)


def _val_mask(row: GridRow, method: str) -> np.ndarray | None:
    """The method's binary mask at its val threshold (score >= threshold, as the metrics)."""
    anomaly_map = row.anomaly_maps.get(method)
    threshold = row.val_thresholds.get(method)
    if anomaly_map is None or threshold is None or not math.isfinite(threshold):
        return None
    return anomaly_map >= threshold


def _gray(mask: np.ndarray | None) -> np.ndarray | None:
    """A bool mask as an ``H x W x 3`` image, white where flagged."""
    if mask is None:
        return None
    return np.repeat(mask.astype(np.float32)[..., None], 3, axis=2)


def _panel(panel: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """``panel`` as ``size`` RGB (nearest neighbour); light gray where there is none."""
    if panel is None:
        return np.full((*size, 3), 0.85, dtype=np.float32)
    if panel.shape[:2] != size:
        rows = np.arange(size[0]) * panel.shape[0] // size[0]
        columns = np.arange(size[1]) * panel.shape[1] // size[1]
        panel = panel[rows][:, columns]
    return panel.astype(np.float32)


def _tile(rows: list[list[np.ndarray]], gap: int) -> np.ndarray:
    """Panels ``H x W x 3`` into one image with white gaps between them."""
    height, width = rows[0][0].shape[:2]
    count_r, count_c = len(rows), len(rows[0])
    mosaic = np.ones((count_r * (height + gap) - gap, count_c * (width + gap) - gap, 3))
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            top, left = r * (height + gap), c * (width + gap)
            mosaic[top : top + height, left : left + width] = panel
    return mosaic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    # No bbox_inches="tight": the pixel size stays the one the figure was made with.
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    logger.debug("figure written to %s", path)
