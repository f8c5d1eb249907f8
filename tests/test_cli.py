import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.cli import app

runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"})


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def flat(output: str) -> str:
    """The output without rich's box drawing and line wrapping."""
    for char in "│╭╮╰╯─":
        output = output.replace(char, " ")
    return " ".join(output.split())


def test_list_methods_shows_builtins():
    result = invoke("list", "methods")
    assert result.exit_code == 0
    assert "mean-diff" in result.stdout


def test_list_unknown_kind_is_a_usage_error():
    result = invoke("list", "widgets")
    assert result.exit_code == 2
    assert "expected one of methods, datasets, settings" in flat(result.output)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "mean-dif"], "Did you mean 'mean-diff'"),
        (["--methods", "mean-diff,mean-diff"], "listed twice: mean-diff"),
        (["--methods", "mean-diff(k=1)"], "has no option 'k'"),
        (["--setting", "harder"], "Did you mean 'hard'"),
        (["--severity", "9"], "severities must be 1 to 5"),
        (["--severity", "x"], "expected whole numbers"),
        (["--dataset", "mvtecc"], "Did you mean 'mvtec'"),
        (["--profile", "huge"], "profile 'huge' is not offered by mean-diff; expected one of"),
        (["--setting", "clean", "--severity", "3"], "clean images have no severity"),
        (["--device", "tpu"], "--device 'tpu': expected auto, cpu, cuda or cuda:N"),
        (["--device", "cuda:x"], "--device 'cuda:x': expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_run_bad_arguments_exit_2_with_reason(args, message, tmp_path):
    result = invoke("run", "--methods", "mean-diff", *args, "--runs-dir", tmp_path)
    assert result.exit_code == 2, result.output
    assert message in flat(result.output)


def test_run_missing_data_root_exit_2(tmp_path):
    result = invoke(
        "run",
        "--methods",
        "mean-diff",
        "--dataset",
        "folder",
        "--data-root",
        tmp_path / "nope",
        "--runs-dir",
        tmp_path,
    )
    assert result.exit_code == 2
    assert "nope" in flat(result.output)


def test_run_cuda_without_cuda_exit_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke("run", "--methods", "mean-diff", "--device", "cuda", "--runs-dir", tmp_path)
    assert result.exit_code == 2
    assert "CUDA is not available" in flat(result.output)


def test_run_then_report_then_evaluate(tmp_path, tiny_dataset_root):
    runs = tmp_path / "runs"
    result = invoke(
        "run",
        "--methods",
        "mean-diff",
        "--dataset",
        "folder",
        "--data-root",
        tiny_dataset_root,
        "--setting",
        "clean,general",
        "--image-size",
        32,
        "--runs-dir",
        runs,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = list(runs.iterdir())
    assert (run_dir / "report.md").is_file()
    assert "report:" in result.output
    assert "[general]" in result.output  # the setting is text, not a rich style tag

    again = invoke("report", run_dir, "--output", tmp_path / "r.md")
    assert again.exit_code == 0
    assert (tmp_path / "r.md").read_text().startswith("# DefectBench report")

    bad = invoke("report", tmp_path)
    assert bad.exit_code == 2
    assert "not a run folder" in flat(bad.output)


def evaluate_folder(dataset_root, maps, *extra):
    return invoke(
        "evaluate", "--dataset", "folder", "--data-root", dataset_root, "--maps", maps, *extra
    )


def write_maps(root, dataset_root, value_from_mask=True, skip=None):
    from PIL import Image

    for image_path in sorted(dataset_root.glob("*/test/*/*.png")):
        class_name, _, defect, name = image_path.parts[-4:]
        target = root / class_name / "test" / defect / (image_path.stem + ".npy")
        if skip and target.name == skip and defect == "square":
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        mask_path = (
            dataset_root / class_name / "ground_truth" / defect / f"{image_path.stem}_mask.png"
        )
        mask = (
            np.asarray(Image.open(mask_path)) > 0
            if mask_path.exists()
            else np.zeros((32, 32), bool)
        )
        np.save(target, mask.astype(np.float32) * 0.9 + 0.05)


def test_evaluate_perfect_maps_and_json(tmp_path, tiny_dataset_root):
    maps = tmp_path / "maps"
    write_maps(maps, tiny_dataset_root)
    out = tmp_path / "scores.json"
    result = invoke(
        "evaluate",
        "--dataset",
        "folder",
        "--data-root",
        tiny_dataset_root,
        "--maps",
        maps,
        "--json",
        out,
        "--image-size",
        64,
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())
    assert set(scores["classes"]) == {"dots", "stripes"}
    assert scores["mean"]["f1_oracle"] == pytest.approx(1.0)
    assert scores["mean"]["pixel_auroc"] == pytest.approx(1.0)
    assert scores["mean"]["image_auroc"] == pytest.approx(1.0)


def test_evaluate_missing_map_names_it(tmp_path, tiny_dataset_root):
    maps = tmp_path / "maps"
    write_maps(maps, tiny_dataset_root, skip="001.npy")
    result = evaluate_folder(tiny_dataset_root, maps)
    assert result.exit_code == 1
    assert "missing anomaly map" in flat(result.output) and "001.npy" in flat(result.output)


def test_evaluate_wrong_map_kind_names_it(tmp_path, tiny_dataset_root):
    maps = tmp_path / "maps"
    write_maps(maps, tiny_dataset_root)
    broken = next(maps.rglob("*.npy"))
    np.save(broken, np.zeros((2, 3, 4)))
    result = evaluate_folder(tiny_dataset_root, maps)
    assert result.exit_code == 1
    assert broken.name in flat(result.output) and "expected H x W" in flat(result.output)


def test_evaluate_maps_folder_must_exist(tmp_path, tiny_dataset_root):
    result = evaluate_folder(tiny_dataset_root, tmp_path / "none")
    assert result.exit_code == 2


def test_predict_writes_maps_and_masks(tmp_path, tiny_dataset_root):
    runs = tmp_path / "runs"
    invoke(
        "run",
        "--methods",
        "mean-diff",
        "--dataset",
        "folder",
        "--data-root",
        tiny_dataset_root,
        "--setting",
        "clean",
        "--image-size",
        32,
        "--runs-dir",
        runs,
        "--device",
        "cpu",
        "--classes",
        "dots",
    )
    (model,) = list(runs.glob("*/models/mean-diff/folder/dots"))
    image = next(tiny_dataset_root.glob("dots/test/square/*.png"))
    out = tmp_path / "pred"
    result = invoke("predict", image, "--model", model, "--output", out, "--image-size", 32)
    assert result.exit_code == 0, result.output
    assert np.load(out / f"{image.stem}_map.npy").shape == (32, 32)
    assert (out / f"{image.stem}_mask.png").is_file()  # binarised at the stored val threshold

    twin = next(tiny_dataset_root.glob(f"dots/test/good/{image.stem}.png"))
    clash = invoke("predict", image, twin, "--model", model, "--output", out)
    assert clash.exit_code == 1
    assert f"share the name '{image.stem}'" in flat(clash.output)

    missing = invoke("predict", tmp_path / "x.png", "--model", model)
    assert missing.exit_code == 2
    not_model = invoke("predict", image, "--model", tmp_path)
    assert not_model.exit_code == 1
    assert "not a saved model folder" in flat(not_model.output)


def test_interrupt_exits_130_with_resume_hint(tmp_path, tiny_dataset_root, monkeypatch):
    from bench import runner as runner_module

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module.Runner, "run", interrupted)
    result = invoke(
        "run",
        "--methods",
        "mean-diff",
        "--dataset",
        "folder",
        "--data-root",
        tiny_dataset_root,
        "--runs-dir",
        tmp_path,
    )
    assert result.exit_code == 130
    assert "re-run the same command to resume" in flat(result.output)


def test_predict_from_a_saved_ours_model_uses_its_native_threshold(tmp_path, tiny_dataset_root):
    ours = "ours(image_size=32,width=4,blocks=1,iterations=4,samples=3,regenerations=2)"
    runs = tmp_path / "runs"
    args = ["--dataset", "folder", "--data-root", tiny_dataset_root, "--setting", "clean"]
    args += ["--image-size", 32, "--runs-dir", runs, "--device", "cpu", "--classes", "dots"]
    result = invoke("run", "--methods", ours, *args)
    assert result.exit_code == 0, result.output
    (model,) = list(runs.glob("*/models/*/folder/dots"))
    image = next(tiny_dataset_root.glob("dots/test/square/*.png"))
    out = tmp_path / "pred"
    result = invoke("predict", image, "--checkpoint", model, "--output", out, "--image-size", 32)
    assert result.exit_code == 0, result.output

    anomaly_map = np.load(out / f"{image.stem}_map.npy")
    assert anomaly_map.shape == (32, 32)
    assert 0.0 <= anomaly_map.min() and anomaly_map.max() <= 1.0
    mask = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
    np.testing.assert_array_equal(mask > 0, anomaly_map > 0.5)  # the native threshold


def test_ablation_variants_are_separate_rows_of_one_run(tmp_path, tiny_dataset_root):
    tiny = "image_size=32,width=4,blocks=1,iterations=4,samples=3,regenerations=2"
    methods = f"ours({tiny}),ours({tiny},components=G.S,opacity=random)"
    runs = tmp_path / "runs"
    args = ["--dataset", "folder", "--data-root", tiny_dataset_root, "--setting", "clean"]
    args += ["--image-size", 32, "--runs-dir", runs, "--device", "cpu", "--classes", "dots"]
    result = invoke("run", "--methods", methods, *args)
    assert result.exit_code == 0, result.output

    (run_dir,) = list(runs.iterdir())
    rows = [json.loads(p.read_text()) for p in run_dir.glob("results/**/*.json")]
    assert len({row["method"] for row in rows}) == 2
    header = next(
        line
        for line in (run_dir / "report.md").read_text().splitlines()
        if line.startswith("| class")
    )
    assert "components=G.S" in header and "opacity=random" in header
    assert header.count("samples-masks-gan") == 2


@pytest.mark.parametrize("layout", ["empty", "empty class folder", "one level too high"])
def test_run_on_a_folder_without_classes_fails_naming_it(tmp_path, tiny_dataset_root, layout):
    root = tmp_path / "data"
    root.mkdir()
    if layout == "empty class folder":
        (root / "carpet").mkdir()
    if layout == "one level too high":
        root = tiny_dataset_root.parent
    result = invoke(
        "run",
        "--methods",
        "mean-diff",
        "--dataset",
        "folder",
        "--data-root",
        root,
        "--runs-dir",
        tmp_path / "runs",
    )
    assert result.exit_code == 2
    assert f"no class folder under {root}" in flat(result.output)
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "mvtec"], "needs a data root"),
        (["--dataset", "folder", "--classes", "dotz"], "Did you mean 'dots'"),
    ],
)
def test_dataset_errors_come_before_the_run_folder(tmp_path, tiny_dataset_root, args, message):
    if "--classes" in args:
        args = [*args, "--data-root", tiny_dataset_root]
    result = invoke("run", "--methods", "mean-diff", *args, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2, result.output
    assert message in flat(result.output)
    assert not (tmp_path / "runs").exists()
