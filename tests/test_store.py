import json
import math

import numpy as np
import pytest

from bench.store import RunStore, atomic_write_json, read_json


def row(method="m", class_name="c", setting="clean", **metrics):
    return {
        "method": method,
        "dataset": "d",
        "class": class_name,
        "setting": setting,
        "metrics": {"f1_oracle": 0.5, **metrics},
        "fit": {},
    }


def test_result_round_trip_keeps_nan(tmp_path):
    store = RunStore(tmp_path)
    store.write_result(row(aupro=float("nan")))
    back = store.read_result("m", "d", "c", "clean")
    assert back["metrics"]["f1_oracle"] == 0.5
    assert math.isnan(back["metrics"]["aupro"])


def test_corrupt_result_is_treated_as_missing(tmp_path, caplog):
    store = RunStore(tmp_path)
    path = store.result_path("m", "d", "c", "clean")
    path.parent.mkdir(parents=True)
    path.write_text('{"method": "m", "metr')  # a partial write from an older tool
    assert store.read_result("m", "d", "c", "clean") is None
    assert "corrupt" in caplog.text and str(path) in caplog.text


def test_row_without_metrics_is_incomplete(tmp_path):
    store = RunStore(tmp_path)
    atomic_write_json(store.result_path("m", "d", "c", "clean"), {"method": "m"})
    assert store.read_result("m", "d", "c", "clean") is None


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "a" / "b.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "b.json"
    atomic_write_json(path, {"x": 1})
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        atomic_write_json(path, circular)
    assert json.loads(path.read_text()) == {"x": 1}


def test_iter_results_skips_corrupt_and_orders(tmp_path):
    store = RunStore(tmp_path)
    store.write_result(row(class_name="b"))
    store.write_result(row(class_name="a"))
    corrupt = store.result_path("m", "d", "z", "clean")
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text("garbage")
    assert [r["class"] for r in store.iter_results()] == ["a", "b"]


def test_method_keys_with_slashes_stay_inside_the_store(tmp_path):
    store = RunStore(tmp_path)
    path = store.result_path("ours(anomaly_source=/x/y)", "d", "c", "clean")
    assert path.parent.parent.parent.parent == tmp_path / "results"


def test_arrays_round_trip_and_corrupt(tmp_path):
    store = RunStore(tmp_path)
    path = store.maps_path("m", "d", "c", "clean")
    store.write_arrays(path, maps=np.arange(6, dtype=np.float32).reshape(1, 2, 3))
    assert np.array_equal(store.read_arrays(path)["maps"], np.arange(6).reshape(1, 2, 3))
    path.write_bytes(b"not a zip")
    assert store.read_arrays(path) is None
    assert store.read_arrays(tmp_path / "missing.npz") is None


def test_model_record_and_manifest(tmp_path):
    store = RunStore(tmp_path)
    assert store.read_manifest() is None
    store.write_manifest({"run_id": "r"})
    assert store.read_manifest() == {"run_id": "r"}
    assert store.read_model_record("m", "d", "c") is None
    store.write_model_record("m", "d", "c", {"fit_seconds": 1.5})
    assert store.read_model_record("m", "d", "c") == {"fit_seconds": 1.5}
    assert read_json(tmp_path / "nothing.json") is None
