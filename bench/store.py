"""The run store: a folder per run with a manifest, result rows, models and sample maps.

Layout of ``runs/<run-id>/``::

    manifest.json                                  arguments, seeds, versions, hardware,
                                                   each trained method's backbone and weights
    results/<method>/<dataset>/<class>/<setting>.json   one row of metrics per job
    models/<method>/<dataset>/<class>/              saved model + model.json (fit record)
    scratch/<method>/<dataset>/<class>/             checkpoints while a model trains
    samples/<dataset>/<class>/<setting>.npz         test inputs and masks shown in figures
    maps/<method>/<dataset>/<class>/<setting>.npz   the methods' raw maps for those inputs
                                                   (the row beside them holds the val threshold)

Every file is written to a temporary name and renamed, so a file that exists is complete;
a file that cannot be parsed (an interrupted copy, a disk error) is treated as missing and
its job is redone.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODEL_RECORD = "model.json"


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (NaN written as ``NaN``, which Python's json reads back)."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path) -> Any | None:
    """Return the parsed JSON at ``path``, or ``None`` when absent or corrupt (logged)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning(
            "ignoring corrupt run-store file %s (%s); its job will be redone", path, error
        )
        return None


def _safe(part: str) -> str:
    """Make a method key or class name usable as one path component."""
    return part.replace("/", "_").replace("\\", "_")


class RunStore:
    """Reads and writes one run folder.

    Args:
        root: The run folder (``runs/<run-id>``); created when missing.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- manifest --------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        """Where the manifest lives."""
        return self.root / MANIFEST

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or ``None`` when the folder holds no (readable) run."""
        return read_json(self.manifest_path)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest atomically."""
        atomic_write_json(self.manifest_path, manifest)

    def record_method(self, key: str, facts: dict[str, Any]) -> None:
        """Add what a trained method is (backbone, pretrained weights, profile) to the manifest.

        Args:
            key: The method spec key, e.g. ``ours(components=G.S)``.
            facts: Plain data; it replaces an earlier entry of the same key.

        Raises:
            ValueError: If the folder has no manifest yet (the run was not opened).
        """
        manifest = self.read_manifest()
        if manifest is None:
            message = f"{self.manifest_path}: no readable manifest to add method {key!r} to"
            raise ValueError(message)
        if manifest.get("methods", {}).get(key) == facts:
            return
        manifest.setdefault("methods", {})[key] = facts
        self.write_manifest(manifest)

    # --- results ---------------------------------------------------------------------

    def result_path(self, method: str, dataset: str, class_name: str, setting: str) -> Path:
        """File of one result row; ``setting`` is a label such as ``hard`` or ``general@5``."""
        return (
            self.root
            / "results"
            / _safe(method)
            / _safe(dataset)
            / _safe(class_name)
            / f"{_safe(setting)}.json"
        )

    def read_result(
        self, method: str, dataset: str, class_name: str, setting: str
    ) -> dict[str, Any] | None:
        """A finished row, or ``None`` when the job has not finished (or its file is corrupt)."""
        row = read_json(self.result_path(method, dataset, class_name, setting))
        if row is None:
            return None
        if not isinstance(row, dict) or "metrics" not in row or "method" not in row:
            logger.warning(
                "ignoring incomplete result row for %s/%s/%s", method, class_name, setting
            )
            return None
        return row

    def write_result(self, row: dict[str, Any]) -> None:
        """Write one row; its keys ``method``, ``dataset``, ``class``, ``setting`` place it."""
        path = self.result_path(row["method"], row["dataset"], row["class"], row["setting"])
        atomic_write_json(path, row)

    def iter_results(self) -> Iterator[dict[str, Any]]:
        """Every finished row in the store, in a stable order."""
        folder = self.root / "results"
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("*.json")):
            row = read_json(path)
            if isinstance(row, dict) and "metrics" in row:
                yield row

    # --- models ----------------------------------------------------------------------

    def model_dir(self, method: str, dataset: str, class_name: str) -> Path:
        """Folder of a trained model."""
        return self.root / "models" / _safe(method) / _safe(dataset) / _safe(class_name)

    def scratch_dir(self, method: str, dataset: str, class_name: str) -> Path:
        """Folder for checkpoints while a model trains (kept until the model is saved)."""
        path = self.root / "scratch" / _safe(method) / _safe(dataset) / _safe(class_name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def read_model_record(self, method: str, dataset: str, class_name: str) -> dict | None:
        """The record written after a model was saved completely, else ``None``."""
        return read_json(self.model_dir(method, dataset, class_name) / MODEL_RECORD)

    def write_model_record(
        self, method: str, dataset: str, class_name: str, record: dict[str, Any]
    ) -> None:
        """Mark a saved model as complete (written last, after the model files)."""
        atomic_write_json(self.model_dir(method, dataset, class_name) / MODEL_RECORD, record)

    # --- figures ---------------------------------------------------------------------

    def samples_path(self, dataset: str, class_name: str, setting: str) -> Path:
        """Inputs and masks of the test images that figures show."""
        return self.root / "samples" / _safe(dataset) / _safe(class_name) / f"{_safe(setting)}.npz"

    def maps_path(self, method: str, dataset: str, class_name: str, setting: str) -> Path:
        """One method's maps for the figure inputs."""
        return (
            self.root
            / "maps"
            / _safe(method)
            / _safe(dataset)
            / _safe(class_name)
            / f"{_safe(setting)}.npz"
        )

    def write_arrays(self, path: Path, **arrays: np.ndarray) -> None:
        """Save arrays as one compressed ``.npz`` atomically."""
        import io

        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    def read_arrays(self, path: Path) -> dict[str, np.ndarray] | None:
        """Load an ``.npz`` written by :meth:`write_arrays`; ``None`` when absent or corrupt."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError) as error:
            logger.warning("ignoring corrupt arrays %s (%s)", path, error)
            return None
