"""Runs methods over a dataset's classes and settings, writing every result to the run store.

The work is split into jobs: one *fit* per method x class (on clean normal images) and one
*evaluation* per method x class x setting. A job whose output is already in the store is
skipped, so re-running an interrupted command resumes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench import environment, metrics, timing
from bench.data import DATASETS, ClassData, DatasetAdapter, stack_images, stack_masks
from bench.method import FitContext, Method, MethodSpec
from bench.settings import get_setting
from bench.store import RunStore

logger = logging.getLogger(__name__)

FIGURE_SAMPLES = 3
"""Defective test images per class whose maps are kept for figures."""

PREDICT_BATCH = 8

LATENCY_IMAGES = 4
"""Test images cycled through when latency is measured."""


@dataclass(frozen=True)
class SettingSpec:
    """A perturbation setting at a severity; ``label`` names it in the store and reports."""

    name: str
    severity: int | None = None

    @property
    def label(self) -> str:
        """``hard`` at the default severity, ``general@5`` otherwise."""
        return self.name if self.severity is None else f"{self.name}@{self.severity}"


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's results (and hence its id).

    Attributes:
        methods: Methods with their options.
        dataset: Registered dataset name.
        data_root: Dataset root; ``None`` for datasets that have a default (``default``).
        classes: Classes to use; ``None`` for the dataset's default selection.
        settings: Perturbation settings applied to test images.
        profile: Schedule name passed to every method.
        seed: Seed for training and for perturbation parameters.
        image_size: Evaluation resolution (square); images load at this size.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """

    methods: tuple[MethodSpec, ...]
    dataset: str = "default"
    data_root: str | None = None
    classes: tuple[str, ...] | None = None
    settings: tuple[SettingSpec, ...] = (SettingSpec("clean"),)
    profile: str = "quick"
    seed: int = 0
    image_size: int = 256
    device: str = "cpu"

    def identity(self) -> dict[str, Any]:
        """The fields that make two runs the same run (device excluded: results agree)."""
        data_root = str(Path(self.data_root).resolve()) if self.data_root else None
        return {
            "methods": [spec.key for spec in self.methods],
            "dataset": self.dataset,
            "data_root": data_root,
            "classes": list(self.classes) if self.classes else None,
            "settings": [setting.label for setting in self.settings],
            "profile": self.profile,
            "seed": self.seed,
            "image_size": self.image_size,
        }

    def run_id(self) -> str:
        """A readable, deterministic id: re-running the same command finds the same run."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()
        return f"{self.dataset}-{self.profile}-{digest[:8]}"


@dataclass
class Reporter:
    """How the runner tells the outside world what it does (the CLI draws rich bars).

    Attributes:
        start_task: ``start_task(description, total) -> task_id``.
        advance: ``advance(task_id, completed, total)``.
        finish_task: ``finish_task(task_id)``.
        job_done: Called with a one-line summary of each finished job.
    """

    start_task: Callable[[str, int], Any] = lambda description, total: None
    advance: Callable[[Any, int, int], None] = lambda task, completed, total: None
    finish_task: Callable[[Any], None] = lambda task: None
    job_done: Callable[[str], None] = lambda line: None


@dataclass
class _MethodState:
    """A trained method and the facts recorded about its training."""

    method: Method
    record: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; a CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        message = f"--device {name!r}: expected auto, cpu, cuda or cuda:N"
        raise ValueError(message) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def dataset_adapter(config: RunConfig) -> DatasetAdapter:
    """The dataset adapter a run configuration names, with its root and classes.

    Raises:
        DatasetError: When the adapter refuses its arguments (e.g. no root where one is
            needed).
    """
    adapter_cls = DATASETS.get(config.dataset)
    classes = list(config.classes) if config.classes else None
    if config.data_root is None:
        return adapter_cls(root=None, classes=classes)  # type: ignore[arg-type]
    return adapter_cls(root=Path(config.data_root), classes=classes)


def build_manifest(config: RunConfig, run_id: str) -> dict[str, Any]:
    """The manifest written when a run starts."""
    return {
        "run_id": run_id,
        "config": config.identity(),
        "device": config.device,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": environment.package_versions(),
        "git_revision": environment.git_revision(),
        "hardware": environment.hardware(),
    }


def open_store(config: RunConfig, runs_dir: Path, run_id: str | None = None) -> RunStore:
    """Create the run folder (or reopen it) and check it belongs to this configuration."""
    run_id = run_id or config.run_id()
    store = RunStore(Path(runs_dir) / run_id)
    manifest = store.read_manifest()
    if manifest is not None and manifest.get("config") != config.identity():
        message = (
            f"run folder {store.root} holds a run with other arguments "
            f"({manifest.get('config')}); choose another --run-id or delete the folder"
        )
        raise ValueError(message)
    if manifest is None:
        store.write_manifest(build_manifest(config, run_id))
    else:
        manifest.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        manifest["hardware_last"] = environment.hardware()
        store.write_manifest(manifest)
    return store


def _resize_maps(anomaly_maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``B x H x W`` maps to ``B x size x size`` (the evaluation grid)."""
    if tuple(anomaly_maps.shape[-2:]) == (size, size):
        return anomaly_maps.float()
    resized = F.interpolate(
        anomaly_maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False
    )
    return resized[:, 0]


def predict_maps(
    method: Method,
    images: torch.Tensor,
    size: int,
    batch_size: int = PREDICT_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run ``method.predict`` in batches; returns ``N x size x size`` float32 on the CPU.

    ``progress(done, total)`` is called with the number of images scored after each batch.
    """
    outputs = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(method.device)
            anomaly_maps = method.predict(batch)
            if anomaly_maps.ndim != 3 or anomaly_maps.shape[0] != batch.shape[0]:
                message = (
                    f"method {method.name!r} returned maps of shape {tuple(anomaly_maps.shape)}"
                    f" for {batch.shape[0]} images; expected B x H x W"
                )
                raise ValueError(message)
            outputs.append(_resize_maps(anomaly_maps.detach().cpu(), size))
            if progress is not None:
                progress(min(start + batch_size, images.shape[0]), images.shape[0])
    return torch.cat(outputs) if outputs else torch.empty(0, size, size)


def _parameter_count(method: Method) -> int:
    modules = [value for value in vars(method).values() if isinstance(value, torch.nn.Module)]
    return timing.count_parameters(modules) if modules else 0


def _peak_mib(stats: timing.MemoryStats) -> float:
    """Peak CUDA allocation on a GPU, else the process's peak resident memory."""
    return stats.cuda_peak_mib if stats.cuda_peak_mib is not None else stats.peak_rss_mib


def _added_mib(stats: timing.MemoryStats) -> float:
    """Peak CUDA allocation on a GPU, else the rise of resident memory during the step.

    The process's peak on a CPU includes every library and model loaded before the step
    (the same for all methods of a run); the rise is what the step itself took, a lower
    bound where it reused memory that earlier steps had freed.
    """
    return stats.cuda_peak_mib if stats.cuda_peak_mib is not None else stats.rss_increase_mib


def _json_number(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else float("nan")


class Runner:
    """Executes a :class:`RunConfig` into a :class:`RunStore`.

    Args:
        config: What to run.
        store: Where results go (see :func:`open_store`).
        reporter: Progress and per-job callbacks.
    """

    def __init__(self, config: RunConfig, store: RunStore, reporter: Reporter | None = None):
        self.config = config
        self.store = store
        self.reporter = reporter or Reporter()
        self.device = resolve_device(config.device)

    def dataset(self) -> DatasetAdapter:
        """The configured dataset adapter."""
        return dataset_adapter(self.config)

    def run(self) -> RunStore:
        """Do every job that is not finished yet; return the store."""
        adapter = self.dataset()
        dataset = self.config.dataset
        for class_name in adapter.classes():
            if self._class_finished(class_name):
                logger.info("%s/%s: all jobs finished earlier, skipped", dataset, class_name)
                continue
            class_data = adapter.load_class(class_name)
            self._run_class(class_data)
        return self.store

    def _class_finished(self, class_name: str) -> bool:
        return all(
            self.store.read_result(spec.key, self.config.dataset, class_name, setting.label)
            is not None
            for spec in self.config.methods
            for setting in self.config.settings
        )

    def _run_class(self, class_data: ClassData) -> None:
        config = self.config
        size = config.image_size
        class_name = class_data.class_name
        test_ids = [sample.sample_id for sample in class_data.test]
        test_images = stack_images(class_data.test, size)
        test_masks = stack_masks(class_data.test, size)
        figure_index = [i for i, s in enumerate(class_data.test) if s.label == 1][:FIGURE_SAMPLES]
        perturbed: dict[str, torch.Tensor] = {}

        for setting in config.settings:
            images = self._perturb(test_images, setting, test_ids)
            perturbed[setting.label] = images
            samples_path = self.store.samples_path(config.dataset, class_name, setting.label)
            if self.store.read_arrays(samples_path) is None:
                self.store.write_arrays(
                    samples_path,
                    images=(images[figure_index] * 255).round().to(torch.uint8).numpy(),
                    masks=test_masks[figure_index].numpy(),
                    ids=np.array([test_ids[i] for i in figure_index]),
                )

        for spec in config.methods:
            pending = [
                setting
                for setting in config.settings
                if self.store.read_result(spec.key, config.dataset, class_name, setting.label)
                is None
            ]
            if not pending:
                continue
            state = self._fitted(spec, class_data)
            val_maps = predict_maps(state.method, stack_images(class_data.val, size), size)
            metrics.validate_maps(
                val_maps, spec.key, [sample.sample_id for sample in class_data.val]
            )
            val_threshold = metrics.val_threshold(val_maps) if len(val_maps) else None
            if state.record.get("val_threshold") != _json_number(val_threshold):
                # Kept with the model so that `bench predict` can binarise maps the same way.
                state.record["val_threshold"] = _json_number(val_threshold)
                self.store.write_model_record(spec.key, config.dataset, class_name, state.record)
            for setting in pending:
                self._evaluate(
                    spec,
                    state,
                    class_data,
                    setting,
                    perturbed[setting.label],
                    test_masks,
                    val_threshold,
                    figure_index,
                )

    def _perturb(
        self, images: torch.Tensor, setting: SettingSpec, sample_ids: Sequence[str]
    ) -> torch.Tensor:
        from perturbations import DEFAULT_SEVERITY, apply_setting

        severity = setting.severity if setting.severity is not None else DEFAULT_SEVERITY
        return apply_setting(
            images,
            get_setting(setting.name),
            list(sample_ids),
            seed=self.config.seed,
            severity=severity,
        )

    def _fitted(self, spec: MethodSpec, class_data: ClassData) -> _MethodState:
        """Load the method's saved model for this class, or train and save it."""
        config = self.config
        class_name = class_data.class_name
        method = spec.build(config.profile)
        method.to(self.device)
        model_dir = self.store.model_dir(spec.key, config.dataset, class_name)
        record = self.store.read_model_record(spec.key, config.dataset, class_name)
        if record is not None:
            try:
                method.load(model_dir)
                method.to(self.device)
                logger.info(
                    "%s on %s/%s: reusing saved model", spec.key, config.dataset, class_name
                )
                return _MethodState(method, record)
            except Exception as error:  # noqa: BLE001 - any damage means: train again
                logger.warning("saved model in %s unusable (%s); training again", model_dir, error)

        train_images = stack_images(class_data.train, config.image_size)
        task = self.reporter.start_task(f"train {spec.key} on {class_name}", 1)

        def progress(completed: int, total: int, description: str) -> None:
            self.reporter.advance(task, completed, total)

        context = FitContext(
            device=self.device,
            seed=config.seed,
            profile=config.profile,
            scratch_dir=self.store.scratch_dir(spec.key, config.dataset, class_name),
            progress=progress,
            class_name=class_name,
        )
        torch.manual_seed(config.seed)
        with timing.PeakMemory(self.device) as fit_memory:
            started = time.perf_counter()
            method.fit(train_images, context)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            fit_seconds = time.perf_counter() - started
        self.reporter.finish_task(task)

        latency = timing.measure_latency(
            lambda batch: _predict_no_grad(method, batch),
            stack_images(class_data.test[:LATENCY_IMAGES], config.image_size),
            self.device,
        )
        model_dir.mkdir(parents=True, exist_ok=True)
        method.save(model_dir)
        record = {
            "method": spec.key,
            "method_name": spec.name,
            "options": dict(spec.options),
            "profile": config.profile,
            "fit_seconds": fit_seconds,
            "fit_peak_memory_mib": _peak_mib(fit_memory.stats),
            "fit_added_memory_mib": _added_mib(fit_memory.stats),
            "memory_kind": "cuda allocated" if self.device.type == "cuda" else "process RSS",
            "latency_ms_median": latency.median_ms,
            "latency_ms_p95": latency.p95_ms,
            "latency_device": str(self.device),
            "parameters": _parameter_count(method),
            "native_threshold": _json_number(method.native_threshold),
            "describe": method.describe(),
            "train_images": len(class_data.train),
        }
        self.store.write_model_record(spec.key, config.dataset, class_name, record)
        self.store.record_method(
            spec.key,
            {"method_name": spec.name, "profile": config.profile, "describe": record["describe"]},
        )
        self.reporter.job_done(
            f"trained {spec.key} on {config.dataset}/{class_name} in {fit_seconds:.1f} s "
            f"(latency {latency.median_ms:.1f} ms/image)"
        )
        return _MethodState(method, record)

    def _evaluate(
        self,
        spec: MethodSpec,
        state: _MethodState,
        class_data: ClassData,
        setting: SettingSpec,
        images: torch.Tensor,
        gt_masks: torch.Tensor,
        val_threshold: float | None,
        figure_index: list[int],
    ) -> None:
        config = self.config
        class_name = class_data.class_name
        sample_ids = [sample.sample_id for sample in class_data.test]
        task = self.reporter.start_task(
            f"test {spec.key} on {class_name} [{setting.label}]", len(images)
        )

        def progress(done: int, total: int) -> None:
            self.reporter.advance(task, done, total)

        with timing.PeakMemory(self.device) as predict_memory:
            started = time.perf_counter()
            anomaly_maps = predict_maps(state.method, images, config.image_size, progress=progress)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            predict_seconds = time.perf_counter() - started
        self.reporter.finish_task(task)
        metrics.validate_maps(anomaly_maps, spec.key, sample_ids)
        labels = torch.tensor([sample.label for sample in class_data.test])
        result = metrics.evaluate(
            anomaly_maps,
            gt_masks,
            val_threshold=val_threshold,
            native_threshold=state.method.native_threshold,
            labels=labels,
        )
        self.store.write_arrays(
            self.store.maps_path(spec.key, config.dataset, class_name, setting.label),
            maps=anomaly_maps[figure_index].numpy().astype(np.float32),
        )
        row = {
            "method": spec.key,
            "method_name": spec.name,
            "dataset": config.dataset,
            "class": class_name,
            "setting": setting.label,
            "setting_name": setting.name,
            "severity": setting.severity,
            "profile": config.profile,
            "seed": config.seed,
            "image_size": config.image_size,
            "metrics": {key: _json_number(value) for key, value in result.values.items()},
            "notes": dict(result.notes),
            "val_threshold": _json_number(val_threshold),
            "native_threshold": _json_number(state.method.native_threshold),
            "test_images": len(class_data.test),
            "defective_images": int(labels.sum()),
            "gray_input": bool(_is_gray(images)),
            "predict_peak_memory_mib": _peak_mib(predict_memory.stats),
            "predict_added_memory_mib": _added_mib(predict_memory.stats),
            # Wall time of predicting every test image in batches of PREDICT_BATCH, including
            # the copy to and from the device: the throughput a user sees.
            "predict_seconds": predict_seconds,
            "predict_batch": PREDICT_BATCH,
            "fit": {k: v for k, v in state.record.items() if k not in ("describe",)},
            "describe": state.record.get("describe", {}),
        }
        self.store.write_result(row)
        values = result.values
        self.reporter.job_done(
            f"{spec.key} {config.dataset}/{class_name} [{setting.label}]: "
            f"F1 oracle {values['f1_oracle']:.3f}, val {values['f1_val']:.3f}, "
            f"AUROC {values['pixel_auroc']:.3f}, AUPRO {values['aupro']:.3f}"
        )


def _predict_no_grad(method: Method, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return method.predict(batch.to(method.device))


def _is_gray(images: torch.Tensor) -> bool:
    from perturbations import is_grayscale

    return bool(is_grayscale(images).all())


def config_dict(config: RunConfig) -> dict[str, Any]:
    """The configuration as plain data (for logs)."""
    return asdict(config)
