import os
import re
from pathlib import Path

import pytest
from fixed_run import write_fixed_run
from PIL import Image

from bench.figures import (
    CURVE_PIXEL_SIZE,
    GridRow,
    grid_pixel_size,
    write_map_grid,
    write_severity_curve,
)
from bench.report import Footnotes, markdown_table, render_report, write_report
from bench.store import RunStore

EXPECTED = Path(__file__).parent / "fixtures" / "expected_report.md"
REGENERATE = "DEFECTBENCH_REGENERATE"


@pytest.fixture(scope="module")
def fixed_report(tmp_path_factory):
    store = write_fixed_run(tmp_path_factory.mktemp("fixed"))
    path = write_report(store.root)
    return path, path.read_text(encoding="utf-8")


def test_report_of_fixed_run_matches_expected_markdown(fixed_report):
    _, text = fixed_report
    if os.environ.get(REGENERATE) == "1":
        EXPECTED.parent.mkdir(parents=True, exist_ok=True)
        EXPECTED.write_text(text, encoding="utf-8")
    expected = EXPECTED.read_text(encoding="utf-8")
    assert text == expected, f"report changed; if on purpose, rerun with {REGENERATE}=1"


def test_report_has_every_section_once(fixed_report):
    _, text = fixed_report
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Contents",
        "## Methods",
        "## Pixel F1 per class (Tables 1-2)",
        "## Settings side by side (Table 3)",
        "## Robustness: change from clean",
        "## Graded severities",
        "## Ablation: variants of one method (Table 4)",
        "## Threshold-free metrics",
        "## Speed and memory",
        "## Anomaly maps (Figs. 3-4)",
    ]
    for policy in ("oracle threshold (upper bound", "val threshold", "native threshold"):
        assert f"#### Pixel F1 (%), {policy}" in text
    assert "### `ours` on default: pixel F1 (%), val threshold" in text
    assert "| mean-diff " not in text.split("## Ablation")[1].split("## Threshold-free")[0]


def test_report_has_no_raw_nan_and_explains_every_na(fixed_report):
    _, text = fixed_report
    assert re.search(r"\bnan\b", text, flags=re.IGNORECASE) is None
    blocks = text.split("\n\n")
    for index, block in enumerate(blocks):
        if block.startswith("|") and "n/a" in block:
            assert blocks[index + 1].startswith("n/a — "), block
    assert "n/a — the method has no native threshold: mean-diff (carpet, wood)." in text
    assert "wood left out (no defect region in the test masks)" in text


def test_tables_are_aligned_for_github(fixed_report):
    _, text = fixed_report
    tables = [block for block in text.split("\n\n") if block.startswith("|")]
    assert tables
    for table in tables:
        widths = {len(line) for line in table.splitlines()}
        assert len(widths) == 1, table  # padded: the source lines up as well
    expected = "| a   |   b |\n|:----|----:|\n| x   | 1.0 |"
    assert markdown_table(["a", "b"], [["x", "1.0"]]) == expected  # ':' aligns on GitHub


def test_every_figure_is_referenced_relatively_with_a_caption(fixed_report):
    path, text = fixed_report
    lines = text.splitlines()
    references = [i for i, line in enumerate(lines) if line.startswith("![")]
    assert len(references) == 5  # two map grids, three severity curves
    for index in references:
        target = re.match(r"!\[[^\]]+\]\(([^)]+)\)", lines[index]).group(1)
        assert not Path(target).is_absolute() and (path.parent / target).is_file()
        assert lines[index + 2].startswith("*") and lines[index + 2].endswith("*")


def test_figures_have_expected_pixel_size(fixed_report):
    path, _ = fixed_report
    figures = path.parent / "figures"
    # 2 samples x 4 settings = 8 rows; 3 methods: input, 3 x (map, mask), ground truth.
    assert grid_pixel_size(8, 3) == (1000, 1032)  # 40 px labels + 8 x 120; 32 + 8 x 120 + 40
    for name in ("maps-default-carpet.png", "maps-default-wood.png"):
        assert Image.open(figures / name).size == (1000, 1032)
    assert CURVE_PIXEL_SIZE == (360, 240)
    for name in (
        "severity-mean-diff.png",
        "severity-ours.png",
        "severity-ours_components_G.S_.png",
    ):
        assert Image.open(figures / name).size == CURVE_PIXEL_SIZE


def test_report_to_other_output_links_figures_beside_it(tmp_path):
    store = write_fixed_run(tmp_path / "runs")
    output = write_report(store.root, tmp_path / "out" / "r.md")
    text = output.read_text(encoding="utf-8")
    assert "](figures/maps-default-carpet.png)" in text
    assert (tmp_path / "out" / "figures" / "maps-default-carpet.png").is_file()


def test_run_without_variants_clean_or_severities_leaves_those_sections_out(tmp_path):
    store = write_fixed_run(tmp_path, methods=("mean-diff", "ours"), settings=("hard",))
    text = write_report(store.root).read_text(encoding="utf-8")
    assert "## Ablation" not in text and "## Graded severities" not in text
    assert "Needs the `clean` setting and at least one other in the same run." in text


def test_native_tables_say_when_no_method_has_a_native_threshold(tmp_path):
    store = write_fixed_run(tmp_path, methods=("mean-diff",), settings=("clean",), arrays=False)
    text = write_report(store.root).read_text(encoding="utf-8")
    assert "No method in this run has a native threshold." in text
    assert "## Anomaly maps" not in text  # the store keeps no sample maps


def test_run_without_rows_says_so(tmp_path):
    store = write_fixed_run(tmp_path, methods=())
    text = write_report(store.root).read_text(encoding="utf-8")
    assert text.endswith("No finished results yet.\n")


def test_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))} is not a run folder"):
        render_report(RunStore(tmp_path), tmp_path / "figures", tmp_path)


def test_figure_writers_refuse_empty_input(tmp_path):
    with pytest.raises(ValueError, match=r"map grid .*grid.png: expected at least one row"):
        write_map_grid(tmp_path / "grid.png", [], ["m"], {"m": "m"})
    with pytest.raises(ValueError, match=r"severity curve .*curve.png: expected at least one"):
        write_severity_curve(tmp_path / "curve.png", "m", {"general": {"val": []}}, {"val": "v"})


def test_map_grid_shows_missing_maps_and_thresholds_as_na(tmp_path):
    import numpy as np

    row = GridRow(
        label="clean · 000",
        image=np.zeros((8, 8, 3), np.uint8),
        gt_mask=np.zeros((8, 8), bool),
        anomaly_maps={"a": np.ones((8, 8), np.float32)},  # constant: the scale is widened
        val_thresholds={"a": None},
    )
    write_map_grid(tmp_path / "grid.png", [row], ["a", "b"], {"a": "a", "b": "b"})
    assert Image.open(tmp_path / "grid.png").size == grid_pixel_size(1, 2)


def test_graded_run_of_mean_diff_draws_severity_curves(tmp_path, tiny_dataset_root):
    from bench.method import parse_method_spec
    from bench.runner import RunConfig, Runner, SettingSpec, open_store

    config = RunConfig(
        methods=(parse_method_spec("mean-diff"),),
        dataset="folder",
        data_root=str(tiny_dataset_root),
        classes=("dots",),
        settings=(SettingSpec("clean"), SettingSpec("general", 1), SettingSpec("general", 5)),
        image_size=32,
    )
    store = open_store(config, tmp_path)
    Runner(config, store).run()
    row = store.read_result("mean-diff", "folder", "dots", "general@5")
    assert row["severity"] == 5 and row["predict_seconds"] > 0
    assert store.read_manifest()["methods"]["mean-diff"]["profile"] == "quick"
    text = write_report(store.root).read_text(encoding="utf-8")
    assert "| method    |   `clean` |   `general@1` |   `general@5` |" in text
    assert Image.open(store.root / "figures" / "severity-mean-diff.png").size == CURVE_PIXEL_SIZE
    # 3 kept defective images x 3 settings; one method.
    grid = Image.open(store.root / "figures" / "maps-folder-dots.png")
    assert grid.size == grid_pixel_size(9, 1)
    assert re.search(r"\bnan\b", text, flags=re.IGNORECASE) is None


def test_record_method_needs_a_manifest(tmp_path):
    store = RunStore(tmp_path / "run")
    with pytest.raises(ValueError, match=r"manifest.json: no readable manifest to add method 'm'"):
        store.record_method("m", {})
    store.write_manifest({"run_id": "run"})
    store.record_method("m", {"profile": "quick"})
    store.record_method("m", {"profile": "quick"})
    assert store.read_manifest()["methods"] == {"m": {"profile": "quick"}}


def test_footnotes_name_each_reason_once_with_all_its_methods():
    notes = Footnotes()
    notes.add("patchcore", "the method has no native threshold")
    notes.add("rd", "the method has no native threshold")
    notes.add("ours", "no defect region in the test masks", "wood")
    notes.add("ours", "no defect region in the test masks", "wood")
    assert notes.lines() == [
        "n/a — the method has no native threshold: patchcore, rd; "
        "no defect region in the test masks: ours (wood).",
        "",
    ]
    assert Footnotes().lines() == []


def test_speed_table_leaves_untrained_methods_out_of_the_training_base(fixed_report):
    _, text = fixed_report
    section = text.split("## Speed and memory")[1]
    rows = {
        cells[0]: cells
        for cells in (
            [cell.strip() for cell in line.strip("|").split("|")]
            for line in section.splitlines()
            if line.startswith("| ")
        )
    }
    header = rows["method"]
    train_ratio = header.index("train × fastest")
    # mean-diff trains 0.01 s; G.S (speed 3) trains 6 and 7 s, ours (speed 4) 8 and 9 s
    assert rows["mean-diff"][train_ratio] == "—"
    assert rows["ours"][train_ratio] == f"{8.5 / 6.5:.1f}×"
    memory = header.index("MiB train: peak (+added)")
    assert rows["ours"][memory] == "800 (+80)"
    assert rows["mean-diff"][header.index("latency × fastest")] == "1.0×"
