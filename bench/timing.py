"""Inference latency, peak memory and parameter counts, measured the same way for every method."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import psutil
import torch
from torch import nn

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class LatencyStats:
    """Wall time of single-image ``predict`` calls.

    Attributes:
        median_ms: Median over the timed calls, milliseconds.
        p95_ms: 95th percentile (linear interpolation), milliseconds.
        n: Number of timed calls (warm-up calls excluded).
    """

    median_ms: float
    p95_ms: float
    n: int


@dataclass(frozen=True)
class MemoryStats:
    """Peak memory during a block, as measured by ``PeakMemory``.

    Attributes:
        peak_rss_mib: Highest resident set size of the whole process seen during the
            block (sampled), MiB. It includes what was resident before the block.
        baseline_rss_mib: Resident set size at entry, MiB.
        cuda_peak_mib: Peak of memory allocated to tensors by torch's CUDA caching
            allocator on the device during the block (tensors alive at entry included),
            MiB; ``None`` off CUDA.
        samples: How many RSS samples were taken.
    """

    peak_rss_mib: float
    baseline_rss_mib: float
    cuda_peak_mib: float | None
    samples: int

    @property
    def rss_increase_mib(self) -> float:
        """Peak RSS above the entry level: what the block itself added, at most."""
        return self.peak_rss_mib - self.baseline_rss_mib


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels on ``device`` (CUDA or MPS); nothing to wait for on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def summarize_latencies(times_ms: Sequence[float]) -> LatencyStats:
    """Median and 95th percentile (linear interpolation) of call times in milliseconds.

    Example:
        >>> stats = summarize_latencies([1.0, 2.0, 3.0, 4.0])
        >>> stats.median_ms, round(stats.p95_ms, 6), stats.n
        (2.5, 3.85, 4)
    """
    if len(times_ms) == 0:
        raise ValueError("times_ms: expected at least one call time, found none")
    median = float(statistics.median(times_ms))
    p95 = float(np.percentile(np.asarray(times_ms, dtype=np.float64), 95))
    return LatencyStats(median_ms=median, p95_ms=p95, n=len(times_ms))


def measure_latency(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    device: torch.device | str,
    warmup: int = 3,
    repeats: int = 20,
) -> LatencyStats:
    """Time ``predict`` on one image at a time, after warm-up, with the device synchronised.

    Images are moved to ``device`` before timing; each timed call runs from a
    synchronised device to the end of its queued work. Calls cycle through ``images``
    when more calls than images are asked for. ``predict`` is called as given (wrap it
    in ``torch.inference_mode()`` if it does not turn autograd off itself).

    Args:
        predict: Maps ``1 x 3 x H x W`` images to ``1 x H x W`` anomaly maps.
        images: ``N x 3 x H x W`` float in [0, 1], N >= 1.
        device: Where ``predict`` runs.
        warmup: Untimed calls first (lazy initialisation, cuDNN autotuning, caches).
        repeats: Timed calls.

    Returns:
        Median and p95 over the ``repeats`` timed calls.
    """
    if not callable(predict):
        raise TypeError(f"predict: expected a callable, found {type(predict).__name__}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        found = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected shape N x C x H x W with N >= 1, found {found}")
    _check_count("warmup", warmup, minimum=0)
    _check_count("repeats", repeats, minimum=1)

    device = torch.device(device)
    used = min(images.shape[0], warmup + repeats)
    singles = [images[index : index + 1].to(device) for index in range(used)]  # 1 x C x H x W

    for call in range(warmup):
        predict(singles[call % used])
    synchronize(device)

    times_ms = []
    for call in range(warmup, warmup + repeats):
        image = singles[call % used]
        synchronize(device)
        start = time.perf_counter()
        predict(image)
        synchronize(device)
        times_ms.append((time.perf_counter() - start) * 1000.0)

    stats = summarize_latencies(times_ms)
    logger.debug("latency on %s: %s", device, stats)
    return stats


class PeakMemory:
    """Context manager that records peak memory while its block runs.

    Resident set size (RSS) of the process is sampled by a background thread every
    ``interval_s`` seconds and once at entry and exit, through psutil (Linux, macOS and
    Windows alike). On a CUDA device, torch's peak-allocation counter is reset at entry
    and read at exit.

    Args:
        device: The device the block computes on; CUDA adds ``cuda_peak_mib``.
        interval_s: Seconds between RSS samples.

    Example:
        >>> with PeakMemory("cpu") as memory:
        ...     _ = np.ones(1000)
        >>> memory.stats.samples >= 2
        True
    """

    # NOTE: sampling can miss a spike shorter than interval_s that is freed again
    # before exit, and memory of child processes (data loader workers) is not counted.

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.005) -> None:
        if not interval_s > 0:
            raise ValueError(
                f"interval_s: expected a positive number of seconds, found {interval_s}"
            )
        self.device = torch.device(device)
        self.interval_s = interval_s
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak_rss = 0
        self._samples = 0
        self._baseline_rss = 0
        self._stats: MemoryStats | None = None

    @property
    def stats(self) -> MemoryStats:
        """The measurement; available once the block has ended."""
        if self._stats is None:
            raise RuntimeError("PeakMemory.stats: the block has not ended yet")
        return self._stats

    def __enter__(self) -> PeakMemory:
        if self._thread is not None:
            raise RuntimeError("PeakMemory: this instance is already measuring a block")
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._stats = None
        self._stop.clear()
        self._samples = 0
        self._peak_rss = 0
        self._baseline_rss = self._sample()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        cuda_peak = None
        if self.device.type == "cuda":
            synchronize(self.device)
            cuda_peak = torch.cuda.max_memory_allocated(self.device) / MIB
        self._stats = MemoryStats(
            peak_rss_mib=self._peak_rss / MIB,
            baseline_rss_mib=self._baseline_rss / MIB,
            cuda_peak_mib=cuda_peak,
            samples=self._samples,
        )
        logger.debug("peak memory: %s", self._stats)

    def _sample(self) -> int:
        rss = self._process.memory_info().rss
        self._peak_rss = max(self._peak_rss, rss)
        self._samples += 1
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()


def count_parameters(
    module_or_modules: nn.Module | Iterable[nn.Module], trainable_only: bool = False
) -> int:
    """Count the parameters of one module or several, each shared tensor once.

    Args:
        module_or_modules: A module, or an iterable of modules (e.g. generator and
            discriminators).
        trainable_only: Count only parameters with ``requires_grad``.

    Returns:
        The number of scalar parameters.

    Example:
        >>> count_parameters(nn.Linear(3, 2))
        8
    """
    modules = [module_or_modules] if isinstance(module_or_modules, nn.Module) else None
    if modules is None:
        if not isinstance(module_or_modules, Iterable):
            message = (
                f"module_or_modules: expected an nn.Module or an iterable of them, "
                f"found {type(module_or_modules).__name__}"
            )
            raise TypeError(message)
        modules = list(module_or_modules)
    seen: dict[int, int] = {}
    for index, module in enumerate(modules):
        if not isinstance(module, nn.Module):
            message = (
                f"module_or_modules[{index}]: expected an nn.Module, found {type(module).__name__}"
            )
            raise TypeError(message)
        for parameter in module.parameters():
            if parameter.requires_grad or not trainable_only:
                seen[id(parameter)] = parameter.numel()
    return sum(seen.values())


def _check_count(argument: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{argument}: expected an integer >= {minimum}, found {value!r}")
