import math
import re

import numpy as np
import pytest
import torch
from method_inputs import cpu_context

from bench.method import METHODS, parse_method_spec
from bench.report import write_report
from bench.runner import (
    Reporter,
    RunConfig,
    Runner,
    SettingSpec,
    open_store,
    predict_maps,
    resolve_device,
)

MeanDiff = METHODS.get("mean-diff")


def make_config(root, settings=("clean", "hard"), methods=("mean-diff",), **overrides):
    values = dict(
        methods=tuple(parse_method_spec(m) for m in methods),
        dataset="folder",
        data_root=str(root),
        settings=tuple(SettingSpec(s) for s in settings),
        image_size=32,
        device="cpu",
    )
    values.update(overrides)
    return RunConfig(**values)


def run(config, runs_dir, reporter=None):
    store = open_store(config, runs_dir)
    Runner(config, store, reporter).run()
    return store


def test_run_writes_a_row_per_method_class_setting(tmp_path, tiny_dataset_root):
    store = run(make_config(tiny_dataset_root), tmp_path)
    rows = list(store.iter_results())
    assert sorted((r["class"], r["setting"]) for r in rows) == [
        ("dots", "clean"),
        ("dots", "hard"),
        ("stripes", "clean"),
        ("stripes", "hard"),
    ]
    for row in rows:
        assert row["test_images"] == 7 and row["defective_images"] == 4
        assert 0.5 < row["metrics"]["pixel_auroc"] <= 1.0  # bright squares on a dim texture
        assert math.isnan(row["metrics"]["f1_native"])  # mean-diff has no threshold
        assert row["gray_input"] is True
    record = store.read_model_record("mean-diff", "folder", "dots")
    assert record["fit_seconds"] >= 0 and record["latency_ms_median"] > 0
    assert 0 <= record["fit_added_memory_mib"] <= record["fit_peak_memory_mib"]
    for row in rows:
        assert 0 <= row["predict_added_memory_mib"] <= row["predict_peak_memory_mib"]
    assert record["val_threshold"] is not None
    manifest = store.read_manifest()
    assert manifest["config"]["methods"] == ["mean-diff"]
    assert manifest["versions"]["torch"] == torch.__version__.split("+")[0] or manifest["versions"][
        "torch"
    ].startswith(torch.__version__.split("+")[0])
    assert manifest["hardware"]["cpu_cores"] >= 1


def test_metrics_of_a_run_match_direct_computation(tmp_path, tiny_dataset_root):
    from sklearn.metrics import roc_auc_score

    from bench.data import DATASETS, stack_images, stack_masks

    store = run(make_config(tiny_dataset_root, settings=("clean",)), tmp_path)
    adapter = DATASETS.get("folder")(tiny_dataset_root)
    data = adapter.load_class("dots")
    method = MeanDiff()
    method.load(store.model_dir("mean-diff", "folder", "dots"))
    maps = method.predict(stack_images(data.test, 32)).numpy().ravel()
    masks = stack_masks(data.test, 32).numpy().ravel()
    row = store.read_result("mean-diff", "folder", "dots", "clean")
    assert row["metrics"]["pixel_auroc"] == pytest.approx(roc_auc_score(masks, maps), abs=1e-6)


def test_rerun_skips_finished_work_and_redoes_corrupt_rows(
    tmp_path, tiny_dataset_root, monkeypatch
):
    config = make_config(tiny_dataset_root)
    store = run(config, tmp_path)
    fits = []
    original_fit = MeanDiff.fit
    monkeypatch.setattr(MeanDiff, "fit", lambda self, *a: fits.append(1) or original_fit(self, *a))
    predicts = []
    original_predict = MeanDiff.predict
    monkeypatch.setattr(
        MeanDiff, "predict", lambda self, x: predicts.append(len(x)) or original_predict(self, x)
    )

    run(config, tmp_path)
    assert fits == [] and predicts == []  # everything was finished

    corrupt = store.result_path("mean-diff", "folder", "dots", "hard")
    corrupt.write_text('{"method": "mean-diff", "metri')
    run(config, tmp_path)
    assert fits == []  # the saved model is reused
    assert store.read_result("mean-diff", "folder", "dots", "hard") is not None
    assert sum(predicts) == 1 + 7  # val images (1) and the test images of one setting


def test_interrupted_run_resumes_without_redoing(tmp_path, tiny_dataset_root, monkeypatch):
    config = make_config(tiny_dataset_root)
    finished = []

    def job_done(line):
        finished.append(line)
        if len(finished) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, Reporter(job_done=job_done))
    store = open_store(config, tmp_path)
    assert len(list(store.iter_results())) == 1  # trained one model, evaluated one setting

    fits = []
    original_fit = MeanDiff.fit
    monkeypatch.setattr(MeanDiff, "fit", lambda self, *a: fits.append(1) or original_fit(self, *a))
    lines = []
    run(config, tmp_path, Reporter(job_done=lines.append))
    assert len(list(store.iter_results())) == 4
    assert len(fits) == 1  # only the second class still needed training
    assert len([line for line in lines if line.startswith("mean-diff")]) == 3


def test_hard_setting_changes_inputs_not_masks(tmp_path, tiny_dataset_root):
    config = make_config(tiny_dataset_root, settings=("hard",), classes=("dots",))
    store = run(config, tmp_path)
    samples = store.read_arrays(store.samples_path("folder", "dots", "hard"))
    clean = run(make_config(tiny_dataset_root, settings=("clean",), classes=("dots",)), tmp_path)
    clean_samples = clean.read_arrays(clean.samples_path("folder", "dots", "clean"))
    assert samples["images"].shape == (3, 3, 32, 32)
    assert not np.array_equal(samples["images"], clean_samples["images"])
    assert np.array_equal(samples["masks"], clean_samples["masks"])


def test_non_finite_map_names_method_and_image(tmp_path, tiny_dataset_root, monkeypatch):
    def broken(self, images):
        maps = images.mean(dim=1)
        maps[0, 0, 0] = float("nan")
        return maps

    monkeypatch.setattr(MeanDiff, "predict", broken)
    with pytest.raises(ValueError, match=r"mean-diff.*dots/train/good"):
        run(make_config(tiny_dataset_root, classes=("dots",)), tmp_path)


def test_wrong_map_shape_is_an_error(tmp_path, tiny_dataset_root, monkeypatch):
    monkeypatch.setattr(MeanDiff, "predict", lambda self, images: images)
    with pytest.raises(ValueError, match=r"returned maps of shape \(1, 3, 32, 32\)"):
        run(make_config(tiny_dataset_root, classes=("dots",)), tmp_path)


def test_run_folder_of_other_arguments_is_refused(tmp_path, tiny_dataset_root):
    open_store(make_config(tiny_dataset_root), tmp_path, "shared")
    with pytest.raises(ValueError, match="holds a run with other arguments"):
        open_store(make_config(tiny_dataset_root, seed=1), tmp_path, "shared")


def test_run_id_is_deterministic_and_argument_sensitive(tiny_dataset_root):
    a = make_config(tiny_dataset_root)
    assert a.run_id() == make_config(tiny_dataset_root).run_id()
    assert a.run_id() != make_config(tiny_dataset_root, seed=1).run_id()
    assert a.run_id().startswith("folder-quick-")


def test_cuda_request_without_cuda_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_report_has_tables_marks_and_figures(tmp_path, tiny_dataset_root):
    store = run(make_config(tiny_dataset_root), tmp_path)
    report = write_report(store.root)
    text = report.read_text()
    assert "### folder, setting `hard`" in text
    assert "| **mean**" in text
    assert "#### Pixel F1 (%), oracle threshold (upper bound" in text
    assert "No method in this run has a native threshold." in text
    assert "hue shifts are a no-op" in text
    figures = sorted((store.root / "figures").glob("*.png"))
    assert [f.name for f in figures] == ["maps-folder-dots.png", "maps-folder-stripes.png"]
    assert "](figures/maps-folder-dots.png)" in text
    assert re.search(r"\bnan\b", text, flags=re.IGNORECASE) is None


def test_rows_and_manifest_keep_what_reports_need(tmp_path, tiny_dataset_root):
    store = run(make_config(tiny_dataset_root, settings=("clean",), classes=("dots",)), tmp_path)
    row = store.read_result("mean-diff", "folder", "dots", "clean")
    assert row["predict_seconds"] > 0 and row["predict_batch"] >= 1
    assert row["val_threshold"] is not None  # binarises the figure maps
    maps = store.read_arrays(store.maps_path("mean-diff", "folder", "dots", "clean"))
    assert maps["maps"].shape == (3, 32, 32)
    facts = store.read_manifest()["methods"]["mean-diff"]
    assert facts["method_name"] == "mean-diff" and facts["profile"] == "quick"
    assert "describe" in facts


def test_fit_context_names_the_class_being_trained(tmp_path, tiny_dataset_root, monkeypatch):
    classes = []
    original_fit = MeanDiff.fit

    def fit(self, images, context):
        classes.append(context.class_name)
        return original_fit(self, images, context)

    monkeypatch.setattr(MeanDiff, "fit", fit)
    run(make_config(tiny_dataset_root, settings=("clean",)), tmp_path)
    assert sorted(classes) == ["dots", "stripes"]


def test_test_step_bar_advances_per_batch_to_the_image_count(tmp_path, tiny_dataset_root):
    bars = {}
    updates = []

    def start_task(description, total):
        bars[description] = total
        return description

    def advance(task, completed, total):
        updates.append((task, completed, total))

    reporter = Reporter(start_task=start_task, advance=advance)
    run(make_config(tiny_dataset_root, settings=("clean",)), tmp_path, reporter)
    test_bar = "test mean-diff on dots [clean]"
    assert bars[test_bar] == 7  # 3 good and 4 defective test images
    assert [u[1:] for u in updates if u[0] == test_bar] == [(7, 7)]  # one batch of up to 8


def test_predict_maps_reports_progress_after_every_batch():
    method = MeanDiff()
    method.fit(torch.rand(2, 3, 8, 8), cpu_context())
    calls = []
    predict_maps(
        method, torch.rand(5, 3, 8, 8), 8, batch_size=2, progress=lambda *a: calls.append(a)
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]
