"""Markdown reports of one run, rendered from its run store alone (tables, curves, map grids).

Tables are built with pandas (grouping, means) and tabulate (GitHub markdown); figures with
matplotlib (:mod:`bench.figures`). Every undefined value reads ``n/a`` and the line under its
table says why.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from bench.environment import describe_machine
from bench.figures import (
    GridRow,
    safe_file_name,
    write_map_grid,
    write_severity_curve,
)
from bench.store import RunStore, atomic_write_bytes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """A threshold policy of pixel F1.

    Attributes:
        name: ``oracle``, ``val`` or ``native``.
        metric: Its metric key in result rows.
        title: How tables and headings name it.
    """

    name: str
    metric: str
    title: str


POLICIES: tuple[Policy, ...] = (
    Policy("oracle", "f1_oracle", "oracle threshold (upper bound: chosen on the test labels)"),
    Policy("val", "f1_val", "val threshold (chosen on held-out normal images only)"),
    Policy("native", "f1_native", "native threshold (the method's own)"),
)

THRESHOLD_FREE: tuple[tuple[str, str], ...] = (
    ("pixel_auroc", "Pixel AUROC"),
    ("aupro", "AUPRO (to 30 % FPR, normalised)"),
    ("image_auroc", "Image AUROC (map maximum as score)"),
)

FALLBACK_MARK = "†"
RANDOM_MARK = "‡"
NOTE_MARK = "§"
NA = "n/a"

# Training shorter than this is taken as "nothing to learn" (a mean image, say) and is kept
# out of the base of the training-time ratios, which it would inflate a thousandfold.
MIN_FIT_S = 0.5
PARTIAL = "\\*"
"""Marks a mean that had to leave out a class where the value is undefined (escaped `*`)."""

_ROW_KEYS = (
    "method",
    "method_name",
    "dataset",
    "class",
    "setting",
    "setting_name",
    "severity",
    "profile",
    "image_size",
    "val_threshold",
    "test_images",
    "gray_input",
    "predict_seconds",
    "predict_peak_memory_mib",
    "predict_added_memory_mib",
)


# --- rows -------------------------------------------------------------------------------


def load_rows(store: RunStore) -> pd.DataFrame:
    """All result rows of a run as one flat table.

    Returns:
        One row per method x dataset x class x setting, with the keys of the stored row
        (``method``, ``class``, ``setting``, ...), one column per metric, and the dict
        columns ``notes`` (why a metric is NaN), ``fit`` and ``describe``.
    """
    records = []
    for row in store.iter_results():
        flat = {key: row.get(key) for key in _ROW_KEYS}
        flat["method_name"] = flat["method_name"] or row["method"].split("(")[0]
        flat["setting_name"] = flat["setting_name"] or row["setting"].split("@")[0]
        flat.update({key: _float(value) for key, value in row.get("metrics", {}).items()})
        flat["notes"] = row.get("notes") or {}
        flat["fit"] = row.get("fit") or {}
        flat["describe"] = row.get("describe") or {}
        records.append(flat)
    return pd.DataFrame.from_records(records)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def finite(value: Any) -> bool:
    """Whether ``value`` is a number that a table may show."""
    return value is not None and isinstance(value, int | float | np.number) and math.isfinite(value)


# --- cells and tables -------------------------------------------------------------------


class Footnotes:
    """Why cells of one table read ``n/a`` (or carry a mark), for the line under the table.

    Args:
        mark: What the line explains: ``n/a`` cells, or cells with :data:`PARTIAL`.
    """

    def __init__(self, mark: str = NA) -> None:
        self.mark = mark
        self._places: dict[tuple[str, str], list[str]] = defaultdict(list)

    def add(self, subject: str, reason: str, place: str | None = None) -> None:
        """Record that ``subject`` (a method) is n/a for ``reason`` (at ``place``, a class)."""
        places = self._places[(subject, reason)]
        if place is not None and place not in places:
            places.append(place)

    def lines(self) -> list[str]:
        """The footnote paragraph (and a blank line), or nothing when no cell is n/a."""
        if not self._places:
            return []
        subjects_by_reason: dict[str, list[str]] = defaultdict(list)
        for (subject, reason), places in self._places.items():
            where = f" ({', '.join(places)})" if places else ""
            subjects_by_reason[reason].append(f"{subject}{where}")
        parts = [
            f"{reason}: {', '.join(subjects)}" for reason, subjects in subjects_by_reason.items()
        ]
        intro = {NA: NA, PARTIAL: f"{PARTIAL} mean over fewer classes"}[self.mark]
        return [f"{intro} — " + "; ".join(parts) + ".", ""]


def percent(value: Any) -> str:
    """``0.1234`` -> ``12.3``; undefined -> ``n/a``."""
    return f"{100 * float(value):.1f}" if finite(value) else NA


def points(value: Any) -> str:
    """A signed difference in percentage points: ``-0.031`` -> ``-3.1``."""
    return f"{100 * float(value):+.1f}" if finite(value) else NA


def number(value: Any, pattern: str) -> str:
    """``pattern.format(value)``, or ``n/a`` for an undefined value."""
    return pattern.format(value) if finite(value) else NA


def markdown_table(
    headers: Sequence[str], body: Iterable[Sequence[str]], text_columns: int = 1
) -> str:
    """A GitHub table, padded so the source lines up too.

    Args:
        headers: Column titles.
        body: Rows of cells, already formatted.
        text_columns: How many leading columns hold text (left-aligned); the rest hold
            numbers (right-aligned, marked with ``:`` so GitHub aligns them as well).
    """
    body = [[_escape(cell) for cell in row] for row in body]
    numbers = max(len(headers) - text_columns, 0)
    return tabulate(
        body,
        headers=[_escape(header) for header in headers],
        tablefmt="pipe",
        disable_numparse=True,
        colalign=("left",) * min(text_columns, len(headers)) + ("right",) * numbers,
    )


def _escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def bold_best(cells: list[str], values: list[Any]) -> list[str]:
    """Bold every cell that shows the best (largest) value, when two or more are defined."""
    shown = [cell for cell, value in zip(cells, values, strict=True) if finite(value)]
    if len(shown) < 2:
        return cells
    best = percent(max(float(v) for v in values if finite(v)))
    return [f"**{cell}**" if cell == best else cell for cell in cells]


# --- the facts of a run -----------------------------------------------------------------


@dataclass
class RunView:
    """What the report needs of one run, in the order its manifest lists things.

    Attributes:
        store: The run store.
        manifest: Its manifest.
        frame: The rows (see :func:`load_rows`).
        methods: Method keys in run order.
        settings: Setting labels in run order.
        labels: Method key to its table label (with provenance marks).
        records: Method key to fit facts (see :func:`method_records`).
    """

    store: RunStore
    manifest: dict[str, Any]
    frame: pd.DataFrame
    methods: list[str]
    settings: list[str]
    labels: dict[str, str]
    records: dict[str, dict[str, Any]]

    @classmethod
    def open(cls, store: RunStore) -> RunView:
        """Read a run store.

        Raises:
            ValueError: If the folder has no readable manifest.
        """
        manifest = store.read_manifest()
        if manifest is None:
            raise ValueError(f"{store.root} is not a run folder (no readable manifest.json)")
        frame = load_rows(store)
        config = manifest.get("config", {})
        present = set(frame["method"]) if not frame.empty else set()
        methods = [m for m in dict.fromkeys(config.get("methods") or []) if m in present]
        methods += sorted(present - set(methods))
        settings_present = set(frame["setting"]) if not frame.empty else set()
        settings = [s for s in config.get("settings") or [] if s in settings_present]
        settings += sorted(settings_present - set(settings))
        records = method_records(frame)
        labels = {m: f"{m}{provenance_marks(records[m]['describe'])}" for m in methods}
        return cls(store, manifest, frame, methods, settings, labels, records)


def provenance_marks(describe: dict[str, Any]) -> str:
    """Marks after a method's name: offline fallback backbone, random weights, a note."""
    marks = ""
    if describe.get("fallback"):
        marks += FALLBACK_MARK
    if describe.get("pretrained") is False:
        marks += RANDOM_MARK
    if describe.get("note"):
        marks += NOTE_MARK
    return marks


def method_records(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per method: provenance, mean fit times over classes, peak memory and throughput.

    Backbone and profile do not vary by class; training time and latency are the mean over
    classes, peak memory the maximum, throughput all test images over all predict time.
    """
    records: dict[str, dict[str, Any]] = {}
    if frame.empty:
        return records
    for method, part in frame.groupby("method", sort=False):
        fits = {row["class"]: row["fit"] for _, row in part.iterrows()}
        record: dict[str, Any] = {
            "describe": part.iloc[0]["describe"],
            "profile": part.iloc[0]["profile"],
            "method_name": part.iloc[0]["method_name"],
            "classes": len(fits),
        }
        first_fit = next(iter(fits.values()))
        for key in ("latency_device", "parameters", "memory_kind"):
            record[key] = first_fit.get(key)
        for key in ("fit_seconds", "latency_ms_median", "latency_ms_p95"):
            values = [fit[key] for fit in fits.values() if finite(fit.get(key))]
            record[key] = float(np.mean(values)) if values else None
        for key in ("fit_peak_memory_mib", "fit_added_memory_mib"):
            record[key] = _max_finite(fit.get(key) for fit in fits.values())
        for key in ("predict_peak_memory_mib", "predict_added_memory_mib"):
            record[key] = _max_finite(part[key]) if key in part else None
        timed = part[part["predict_seconds"].apply(finite)]
        seconds = float(timed["predict_seconds"].sum())
        record["throughput"] = float(timed["test_images"].sum()) / seconds if seconds > 0 else None
        records[method] = record
    return records


def _max_finite(values: Iterable[Any]) -> float | None:
    kept = [float(v) for v in values if finite(v)]
    return max(kept) if kept else None


# --- sections ---------------------------------------------------------------------------


def header_lines(view: RunView) -> list[str]:
    """Title and the run's facts."""
    manifest = view.manifest
    config = manifest.get("config", {})
    data_root = f" at `{config['data_root']}`" if config.get("data_root") else ""
    lines = [f"# DefectBench report — {manifest.get('run_id', view.store.root.name)}", ""]
    lines += [
        f"* dataset: `{config.get('dataset')}`{data_root}",
        f"* profile: `{config.get('profile')}`, seed {config.get('seed')}, "
        f"evaluation at {config.get('image_size')} × {config.get('image_size')} px",
        f"* settings: {', '.join(f'`{s}`' for s in config.get('settings', []))}",
        f"* machine: {describe_machine(manifest.get('hardware', {}))}; "
        f"device `{manifest.get('device')}`",
        f"* git revision: `{manifest.get('git_revision')}`; created {manifest.get('created')}",
        "",
    ]
    missing = [s for s in config.get("settings", []) if s not in view.settings]
    if missing and not view.frame.empty:
        lines += [f"Unfinished settings (no rows yet): {', '.join(missing)}.", ""]
    return lines


def methods_section(view: RunView) -> list[str]:
    """Profile, backbone and weight provenance per method."""
    body = []
    for method in view.methods:
        record = view.records[method]
        describe = record["describe"]
        weights = {True: "pretrained", False: "**random (not the real baseline)**"}.get(
            describe.get("pretrained"), "none needed"
        )
        if describe.get("weights"):
            weights += f" ({describe['weights']})"
        backbone = describe.get("backbone") or "—"
        if describe.get("fallback"):
            backbone += f" instead of {describe.get('requested_backbone', '?')}"
        body.append(
            [
                view.labels[method],
                record["profile"],
                backbone,
                weights,
                f"{record['classes']}",
                describe.get("note") or "",
            ]
        )
    headers = ["method", "profile", "backbone", "weights", "classes", "note"]
    return [
        "## Methods",
        "",
        markdown_table(headers, body, text_columns=len(headers)),
        "",
        f"{FALLBACK_MARK} backbone is the offline fallback, not the original one; "
        f"{RANDOM_MARK} backbone weights were NOT pretrained; {NOTE_MARK} see the note.",
        "",
        "Threshold policies of pixel F1: **oracle** is an upper bound (the best threshold on "
        "the test set itself, which no deployed system knows); **val** is chosen without any "
        "test label, from held-out normal training images; **native** is the method's own "
        "boundary, where it has one.",
        "",
    ]


def per_class_section(view: RunView) -> list[str]:
    """Tables 1-2 of the paper: F1 per class x method with a mean row, per policy."""
    lines = ["## Pixel F1 per class (Tables 1-2)", ""]
    lines += [
        "Per dataset and setting, one table per threshold policy; the best value of a row "
        "is bold. The mean is over the classes where a value is defined.",
        "",
    ]
    for (dataset, setting), part in view.frame.groupby(["dataset", "setting"], sort=False):
        lines += [f"### {dataset}, setting `{setting}`", ""]
        if setting != "clean" and part["gray_input"].fillna(False).astype(bool).all():
            lines += ["All test images are gray: hue shifts are a no-op on them.", ""]
        lines += policy_tables(
            part,
            lambda policy: f"#### Pixel F1 (%), {policy.title}",
            lambda metric, part=part: _class_table(part, metric, view),
        )
    return lines


def policy_tables(
    part: pd.DataFrame,
    heading: Callable[[Policy], str],
    table: Callable[[str], list[str]],
    no_native: str = "No method in this run has a native threshold.",
) -> list[str]:
    """One heading and table per threshold policy; a sentence where no row has a native one.

    Args:
        part: The rows the tables are drawn from.
        heading: Policy to its heading line.
        table: Metric key (``f1_oracle``, ...) to the table's lines.
        no_native: Said instead of a table of nothing but ``n/a``.
    """
    lines = []
    for policy in POLICIES:
        lines += [heading(policy), ""]
        if policy.name == "native" and not part["f1_native"].apply(finite).any():
            lines += [no_native, ""]
            continue
        lines += table(policy.metric)
    return lines


def _class_table(part: pd.DataFrame, metric: str, view: RunView) -> list[str]:
    classes = list(dict.fromkeys(part["class"]))
    methods = [m for m in view.methods if m in set(part["method"])]
    values = part.pivot_table(index="class", columns="method", values=metric, aggfunc="first")
    values = values.reindex(index=classes, columns=methods)
    footnotes = Footnotes()
    for _, row in part.iterrows():
        if not finite(row[metric]):
            reason = row["notes"].get(metric, "undefined")
            footnotes.add(view.labels[row["method"]], reason, row["class"])
    means = values.mean(axis=0, skipna=True)
    body = []
    for name, row in [*values.iterrows(), ("**mean**", means)]:
        row_values = [row.get(m) for m in methods]
        body.append([name, *bold_best([percent(v) for v in row_values], row_values)])
    headers = ["class", *[view.labels[m] for m in methods]]
    return [markdown_table(headers, body), "", *footnotes.lines()]


def mean_frame(frame: pd.DataFrame, metric: str) -> pd.Series:
    """Mean of ``metric`` over classes, indexed by ``(method, setting)`` (NaN skipped)."""
    return frame.groupby(["method", "setting"], sort=False)[metric].mean()


def _setting_matrix(
    view: RunView,
    part: pd.DataFrame,
    metric: str,
    methods: Sequence[str],
) -> list[str]:
    """Rows methods, columns settings, cells the mean over classes; best of a column bold."""
    means = mean_frame(part, metric)
    settings = [s for s in view.settings if s in set(part["setting"])]
    footnotes, partial = Footnotes(), Footnotes(PARTIAL)
    columns = []
    for setting in settings:
        values = [means.get((m, setting), math.nan) for m in methods]
        cells = bold_best([percent(v) for v in values], values)
        for index, method in enumerate(methods):
            label = view.labels[method]
            if not finite(values[index]):
                footnotes.add(label, _reason(part, method, metric), setting)
                continue
            missing = _undefined_classes(part, method, setting, metric)
            if missing:
                cells[index] += PARTIAL
                for class_name, reason in missing:
                    partial.add(label, f"{class_name} left out ({reason})", setting)
        columns.append(cells)
    body = [[view.labels[m], *[column[i] for column in columns]] for i, m in enumerate(methods)]
    headers = ["method", *[f"`{s}`" for s in settings]]
    return [markdown_table(headers, body), "", *footnotes.lines(), *partial.lines()]


def _undefined_classes(
    part: pd.DataFrame, method: str, setting: str, metric: str
) -> list[tuple[str, str]]:
    """Classes whose value a mean had to skip, with the stored reason."""
    rows = part[(part["method"] == method) & (part["setting"] == setting)]
    return [
        (row["class"], row["notes"].get(metric, "undefined"))
        for _, row in rows.iterrows()
        if not finite(row[metric])
    ]


def _reason(part: pd.DataFrame, method: str, metric: str) -> str:
    rows = part[part["method"] == method]
    if rows.empty:
        return "no finished row"
    reasons = {notes.get(metric) for notes in rows["notes"] if notes.get(metric)}
    return "; ".join(sorted(reasons)) or "undefined on every class"


def settings_section(view: RunView) -> list[str]:
    """Table 3 of the paper: every setting side by side, mean F1 per method and policy."""
    lines = ["## Settings side by side (Table 3)", ""]
    lines += [
        "Mean pixel F1 (%) over classes; the best value of a column is bold.",
        "",
    ]
    for dataset, part in view.frame.groupby("dataset", sort=False):
        lines += policy_tables(
            part,
            lambda policy, dataset=dataset: f"### {dataset}: pixel F1 (%), {policy.title}",
            lambda metric, part=part: _setting_matrix(view, part, metric, view.methods),
        )
    return lines


def robustness_section(view: RunView) -> list[str]:
    """The change from clean to every other setting, in absolute F1 points, per policy."""
    shifted = [s for s in view.settings if s != "clean"]
    lines = ["## Robustness: change from clean", ""]
    if "clean" not in view.settings or not shifted:
        return lines + ["Needs the `clean` setting and at least one other in the same run.", ""]
    lines += [
        "Mean pixel F1 under the setting minus mean pixel F1 on clean images, in absolute "
        "percentage points (negative: worse under the shift). Both means are over the classes "
        "where both values are defined.",
        "",
    ]
    for dataset, part in view.frame.groupby("dataset", sort=False):
        lines += policy_tables(
            part,
            lambda p, dataset=dataset: f"### {dataset}: change of pixel F1 (points), {p.title}",
            lambda metric, part=part: _drop_table(view, part, metric, shifted),
        )
    return lines


def _drop_table(view: RunView, part: pd.DataFrame, metric: str, shifted: list[str]) -> list[str]:
    values = part.pivot_table(
        index=["method", "class"], columns="setting", values=metric, aggfunc="first", dropna=False
    )
    footnotes = Footnotes()
    body = []
    for method in view.methods:
        cells = []
        for setting in shifted:
            if method not in values.index.get_level_values(0) or setting not in values:
                footnotes.add(view.labels[method], "no finished row", setting)
                cells.append(NA)
                continue
            per_class = values.loc[method]
            difference = (per_class[setting] - per_class.get("clean", math.nan)).dropna()
            if difference.empty:
                footnotes.add(view.labels[method], _reason(part, method, metric), setting)
                cells.append(NA)
                continue
            cells.append(points(difference.mean()))
        body.append([view.labels[method], *cells])
    headers = ["method", *[f"`{s}`" for s in shifted]]
    return [markdown_table(headers, body), "", *footnotes.lines()]


def graded_settings(view: RunView) -> dict[str, list[tuple[int, str]]]:
    """Setting families run at two or more severities: ``{family: [(severity, label)]}``.

    A plain label such as ``general`` is the default severity; when the run also has its
    explicit twin (``general@3``, the same pixels) the first in run order is kept.
    """
    from perturbations import DEFAULT_SEVERITY

    rows = view.frame.drop_duplicates("setting").set_index("setting")
    families: dict[str, dict[int, str]] = defaultdict(dict)
    for label in view.settings:
        family, severity = rows.loc[label, "setting_name"], rows.loc[label, "severity"]
        if family != "clean":
            level = int(severity) if finite(severity) else DEFAULT_SEVERITY
            families[family].setdefault(level, label)
    return {f: sorted(levels.items()) for f, levels in families.items() if len(levels) > 1}


def severity_section(view: RunView, figure_dir: Path, relative_to: Path) -> list[str]:
    """Graded severities: a table per policy and a PNG curve per method (F1 vs severity)."""
    graded = graded_settings(view)
    if not graded:
        return []
    clean = [(0, "clean")] if "clean" in view.settings else []
    order = [label for _, label in clean]
    order += [label for levels in graded.values() for _, label in levels]
    lines = ["## Graded severities", ""]
    lines += [
        f"Mean pixel F1 (%) of {', '.join(f'`{name}`' for name in graded)} at each severity "
        "(1 mildest, 5 strongest; severity 0 is clean); the best value of a column is bold.",
        "",
    ]
    subset = view.frame[view.frame["setting"].isin(order)]
    subview = _with_settings(view, order)
    for dataset, part in subset.groupby("dataset", sort=False):
        lines += policy_tables(
            part,
            lambda p, dataset=dataset: f"### {dataset}: pixel F1 (%) by severity, {p.title}",
            lambda metric, part=part: _setting_matrix(subview, part, metric, view.methods),
        )

    policy_names = {policy.name: policy.name for policy in POLICIES}
    for method in view.methods:
        means = {p.name: mean_frame(subset[subset["method"] == method], p.metric) for p in POLICIES}
        curves = {
            family: {
                name: [
                    (level, float(means[name][(method, label)]))
                    for level, label in clean + levels
                    if finite(means[name].get((method, label)))
                ]
                for name in policy_names
            }
            for family, levels in graded.items()
        }
        if not any(points for by_policy in curves.values() for points in by_policy.values()):
            continue
        path = figure_dir / f"severity-{safe_file_name(method)}.png"
        write_severity_curve(path, view.labels[method], curves, policy_names)
        caption = (
            f"Mean pixel F1 of {view.labels[method]} against severity (0 = clean) for "
            f"{', '.join(graded)}: solid val threshold, dashed oracle (upper bound), dotted "
            "native threshold (where the method has one)."
        )
        lines += figure_lines(path, relative_to, caption, f"{method}: F1 vs severity")
    return lines


def _with_settings(view: RunView, settings: list[str]) -> RunView:
    return RunView(
        view.store, view.manifest, view.frame, view.methods, settings, view.labels, view.records
    )


def ablation_section(view: RunView) -> list[str]:
    """Table 4 of the paper: the variants of one registered method, side by side."""
    variants: dict[str, list[str]] = defaultdict(list)
    for method in view.methods:
        variants[view.records[method]["method_name"]].append(method)
    groups = {name: keys for name, keys in variants.items() if len(keys) > 1}
    if not groups:
        return []
    lines = ["## Ablation: variants of one method (Table 4)", ""]
    lines += [
        "Runs of the same registered method with different options; mean pixel F1 (%) over "
        "classes, the best of a column bold.",
        "",
    ]
    for name, keys in groups.items():
        part = view.frame[view.frame["method"].isin(keys)]
        for dataset, by_dataset in part.groupby("dataset", sort=False):
            lines += policy_tables(
                by_dataset,
                lambda p, name=name, dataset=dataset: (
                    f"### `{name}` on {dataset}: pixel F1 (%), {p.title}"
                ),
                lambda metric, part=by_dataset, keys=keys: _setting_matrix(
                    view, part, metric, keys
                ),
                no_native=f"`{name}` has no native threshold.",
            )
    return lines


def threshold_free_section(view: RunView) -> list[str]:
    """Pixel AUROC, AUPRO and image AUROC: mean over classes per method and setting."""
    lines = ["## Threshold-free metrics", ""]
    lines += ["Mean over classes (%); the best value of a column is bold.", ""]
    for dataset, part in view.frame.groupby("dataset", sort=False):
        for metric, title in THRESHOLD_FREE:
            if metric not in part:
                continue
            lines += [f"### {dataset}: {title} (%)", ""]
            lines += _setting_matrix(view, part, metric, view.methods)
    return lines


def speed_section(view: RunView) -> list[str]:
    """Latency, throughput, training time and memory per method, with ratios to the fastest."""
    records = view.records
    fastest_latency = _min_finite(records[m]["latency_ms_median"] for m in view.methods)
    fit_seconds = {m: records[m]["fit_seconds"] for m in view.methods}
    untrained = [m for m, value in fit_seconds.items() if finite(value) and value < MIN_FIT_S]
    fastest_fit = _min_finite(v for m, v in fit_seconds.items() if m not in untrained)
    footnotes = Footnotes()
    body = []
    for method in view.methods:
        record = records[method]
        label = view.labels[method]
        for key in ("latency_ms_median", "fit_seconds", "throughput", "fit_peak_memory_mib"):
            if not finite(record.get(key)):
                footnotes.add(label, f"{key} not recorded by this run")
        body.append(
            [
                label,
                record["profile"],
                record.get("latency_device") or NA,
                number(record["latency_ms_median"], "{:.1f}"),
                number(record["latency_ms_p95"], "{:.1f}"),
                _ratio(record["latency_ms_median"], fastest_latency),
                number(record["throughput"], "{:.1f}"),
                number(record["fit_seconds"], "{:.1f}"),
                "—" if method in untrained else _ratio(record["fit_seconds"], fastest_fit),
                _memory_cell(record, "fit"),
                _memory_cell(record, "predict"),
                number(record.get("parameters"), "{:,}"),
            ]
        )
    headers = [
        "method",
        "profile",
        "device",
        "latency ms (median)",
        "latency ms (p95)",
        "latency × fastest",
        "throughput images/s",
        "train s per class",
        "train × fastest",
        "MiB train: peak (+added)",
        "MiB test: peak (+added)",
        "parameters",
    ]
    return [
        "## Speed and memory",
        "",
        markdown_table(headers, body, text_columns=3),
        "",
        *footnotes.lines(),
        "Latency: batch 1, after warm-up, device synchronised, mean over classes of the "
        "per-class median and p95. Throughput: all test images over the wall time of "
        "predicting them in batches (with the copies to and from the device). "
        "“× fastest” divides by the fastest method of this run; “—”: under "
        f"{MIN_FIT_S:g} s of training (nothing to learn), left out of the base. Memory on a "
        "CPU: peak resident memory of the whole process (libraries and earlier models "
        "included, so alike for all methods) and, in brackets, how much it rose during the "
        "step (a lower bound where the step reused memory freed before); on a GPU: peak "
        "allocated CUDA memory.",
        "",
    ]


def _memory_cell(record: dict[str, Any], step: str) -> str:
    peak, added = record.get(f"{step}_peak_memory_mib"), record.get(f"{step}_added_memory_mib")
    if record.get("memory_kind") == "cuda allocated" or not finite(added):
        return number(peak, "{:.0f}")
    return f"{number(peak, '{:.0f}')} (+{float(added):.0f})"


def _min_finite(values: Iterable[Any]) -> float | None:
    kept = [float(v) for v in values if finite(v) and float(v) > 0]
    return min(kept) if kept else None


def _ratio(value: Any, fastest: float | None) -> str:
    if not finite(value) or fastest is None:
        return NA
    return f"{float(value) / fastest:.1f}×"


def pictures_section(view: RunView, figure_dir: Path, relative_to: Path) -> list[str]:
    """One map grid per dataset x class: every setting's test images in rows (Figs. 3-4)."""
    lines: list[str] = []
    store = view.store
    for (dataset, class_name), part in view.frame.groupby(["dataset", "class"], sort=False):
        rows = []
        methods = [m for m in view.methods if m in set(part["method"])]
        for setting in [s for s in view.settings if s in set(part["setting"])]:
            rows += _grid_rows(store, part, dataset, class_name, setting, methods)
        if not rows:
            continue
        path = figure_dir / f"maps-{safe_file_name(dataset)}-{safe_file_name(class_name)}.png"
        write_map_grid(path, rows, methods, view.labels)
        caption = (
            f"{dataset} / {class_name}: each row is one defective test image under one setting "
            "(input after the setting's perturbation); then per method its raw anomaly map "
            "(no threshold; one colour scale per method, its bar at the bottom) and its "
            "binary mask at the val threshold; ground truth last."
        )
        lines += figure_lines(path, relative_to, caption, f"anomaly maps of {class_name}")
    if not lines:
        return []
    return ["## Anomaly maps (Figs. 3-4)", "", *lines]


def _grid_rows(
    store: RunStore,
    part: pd.DataFrame,
    dataset: str,
    class_name: str,
    setting: str,
    methods: list[str],
) -> list[GridRow]:
    samples = store.read_arrays(store.samples_path(dataset, class_name, setting))
    if samples is None or len(samples["images"]) == 0:
        return []
    maps, thresholds = {}, {}
    for method in methods:
        stored = store.read_arrays(store.maps_path(method, dataset, class_name, setting))
        if stored is not None:
            maps[method] = stored["maps"]
        row = part[(part["method"] == method) & (part["setting"] == setting)]
        value = row["val_threshold"].iloc[0] if not row.empty else None
        thresholds[method] = float(value) if finite(value) else None
    ids = samples.get("ids", np.arange(len(samples["images"])))
    return [
        GridRow(
            label=f"{setting} · {ids[index]}",
            image=samples["images"][index].transpose(1, 2, 0),
            gt_mask=samples["masks"][index].astype(bool),
            anomaly_maps={m: maps[m][index] for m in maps if index < len(maps[m])},
            val_thresholds=thresholds,
        )
        for index in range(len(samples["images"]))
    ]


def figure_lines(path: Path, relative_to: Path, caption: str, alt: str) -> list[str]:
    """An image reference by relative path, with its caption in italics under it."""
    relative = Path(os.path.relpath(path.resolve(), relative_to.resolve())).as_posix()
    return [f"![{alt}]({relative})", "", f"*{caption}*", ""]


def contents_lines(sections: list[list[str]]) -> list[str]:
    """A linked list of the ``##`` headings (GitHub's anchor rule)."""
    titles = [line[3:] for section in sections for line in section if line.startswith("## ")]
    return ["## Contents", "", *[f"* [{t}](#{anchor(t)})" for t in titles], ""]


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


# --- the report -------------------------------------------------------------------------


def render_report(store: RunStore, figure_dir: Path, relative_to: Path) -> str:
    """The markdown text of a run's report; its figures are written into ``figure_dir``.

    Args:
        store: The run.
        figure_dir: Folder for PNG figures.
        relative_to: Folder the markdown file will be in (image links are relative to it).

    Raises:
        ValueError: If the folder has no readable manifest.
    """
    view = RunView.open(store)
    lines = header_lines(view)
    if view.frame.empty:
        return "\n".join([*lines, "No finished results yet.", ""])
    sections = [
        methods_section(view),
        per_class_section(view),
        settings_section(view),
        robustness_section(view),
        severity_section(view, figure_dir, relative_to),
        ablation_section(view),
        threshold_free_section(view),
        speed_section(view),
        pictures_section(view, figure_dir, relative_to),
    ]
    sections = [section for section in sections if section]
    lines += contents_lines(sections)
    for section in sections:
        lines += section
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write ``report.md`` (and ``figures/`` beside it) for the run in ``run_dir``.

    Args:
        run_dir: A run folder.
        output: Markdown file to write; default ``run_dir/report.md``.

    Returns:
        The path written.

    Raises:
        ValueError: If ``run_dir`` has no readable manifest.
    """
    store = RunStore(run_dir)
    output = Path(output) if output is not None else store.root / "report.md"
    text = render_report(store, output.parent / "figures", output.parent)
    atomic_write_bytes(output, text.encode("utf-8"))
    logger.info("report written to %s", output)
    return output
