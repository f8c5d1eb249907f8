"""Learning curve of `samples-masks-gan` (alias `ours`): pixel metrics while it trains.

Trains the method through the harness's Method API (a FitContext whose progress callback
evaluates every K iterations) on one class and writes, after every evaluation, a CSV row and
a PNG curve with two reference lines: the trivial map |image - mean normal image| and the
all-defect map. Evaluation uses a fixed, evenly spaced subset of the class's *test* images
(with masks) as the validation split; the same subset is used at every step. A second
curve scores the method on its own task: its synthetic defects (opacity 0.5) blended into
a tenth of the training images that are held out of training, which tells a model that
learns nothing from one that learns the synthetic task but does not transfer to real defects.

Resumable: the CSV is appended and the method continues from its checkpoint in the scratch
folder. It stops cleanly (checkpoint saved, last evaluation written) after --max-minutes,
on SIGTERM or on Ctrl-C.

    .venv/bin/python benchmarks/ours_learning_curve.py --dataset folder \\
        --root /work/shared/data/magnetic_tile --tag magnetic_tile-full --max-minutes 95
    .venv/bin/python benchmarks/ours_learning_curve.py --dataset folder \\
        --root /work/shared/data/magnetic_tile --method "ours(components=G)" --tag magnetic_tile-G
    .venv/bin/python benchmarks/ours_learning_curve.py --combine reports/ours-learning/a.csv \\
        reports/ours-learning/b.csv --output reports/ours-learning/combined.png
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import signal
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_auc_score  # noqa: E402

from bench.data import DATASETS, stack_images, stack_masks  # noqa: E402
from bench.method import FitContext, parse_method_spec  # noqa: E402
from methods.ours.sources import TextureBank  # noqa: E402
from methods.ours.synthesis import make_synthetic_set  # noqa: E402

logger = logging.getLogger("ours_learning_curve")

FIELDS = [
    "iteration",
    "total_iterations",
    "train_seconds",
    "pixel_auroc",
    "best_f1",
    "best_threshold",
    "native_f1",
    "map_mean_normal",
    "map_mean_defect",
    "ref_diff_auroc",
    "ref_diff_best_f1",
    "ref_all_defect_f1",
    "val_images",
    "synthetic_auroc",
    "synthetic_best_f1",
    "method",
    "profile",
]


class StopTraining(Exception):
    """Raised from the progress callback to end training between two iterations."""


def best_f1(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Best F1 over thresholds (scikit-learn's precision-recall curve) and its threshold."""
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    index = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(f1[index]), float(thresholds[index]) if len(thresholds) else float("nan")


def f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """F1 of ``scores > threshold``."""
    predicted = scores > threshold
    true_positive = float(np.sum(predicted & labels))
    denominator = float(np.sum(predicted) + np.sum(labels))
    return 2 * true_positive / denominator if denominator else 0.0


def pixel_metrics(maps: torch.Tensor, masks: torch.Tensor, native: float | None) -> dict:
    """AUROC, best F1 and native F1 of ``N x S x S`` maps against bool masks."""
    size = masks.shape[-1]
    if maps.shape[-1] != size:
        maps = F.interpolate(maps[:, None], size=(size, size), mode="bilinear")[:, 0]
    scores = maps.flatten().numpy().astype(np.float64)
    labels = masks.flatten().numpy().astype(bool)
    f1, threshold = best_f1(scores, labels)
    return {
        "pixel_auroc": float(roc_auc_score(labels, scores)),
        "best_f1": f1,
        "best_threshold": threshold,
        "native_f1": f1_at(scores, labels, native) if native is not None else float("nan"),
        "map_mean_normal": float(scores[~labels].mean()),
        "map_mean_defect": float(scores[labels].mean()),
    }


def validation_subset(test: tuple, count: int) -> list:
    """``count`` test samples evenly spaced over the id-sorted list (all if fewer)."""
    ordered = sorted(test, key=lambda sample: sample.sample_id)
    if count >= len(ordered):
        return ordered
    positions = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return [ordered[i] for i in positions]


def read_rows(path: Path) -> list[dict]:
    """Rows already in the CSV (empty when it does not exist)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def append_row(path: Path, row: dict) -> None:
    """Append one row, writing the header first for a new file."""
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        handle.flush()
        os.fsync(handle.fileno())


def _method(path: Path) -> str | None:
    rows = read_rows(path)
    return rows[0]["method"] if rows else None


def plot(csv_paths: list[Path], output: Path, title: str) -> None:
    """Pixel AUROC and F1 against iterations, with the reference lines of the first CSV."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    reference = None
    methods = [_method(path) for path in csv_paths]
    for index, path in enumerate(csv_paths):
        rows = read_rows(path)
        if not rows:
            continue
        reference = reference or rows[0]
        colour = colours[index % len(colours)]
        label = rows[0]["method"] if len(csv_paths) > 1 else "method"
        if methods.count(rows[0]["method"]) > 1:
            label = f"{label} [{Path(path).stem}]"  # two runs of one method: name the file
        x = [int(r["iteration"]) for r in rows]
        left.plot(x, [float(r["pixel_auroc"]) for r in rows], "o-", ms=3, color=colour, label=label)
        if rows[0].get("synthetic_auroc"):
            left.plot(
                x,
                [float(r["synthetic_auroc"]) for r in rows],
                "^:",
                ms=3,
                color=colour,
                alpha=0.6,
                label=f"{label} on held-out synthetic defects",
            )
        right.plot(
            x, [float(r["best_f1"]) for r in rows], "o-", ms=3, color=colour, label=f"{label} best"
        )
        right.plot(
            x,
            [float(r["native_f1"]) for r in rows],
            "s--",
            ms=3,
            color=colour,
            alpha=0.6,
            label=f"{label} native (0.5)",
        )
    if reference is not None:
        left.axhline(float(reference["ref_diff_auroc"]), color="grey", ls=":", label="|x - mean|")
        left.axhline(0.5, color="black", ls="--", lw=0.8, label="chance / all-defect")
        right.axhline(
            float(reference["ref_diff_best_f1"]), color="grey", ls=":", label="|x - mean| best"
        )
        right.axhline(
            float(reference["ref_all_defect_f1"]),
            color="black",
            ls="--",
            lw=0.8,
            label="all-defect map",
        )
    left.set(xlabel="iteration", ylabel="pixel AUROC", title="pixel AUROC")
    right.set(xlabel="iteration", ylabel="pixel F1", title="pixel F1")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    temporary = output.with_suffix(".tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="folder", help="registered dataset adapter")
    parser.add_argument("--root", default=None, help="dataset root (none: adapter default)")
    parser.add_argument("--class-name", default=None, help="class (default: the first)")
    parser.add_argument("--method", default="ours", help="method spec, e.g. ours(components=G)")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--tag", default=None, help="name of the CSV/PNG (default: class)")
    parser.add_argument("--out", type=Path, default=Path("reports/ours-learning"))
    parser.add_argument("--scratch", type=Path, default=Path("runs/ours-learning"))
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--val-count", type=int, default=60)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--max-minutes", type=float, default=95.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--synthetic-val",
        type=int,
        default=30,
        help="synthetic defects (opacity 0.5) on held-out training images, 0: none",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--combine", type=Path, nargs="*", help="only plot these CSVs together")
    parser.add_argument("--output", type=Path, help="PNG of --combine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.combine:
        output = args.output or args.out / "combined.png"
        plot(args.combine, output, "samples-masks-gan learning curves")
        logger.info("wrote %s", output)
        return

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    adapter = DATASETS.get(args.dataset)(args.root)
    class_name = args.class_name or adapter.classes()[0]
    if args.class_name:
        adapter = DATASETS.get(args.dataset)(args.root, classes=[class_name])
    class_data = adapter.load_class(class_name)
    tag = args.tag or class_name
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / f"{tag}.csv"
    png_path = args.out / f"{tag}.png"
    scratch = args.scratch / tag
    scratch.mkdir(parents=True, exist_ok=True)

    # validation split: a fixed subset of the test images, with their masks
    subset = validation_subset(class_data.test, args.val_count)
    val_images = stack_images(subset, args.eval_size)
    val_masks = stack_masks(subset, args.eval_size)
    train_images = stack_images(class_data.train, args.eval_size)
    spec = parse_method_spec(args.method)
    synthetic = None
    if args.synthetic_val:
        # the method's own task: its synthetic defects on normal images it never trains on
        held_out = max(2, len(class_data.train) // 10)
        train_images, held_images = train_images[:-held_out], train_images[-held_out:]
        source = TextureBank(dict(spec.options).get("anomaly_source", "builtin"))
        opacities = torch.full((args.synthetic_val,), 0.5)
        generator = torch.Generator().manual_seed(12345 + args.seed)
        synthetic = make_synthetic_set(held_images, source, opacities, generator)
    logger.info(
        "%s/%s: %d training images, %d validation images (%.2f %% defect pixels)",
        args.dataset,
        class_name,
        len(train_images),
        len(subset),
        100 * float(val_masks.float().mean()),
    )

    # reference maps: |image - mean normal image| and "everything is defective"
    difference = (val_images - train_images.mean(dim=0, keepdim=True)).abs().mean(dim=1)
    reference = pixel_metrics(difference, val_masks, None)
    positive = float(val_masks.float().mean())
    all_defect_f1 = 2 * positive / (1 + positive)

    method = spec.build(args.profile)
    done_iterations = {int(r["iteration"]) for r in read_rows(csv_path)}
    previous_seconds = max((float(r["train_seconds"]) for r in read_rows(csv_path)), default=0.0)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    session_start = time.monotonic()

    def evaluate(iteration: int, total: int) -> None:
        if iteration in done_iterations:
            return
        metrics = pixel_metrics(method.predict(val_images), val_masks, method.native_threshold)
        if synthetic is not None:
            own_maps = method.predict(synthetic.defective)
            own = pixel_metrics(own_maps, synthetic.synthesis_masks, None)
            metrics["synthetic_auroc"] = own["pixel_auroc"]
            metrics["synthetic_best_f1"] = own["best_f1"]
        row = {
            "iteration": iteration,
            "total_iterations": total,
            "train_seconds": round(previous_seconds + time.monotonic() - session_start, 1),
            **{key: round(value, 5) for key, value in metrics.items()},
            "ref_diff_auroc": round(reference["pixel_auroc"], 5),
            "ref_diff_best_f1": round(reference["best_f1"], 5),
            "ref_all_defect_f1": round(all_defect_f1, 5),
            "val_images": len(subset),
            "method": spec.key,
            "profile": args.profile,
        }
        append_row(csv_path, row)
        done_iterations.add(iteration)
        plot([csv_path], png_path, f"{spec.key} ({args.profile}) on {args.dataset}/{class_name}")
        logger.info(
            "iteration %d/%d: AUROC %.3f best F1 %.3f native F1 %.3f",
            iteration,
            total,
            metrics["pixel_auroc"],
            metrics["best_f1"],
            metrics["native_f1"],
        )

    def progress(done: int, total: int, description: str) -> None:
        if done == 1 or done % args.eval_every == 0 or done == total:
            evaluate(done, total)
        out_of_time = time.monotonic() - started > 60.0 * args.max_minutes
        if (stop["flag"] or out_of_time) and done < total:
            evaluate(done, total)
            raise StopTraining(f"stopped at iteration {done} of {total}")

    context = FitContext(torch.device("cpu"), args.seed, args.profile, scratch, progress)
    try:
        method.fit(train_images, context)
        logger.info("finished: %s", csv_path)
    except (StopTraining, KeyboardInterrupt) as reason:
        logger.info("%s; checkpoint in %s, curve in %s", reason, scratch, csv_path)


if __name__ == "__main__":
    main()
