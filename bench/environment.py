"""Facts about the software and hardware a run used, for its manifest."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = (
    "defectbench",
    "torch",
    "torchvision",
    "timm",
    "anomalib",
    "numpy",
    "scipy",
    "scikit-learn",
    "scikit-image",
    "opencv-python-headless",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape results (``None`` when absent)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(path: Path | None = None) -> str | None:
    """The project's git commit (with ``-dirty`` when it has local changes), if any."""
    folder = path or Path(__file__).resolve().parent.parent
    try:
        revision = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{revision}-dirty" if status else revision


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` or the platform module."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """CPU, core count, memory and GPU of this machine."""
    import os

    memory_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib,
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def describe_machine(info: dict[str, Any]) -> str:
    """One line such as ``2 CPU cores (Intel Xeon ...), 23.4 GiB, no GPU``."""
    gpu = info.get("gpu") or "no GPU"
    cores, cpu, memory = info.get("cpu_cores"), info.get("cpu"), info.get("memory_gib")
    return f"{cores} CPU cores ({cpu}), {memory} GiB, {gpu}"
