"""Latency statistics, peak memory and parameter counts."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from bench.timing import (
    LatencyStats,
    MemoryStats,
    PeakMemory,
    count_parameters,
    measure_latency,
    summarize_latencies,
)


class SleepyPredict:
    """Stands in for a method: sleeps, records what it was called with."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(images.shape))
        time.sleep(self.seconds)
        return images.mean(dim=1)


def test_summary_matches_numpy():
    times = [float(value) for value in range(1, 21)]  # 1..20 ms
    stats = summarize_latencies(times)
    assert stats.median_ms == 10.5
    assert stats.p95_ms == pytest.approx(19.05)  # rank 0.95 * 19 = 18.05 -> 19 + 0.05
    assert stats.p95_ms == pytest.approx(np.percentile(times, 95))
    assert stats.n == 20
    assert summarize_latencies([4.0]) == LatencyStats(4.0, 4.0, 1)
    with pytest.raises(ValueError, match="times_ms: expected at least one call time"):
        summarize_latencies([])


def test_latency_is_at_least_the_sleep_and_warmup_is_not_counted():
    predict = SleepyPredict(0.01)
    images = torch.rand(3, 3, 8, 8)
    stats = measure_latency(predict, images, "cpu", warmup=2, repeats=5)
    assert len(predict.shapes) == 7
    assert stats.n == 5
    assert stats.median_ms >= 10.0
    assert stats.p95_ms >= stats.median_ms
    assert set(predict.shapes) == {(1, 3, 8, 8)}  # batch 1, cycling through 3 images


def test_latency_without_warmup():
    predict = SleepyPredict(0.0)
    stats = measure_latency(predict, torch.rand(1, 3, 4, 4), torch.device("cpu"), 0, 3)
    assert len(predict.shapes) == 3 and stats.n == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"predict": "model"}, TypeError, "predict: expected a callable, found str"),
        ({"images": torch.rand(3, 4, 4)}, ValueError, "found (3, 4, 4)"),
        ({"images": torch.rand(0, 3, 4, 4)}, ValueError, "with N >= 1, found (0, 3, 4, 4)"),
        ({"images": [[0.5]]}, ValueError, "found list"),
        ({"warmup": -1}, ValueError, "warmup: expected an integer >= 0, found -1"),
        ({"repeats": 0}, ValueError, "repeats: expected an integer >= 1, found 0"),
        ({"repeats": 2.5}, ValueError, "repeats: expected an integer >= 1, found 2.5"),
    ],
)
def test_latency_arguments_are_checked(kwargs, error, text):
    arguments = {"predict": SleepyPredict(0.0), "images": torch.rand(2, 3, 4, 4), "device": "cpu"}
    with pytest.raises(error) as raised:
        measure_latency(**{**arguments, **kwargs})
    assert text in str(raised.value)


def test_peak_memory_sees_a_large_array():
    size = 200 * 1024 * 1024
    with PeakMemory("cpu", interval_s=0.002) as quiet:
        time.sleep(0.02)
    with PeakMemory("cpu", interval_s=0.002) as busy:
        array = np.ones(size, dtype=np.uint8)  # touches every page, so it is resident
        time.sleep(0.02)
        del array
    assert isinstance(busy.stats, MemoryStats)
    assert busy.stats.rss_increase_mib >= 150.0
    assert busy.stats.peak_rss_mib >= busy.stats.baseline_rss_mib + 150.0
    assert quiet.stats.rss_increase_mib < 100.0
    assert busy.stats.samples >= 3  # entry, exit and at least one from the thread
    assert busy.stats.cuda_peak_mib is None


def test_peak_memory_errors():
    memory = PeakMemory()
    with pytest.raises(RuntimeError, match="the block has not ended yet"):
        _ = memory.stats
    with memory:
        with pytest.raises(RuntimeError, match="already measuring a block"):
            memory.__enter__()
    with pytest.raises(ValueError, match="interval_s: expected a positive number of seconds"):
        PeakMemory(interval_s=0)


def test_count_parameters():
    linear = nn.Linear(5, 3)
    assert count_parameters(linear) == 5 * 3 + 3
    conv = nn.Conv2d(3, 4, kernel_size=3)
    assert count_parameters([linear, conv]) == 18 + 4 * 3 * 9 + 4
    assert count_parameters((linear, nn.Sequential(linear))) == 18  # shared counted once
    linear.bias.requires_grad_(False)
    assert count_parameters(linear, trainable_only=True) == 15
    assert count_parameters(linear) == 18


def test_count_parameters_rejects_non_modules():
    with pytest.raises(TypeError, match="expected an nn.Module or an iterable of them, found int"):
        count_parameters(3)
    with pytest.raises(
        TypeError, match=r"module_or_modules\[1\]: expected an nn.Module, found str"
    ):
        count_parameters([nn.Linear(1, 1), "conv"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_latency_and_peak_memory():
    device = torch.device("cuda")
    model = nn.Conv2d(3, 1, kernel_size=3, padding=1).to(device)
    calls = []

    def predict(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.device.type)
        with torch.inference_mode():
            return model(images)[:, 0]

    stats = measure_latency(predict, torch.rand(2, 3, 32, 32), device, warmup=2, repeats=4)
    assert calls == ["cuda"] * 6 and stats.n == 4 and stats.median_ms > 0.0

    with PeakMemory(device) as memory:
        block = torch.ones(64 * 1024 * 1024, dtype=torch.uint8, device=device)  # 64 MiB
        del block
    assert memory.stats.cuda_peak_mib >= 64.0
    with PeakMemory(device) as small:
        torch.ones(1024, device=device)
    assert small.stats.cuda_peak_mib < memory.stats.cuda_peak_mib
