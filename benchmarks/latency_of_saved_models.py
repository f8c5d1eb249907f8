"""Latency of every saved model of a run, measured again side by side on a quiet machine.

A run measures each method's latency right after training it, so when other jobs load the
machine unevenly during a long run, methods are timed under different loads. This script
loads every model saved in ``RUN/models``, then times them one after the other on the same
test images (batch 1, warm-up, device synchronised: ``bench.timing.measure_latency``) and
prints a markdown table with the ratio to the fastest.

    .venv/bin/python benchmarks/latency_of_saved_models.py runs/<run-id> --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil  # noqa: E402
import torch  # noqa: E402

from bench.data import DATASETS, stack_images  # noqa: E402
from bench.predict import load_saved_method  # noqa: E402
from bench.runner import predict_maps  # noqa: E402
from bench.store import RunStore  # noqa: E402
from bench.timing import measure_latency  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run folder with saved models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=8, help="test images cycled through")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    store = RunStore(args.run)
    config = store.read_manifest()["config"]
    model_dirs = sorted(args.run.glob("models/*/*/*"))
    if not model_dirs:
        raise SystemExit(f"{args.run}: no saved models under models/<method>/<dataset>/<class>")
    rows = []
    for model_dir in model_dirs:
        method_key, dataset, class_name = model_dir.parts[-3:]
        adapter = DATASETS.get(dataset)(config.get("data_root"), classes=[class_name])
        test = adapter.load_class(class_name).test[: args.images]
        images = stack_images(test, config["image_size"])
        method, _ = load_saved_method(model_dir, "cpu")
        with torch.inference_mode():
            stats = measure_latency(
                lambda batch, m=method: predict_maps(m, batch, config["image_size"]),
                images,
                "cpu",
                repeats=args.repeats,
            )
        rows.append((method_key, class_name, stats.median_ms, stats.p95_ms))

    fastest = min(row[2] for row in rows)
    print(
        f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {args.threads} threads\n"
    )
    print("| method | class | latency ms (median) | p95 | × fastest |")
    print("| --- | --- | ---: | ---: | ---: |")
    for method_key, class_name, median, p95 in rows:
        ratio = median / fastest
        print(f"| {method_key} | {class_name} | {median:.1f} | {p95:.1f} | {ratio:.1f}× |")


if __name__ == "__main__":
    main()
