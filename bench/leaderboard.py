"""Merge finished runs into one markdown leaderboard, each row linked to its run's manifest.

Runs share a table only when their numbers are comparable: the same dataset, profile,
evaluation resolution and classes; within that, each setting gets its own table.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.environment import describe_machine
from bench.report import (
    THRESHOLD_FREE,
    Footnotes,
    RunView,
    finite,
    markdown_table,
    number,
    percent,
)
from bench.store import RunStore, atomic_write_bytes

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = Path("reports") / "LEADERBOARD.md"

COMPATIBILITY: tuple[tuple[str, str], ...] = (
    ("dataset", "dataset"),
    ("profile", "profile"),
    ("image_size", "evaluation resolution"),
    ("classes", "classes"),
)
"""Facts two runs must share to sit in one table: key and how messages name it."""


class IncompatibleRunsError(ValueError):
    """Raised when runs that cannot be compared are given without ``separate``."""


def compatibility(view: RunView) -> dict[str, Any]:
    """The facts of a run that decide whom it may be compared with."""
    config = view.manifest.get("config", {})
    return {
        "dataset": config.get("dataset"),
        "profile": config.get("profile"),
        "image_size": config.get("image_size"),
        "classes": tuple(sorted(set(view.frame["class"]))),
    }


def differences(first: RunView, second: RunView) -> str:
    """Why two runs cannot share a table, e.g. ``profile 'quick' vs 'paper'``."""
    a, b = compatibility(first), compatibility(second)
    parts = []
    for key, name in COMPATIBILITY:
        if a[key] != b[key]:
            left, right = (", ".join(v) if key == "classes" else v for v in (a[key], b[key]))
            parts.append(f"{name} {left!r} vs {right!r}")
    return "; ".join(parts)


def open_runs(run_dirs: Sequence[Path]) -> tuple[list[RunView], list[Path]]:
    """Read every run folder.

    Returns:
        The runs with finished rows, and the folders that have none yet.

    Raises:
        ValueError: If no folder is given, a folder is given twice, a folder is not a run
            folder, or no run has a finished row.
    """
    if not run_dirs:
        raise ValueError("no run folders given; expected one or more, e.g. runs/*")
    seen: dict[Path, Path] = {}
    for run_dir in run_dirs:
        resolved = Path(run_dir).resolve()
        if resolved in seen:
            raise ValueError(f"run folder {run_dir} is given twice (also as {seen[resolved]})")
        seen[resolved] = Path(run_dir)
    views, empty = [], []
    for run_dir in run_dirs:
        view = RunView.open(RunStore(Path(run_dir)))
        if view.frame.empty:
            logger.warning("%s has no finished results yet; left out of the leaderboard", run_dir)
            empty.append(Path(run_dir))
        else:
            views.append(view)
    if not views:
        names = ", ".join(str(path) for path in run_dirs)
        raise ValueError(f"none of the runs has finished results yet: {names}")
    return views, empty


def group_runs(views: Sequence[RunView], separate: bool) -> list[list[RunView]]:
    """Runs grouped by :func:`compatibility`, in the order given.

    Raises:
        IncompatibleRunsError: If there are two groups or more and ``separate`` is false;
            the message names two runs and what differs.
    """
    groups: dict[tuple, list[RunView]] = {}
    for view in views:
        key = tuple(compatibility(view)[name] for name, _ in COMPATIBILITY)
        groups.setdefault(key, []).append(view)
    result = list(groups.values())
    if len(result) > 1 and not separate:
        first, second = result[0][0], result[1][0]
        message = (
            f"runs {first.store.root} and {second.store.root} cannot share a leaderboard: "
            f"{differences(first, second)}; expected the same dataset, profile, evaluation "
            "resolution and classes. Pass --separate to give each its own tables, or leave "
            "one out."
        )
        raise IncompatibleRunsError(message)
    return result


def render_leaderboard(
    views: Sequence[RunView], empty: Sequence[Path], output_dir: Path, separate: bool = False
) -> str:
    """The markdown text of the leaderboard.

    Args:
        views: Runs with finished rows (see :func:`open_runs`).
        empty: Run folders left out for having no rows yet (named in the text).
        output_dir: Folder the markdown file will be in (links are relative to it).
        separate: Give incompatible runs their own tables instead of refusing them.

    Raises:
        IncompatibleRunsError: See :func:`group_runs`.
    """
    groups = group_runs(views, separate)
    lines = ["# DefectBench leaderboard", ""]
    lines += [
        f"Merged from {len(views)} run(s). Ranked by mean pixel F1 at the **val** threshold "
        "(chosen without any test label); **oracle** is an upper bound (the threshold is "
        "chosen on the test labels); **native** is the method's own threshold. All numbers "
        "are means over classes, in %. Each row links to its run's manifest (versions, "
        "hardware, arguments, each method's backbone and weights).",
        "",
    ]
    if empty:
        names = ", ".join(f"`{path}`" for path in empty)
        lines += [f"Left out (no finished results yet): {names}.", ""]
    lines += runs_table(views, output_dir)
    for index, group in enumerate(groups):
        facts = compatibility(group[0])
        lines += [
            f"## {facts['dataset']} · profile `{facts['profile']}` · "
            f"{facts['image_size']} px · classes: {', '.join(facts['classes'])}",
            "",
        ]
        if index > 0:
            reason = differences(groups[0][0], group[0])
            lines += [f"Kept apart from the first tables: {reason}.", ""]
        settings = list(dict.fromkeys(s for view in group for s in view.settings))
        for setting in settings:
            lines += [f"### setting `{setting}`", ""]
            lines += board_table(group, setting, facts["classes"], output_dir)
    return "\n".join(lines).rstrip("\n") + "\n"


def runs_table(views: Sequence[RunView], output_dir: Path) -> list[str]:
    """One line per run: link to its manifest, when and where it ran."""
    body = []
    for view in views:
        manifest = view.manifest
        config = manifest.get("config", {})
        body.append(
            [
                _manifest_link(view, output_dir),
                config.get("dataset"),
                config.get("profile"),
                f"{config.get('seed')}",
                f"`{manifest.get('git_revision')}`",
                describe_machine(manifest.get("hardware", {})),
                manifest.get("device"),
                manifest.get("created"),
            ]
        )
    headers = ["run", "dataset", "profile", "seed", "git", "machine", "device", "created"]
    return ["## Runs", "", markdown_table(headers, body, text_columns=len(headers)), ""]


def board_table(
    group: Sequence[RunView], setting: str, classes: tuple[str, ...], output_dir: Path
) -> list[str]:
    """Every method of every run of one group under one setting, ranked."""
    entries = []
    footnotes = Footnotes()
    left_out = []
    for view in group:
        part = view.frame[view.frame["setting"] == setting]
        for method in view.methods:
            rows = part[part["method"] == method]
            if rows.empty:
                continue
            if len(set(rows["class"])) < len(classes):
                left_out.append(
                    f"{method} in {view.manifest.get('run_id')} "
                    f"({len(set(rows['class']))} of {len(classes)} classes finished)"
                )
                continue
            means = {metric: rows[metric].mean() for metric in _METRICS}
            entries.append((view, method, rows, means))
    entries.sort(key=_rank_key)

    body = []
    for rank, (view, method, rows, means) in enumerate(entries, start=1):
        label = view.labels[method]
        for metric in _METRICS:
            if not finite(means[metric]):
                reasons = {n.get(metric) for n in rows["notes"] if n.get(metric)}
                footnotes.add(label, "; ".join(sorted(reasons)) or "undefined on every class")
        record = view.records[method]
        body.append(
            [
                f"{rank}",
                label,
                _manifest_link(view, output_dir),
                _weights(record["describe"]),
                *[percent(means[metric]) for metric in _METRICS],
                number(record["latency_ms_median"], "{:.1f}"),
            ]
        )
    titles = {"f1_val": "F1 val", "f1_oracle": "F1 oracle (upper bound)", "f1_native": "F1 native"}
    titles.update({"pixel_auroc": "pixel AUROC", "aupro": "AUPRO", "image_auroc": "image AUROC"})
    headers = ["rank", "method", "run", "backbone, weights"]
    headers += [*[titles[m] for m in _METRICS], "latency ms (median)"]
    table = markdown_table(headers, body, text_columns=4)
    lines = [table, "", *footnotes.lines()]
    if left_out:
        lines += [f"Left out (unfinished): {'; '.join(left_out)}.", ""]
    return lines


_METRICS: tuple[str, ...] = (
    "f1_val",
    "f1_oracle",
    "f1_native",
    *[metric for metric, _ in THRESHOLD_FREE],
)
"""Leaderboard columns; the first decides the rank (the honest policy), the second breaks ties."""


def _rank_key(entry: tuple) -> tuple[float, float, str]:
    _, method, _, means = entry
    val, oracle = means["f1_val"], means["f1_oracle"]
    return (-val if finite(val) else math.inf, -oracle if finite(oracle) else math.inf, method)


def _weights(describe: dict[str, Any]) -> str:
    backbone = describe.get("backbone")
    if not backbone:
        return "none needed"
    weights = {True: "pretrained", False: "random weights"}.get(describe.get("pretrained"), "?")
    fallback = " (offline fallback)" if describe.get("fallback") else ""
    return f"{backbone}{fallback}, {weights}"


def _manifest_link(view: RunView, output_dir: Path) -> str:
    target = os.path.relpath(view.store.manifest_path.resolve(), Path(output_dir).resolve())
    name = view.manifest.get("run_id", view.store.root.name)
    return f"[{name}]({Path(target).as_posix()})"


def write_leaderboard(
    run_dirs: Sequence[Path], output: Path = DEFAULT_OUTPUT, separate: bool = False
) -> Path:
    """Merge runs into ``output`` (default ``reports/LEADERBOARD.md``).

    Args:
        run_dirs: Run folders.
        output: Markdown file to write.
        separate: Give incompatible runs their own tables instead of refusing them.

    Returns:
        The path written.

    Raises:
        ValueError: See :func:`open_runs`.
        IncompatibleRunsError: See :func:`group_runs`.
    """
    views, empty = open_runs(run_dirs)
    output = Path(output)
    text = render_leaderboard(views, empty, output.parent, separate)
    atomic_write_bytes(output, text.encode("utf-8"))
    logger.info("leaderboard of %d run(s) written to %s", len(views), output)
    return output
