"""Markdown reports and figure grids, rendered from a run store alone."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from bench.environment import describe_machine
from bench.store import RunStore, atomic_write_bytes

logger = logging.getLogger(__name__)

METRICS: tuple[tuple[str, str], ...] = (
    ("f1_oracle", "Pixel F1, oracle threshold (upper bound: chosen on the test labels)"),
    ("f1_val", "Pixel F1, val threshold (chosen on held-out normal images only)"),
    ("f1_native", "Pixel F1, the method's own threshold"),
    ("pixel_auroc", "Pixel AUROC"),
    ("aupro", "AUPRO (to 30 % FPR, normalised)"),
    ("image_auroc", "Image AUROC (map maximum as score)"),
)

FALLBACK_MARK = "†"
RANDOM_MARK = "‡"
NOTE_MARK = "§"


def load_rows(store: RunStore) -> pd.DataFrame:
    """All result rows of a run as a flat table (one metric per column)."""
    records = []
    for row in store.iter_results():
        flat = {key: row.get(key) for key in ("method", "dataset", "class", "setting", "profile")}
        flat.update(row.get("metrics", {}))
        flat["notes"] = row.get("notes", {})
        flat["gray_input"] = row.get("gray_input")
        flat["setting_name"] = row.get("setting_name", row.get("setting"))
        records.append(flat)
    return pd.DataFrame.from_records(records)


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{100 * float(value):.1f}"


def _method_marks(describe: dict[str, Any]) -> str:
    marks = ""
    if describe.get("fallback"):
        marks += FALLBACK_MARK
    if describe.get("pretrained") is False:
        marks += RANDOM_MARK
    if describe.get("note"):
        marks += NOTE_MARK
    return marks


def _method_records(store: RunStore) -> dict[str, dict[str, Any]]:
    """Per method: its first fit record, with times averaged over classes.

    Backbone and profile do not vary by class; training time and latency are the mean over
    classes and peak memory the maximum.
    """
    records: dict[str, dict[str, Any]] = {}
    per_class: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in store.iter_results():
        records.setdefault(row["method"], {"describe": row.get("describe", {}), **row["fit"]})
        per_class[row["method"]][row["class"]] = row["fit"]
    for method, fits in per_class.items():
        for key in ("fit_seconds", "latency_ms_median", "latency_ms_p95"):
            values = [fit[key] for fit in fits.values() if fit.get(key) is not None]
            records[method][key] = float(np.mean(values)) if values else None
        memory = [f["fit_peak_memory_mib"] for f in fits.values() if f.get("fit_peak_memory_mib")]
        records[method]["fit_peak_memory_mib"] = max(memory) if memory else None
        records[method]["classes"] = len(fits)
    return records


def metric_table(
    frame: pd.DataFrame, metric: str, methods: list[str], labels: dict[str, str]
) -> tuple[str, list[str]]:
    """One ``classes x methods`` markdown table with a mean row and the best value in bold.

    Returns:
        The table and the reasons for each ``n/a`` cell (for a footnote).
    """
    classes = list(dict.fromkeys(frame["class"]))
    pivot = frame.pivot_table(index="class", columns="method", values=metric, aggfunc="first")
    pivot = pivot.reindex(index=classes, columns=methods)
    reasons = []
    for _, row in frame.iterrows():
        value = row.get(metric)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            reason = (row["notes"] or {}).get(metric, "undefined")
            reasons.append(f"{row['method']} on {row['class']}: {reason}")
    # NOTE: the mean skips classes where a metric is undefined; the footnote names them.
    means = pivot.mean(axis=0, skipna=True)
    body = []
    for class_name, values in [*pivot.iterrows(), ("**mean**", means)]:
        cells = [_format(values.get(method)) for method in methods]
        finite = [v for v in (values.get(m) for m in methods) if v is not None and np.isfinite(v)]
        best = max(finite) if finite else None
        cells = [
            f"**{cell}**"
            if best is not None and cell != "n/a" and _format(best) == cell and len(methods) > 1
            else cell
            for cell in cells
        ]
        body.append([class_name, *cells])
    headers = ["class", *[labels[method] for method in methods]]
    table = tabulate(
        body,
        headers=headers,
        tablefmt="github",
        disable_numparse=True,
        colalign=("left",) + ("right",) * len(methods),
    )
    return table, reasons


def timing_table(
    records: dict[str, dict[str, Any]], methods: list[str], labels: dict[str, str]
) -> str:
    """Training time, latency, memory and parameter count per method."""
    body = []
    for method in methods:
        record = records.get(method, {})
        body.append(
            [
                labels[method],
                record.get("profile", "?"),
                _number(record.get("fit_seconds"), "{:.1f}"),
                _number(record.get("latency_ms_median"), "{:.1f}"),
                _number(record.get("latency_ms_p95"), "{:.1f}"),
                record.get("latency_device", "?"),
                _number(record.get("fit_peak_memory_mib"), "{:.0f}"),
                _number(record.get("parameters"), "{:,}"),
            ]
        )
    headers = [
        "method",
        "profile",
        "train s (mean per class)",
        "latency ms (median, mean per class)",
        "latency ms (p95)",
        "device",
        "peak memory MiB (training)",
        "parameters",
    ]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def _number(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return pattern.format(value)


def methods_table(
    records: dict[str, dict[str, Any]], methods: list[str], labels: dict[str, str]
) -> str:
    """Profile, backbone and weight provenance per method."""
    body = []
    for method in methods:
        describe = records.get(method, {}).get("describe", {}) or {}
        pretrained = describe.get("pretrained")
        weights = {True: "pretrained", False: "**random (not the real baseline)**"}.get(
            pretrained, "none needed"
        )
        if describe.get("weights"):
            weights += f" ({describe['weights']})"
        backbone = describe.get("backbone") or "—"
        if describe.get("fallback"):
            backbone += f" instead of {describe.get('requested_backbone', '?')}"
        body.append(
            [
                labels[method],
                records.get(method, {}).get("profile", "?"),
                backbone,
                weights,
                describe.get("note", ""),
            ]
        )
    return tabulate(
        body,
        headers=["method", "profile", "backbone", "weights", "note"],
        tablefmt="github",
        disable_numparse=True,
    )


def write_figures(
    store: RunStore, frame: pd.DataFrame, methods: list[str], out_dir: Path
) -> list[tuple[str, Path]]:
    """One PNG per dataset x class x setting: input, each method's map, ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    keys = frame[["dataset", "class", "setting"]].drop_duplicates().itertuples(index=False)
    for dataset, class_name, setting in keys:
        samples = store.read_arrays(store.samples_path(dataset, class_name, setting))
        if samples is None or len(samples["images"]) == 0:
            continue
        maps = {
            m: store.read_arrays(store.maps_path(m, dataset, class_name, setting)) for m in methods
        }
        maps = {m: value["maps"] for m, value in maps.items() if value is not None}
        rows = len(samples["images"])
        columns = 2 + len(maps)
        figure, axes = plt.subplots(
            rows, columns, figsize=(2.0 * columns, 2.0 * rows), squeeze=False
        )
        for r in range(rows):
            image = samples["images"][r].transpose(1, 2, 0)
            panels = [("input", image, None)]
            panels += [(m, maps[m][r], "jet") for m in maps if r < len(maps[m])]
            panels.append(("ground truth", samples["masks"][r], "gray"))
            for c, (title, panel, cmap) in enumerate(panels):
                axis = axes[r][c]
                axis.imshow(panel, cmap=cmap)
                axis.set_xticks([])
                axis.set_yticks([])
                if r == 0:
                    axis.set_title(title, fontsize=8)
        figure.tight_layout()
        path = out_dir / f"{dataset}-{class_name}-{setting}.png".replace("/", "_")
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=80)
        plt.close(figure)
        figures.append((f"{dataset} / {class_name} / {setting}", path))
    return figures


def render_report(store: RunStore, figure_dir: Path, relative_to: Path) -> str:
    """The markdown text of a run's report; figures are written into ``figure_dir``."""
    manifest = store.read_manifest() or {}
    frame = load_rows(store)
    config = manifest.get("config", {})
    lines = [f"# DefectBench report — {manifest.get('run_id', store.root.name)}", ""]
    lines += [
        f"* dataset: `{config.get('dataset')}`"
        + (f" at `{config['data_root']}`" if config.get("data_root") else ""),
        f"* profile: `{config.get('profile')}`, seed {config.get('seed')}, "
        f"evaluation at {config.get('image_size')} px",
        f"* machine: {describe_machine(manifest.get('hardware', {}))}; "
        f"device `{manifest.get('device')}`",
        f"* git revision: `{manifest.get('git_revision')}`; created {manifest.get('created')}",
        "",
    ]
    if frame.empty:
        lines.append("No finished results yet.")
        return "\n".join(lines) + "\n"

    methods = list(dict.fromkeys(config.get("methods") or frame["method"]))
    methods = [m for m in methods if m in set(frame["method"])]
    records = _method_records(store)
    labels = {
        m: f"{m}{_method_marks(records.get(m, {}).get('describe', {}) or {})}" for m in methods
    }

    lines += ["## Methods", "", methods_table(records, methods, labels), ""]
    lines += [
        f"{FALLBACK_MARK} backbone is the offline fallback, not the original one; "
        f"{RANDOM_MARK} backbone weights were NOT pretrained; {NOTE_MARK} see the note above.",
        "",
    ]
    missing = [
        setting for setting in config.get("settings", []) if setting not in set(frame["setting"])
    ]
    if missing:
        lines += [f"Unfinished settings (no rows yet): {', '.join(missing)}.", ""]

    for (dataset, setting), part in frame.groupby(["dataset", "setting"], sort=False):
        lines += [f"## {dataset} — setting `{setting}`", ""]
        if setting != "clean" and part["gray_input"].fillna(False).all():
            lines += ["All test images are gray: hue shifts are a no-op on them.", ""]
        for metric, title in METRICS:
            if metric not in part or part[metric].isna().all() and metric == "f1_native":
                if metric == "f1_native":
                    lines += [
                        f"### {title}",
                        "",
                        "No method in this run has a native threshold.",
                        "",
                    ]
                continue
            table, reasons = metric_table(part, metric, methods, labels)
            lines += [f"### {title} (%)", "", table, ""]
            if reasons:
                lines += ["n/a: " + "; ".join(sorted(set(reasons))) + ".", ""]

    lines += ["## Timing", "", timing_table(records, methods, labels), ""]
    lines += [
        "Latency: batch 1, after warm-up, device synchronised. Memory: peak resident memory of "
        "the process while training (CPU) or peak allocated CUDA memory.",
        "",
    ]
    figures = write_figures(store, frame, methods, figure_dir)
    if figures:
        lines += ["## Anomaly maps", ""]
        for caption, path in figures:
            relative = Path(_relpath(path, relative_to))
            lines += [
                f"![{caption}]({relative.as_posix()})",
                "",
                f"*{caption}: input (after the setting's perturbation), each method's map "
                "(no threshold, own colour scale), ground truth.*",
                "",
            ]
    return "\n".join(lines) + "\n"


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write ``report.md`` (and ``figures/``) for the run in ``run_dir``; return its path."""
    store = RunStore(run_dir)
    if store.read_manifest() is None:
        raise ValueError(f"{run_dir} is not a run folder (no readable manifest.json)")
    output = output or store.root / "report.md"
    figure_dir = output.parent / "figures"
    text = render_report(store, figure_dir, output.parent)
    atomic_write_bytes(output, text.encode("utf-8"))
    logger.info("report written to %s", output)
    return output


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean of each metric per method over classes (for quick printing)."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for key, value in row.get("metrics", {}).items():
            if value is not None and math.isfinite(value):
                sums[row["method"]][key].append(value)
    return {m: {k: float(np.mean(v)) for k, v in d.items()} for m, d in sums.items()}
