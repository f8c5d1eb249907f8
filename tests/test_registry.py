import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.method import METHODS
from bench.registry import Registry, RegistryError


def make_registry() -> Registry:
    return Registry("widget", "defectbench.test-widgets", None)


def test_register_and_get_by_name_and_alias():
    registry = make_registry()

    @registry.register("alpha", description="first", aliases=("a",))
    class Alpha:
        pass

    assert registry.get("alpha") is Alpha
    assert registry.get("a") is Alpha
    assert registry.entry("a").name == "alpha"
    assert registry.names() == ["alpha"]
    assert "a" in registry and "beta" not in registry


def test_duplicate_name_names_both_origins():
    registry = make_registry()

    @registry.register("alpha")
    class First:
        pass

    class Second:
        pass

    with pytest.raises(RegistryError) as info:
        registry.add("alpha", Second)
    message = str(info.value)
    assert "duplicate widget name 'alpha'" in message
    assert "First" in message and "Second" in message


def test_alias_clashing_with_a_name_is_rejected():
    registry = make_registry()
    registry.add("alpha", object())
    with pytest.raises(RegistryError, match="duplicate widget name 'alpha'"):
        registry.add("beta", object(), aliases=("alpha",))


def test_unknown_name_suggests_close_match_and_lists_valid():
    registry = make_registry()
    registry.add("patchcore", object())
    registry.add("pyramidflow", object())
    with pytest.raises(RegistryError) as info:
        registry.get("patchcor")
    message = str(info.value)
    assert "Did you mean 'patchcore'" in message
    assert "Valid widgets: patchcore, pyramidflow." in message


def test_unknown_name_without_close_match_has_no_suggestion():
    registry = make_registry()
    registry.add("patchcore", object())
    with pytest.raises(RegistryError) as info:
        registry.get("zzz")
    assert "Did you mean" not in str(info.value)


def test_builtin_methods_are_discovered_without_a_hand_kept_list():
    assert "mean-diff" in METHODS.names()
    assert METHODS.get("meandiff") is METHODS.get("mean-diff")


PLUGIN_SOURCE = textwrap.dedent(
    '''
    """An out-of-tree method used by the tests."""
    from pathlib import Path

    import torch

    from bench.method import Method


    class BrightSpot(Method):
        """Scores pixels by brightness."""

        description = "third-party test method: brightness as anomaly score"
        profiles = ("quick",)

        def fit(self, normal_images, context):
            self.level = float(normal_images.mean())

        def predict(self, images):
            return images.mean(dim=1) - getattr(self, "level", 0.0)

        def save(self, directory: Path):
            (directory / "level.txt").write_text(str(self.level))

        def load(self, directory: Path):
            self.level = float((directory / "level.txt").read_text())
    '''
)


def install_fake_plugin(root: Path) -> Path:
    """Lay out a package and its dist-info as pip would, so entry points find it."""
    package = root / "brightspot_plugin"
    package.mkdir()
    (package / "__init__.py").write_text(PLUGIN_SOURCE)
    dist_info = root / "brightspot_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: brightspot-plugin\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[defectbench.methods]\nbright-spot = brightspot_plugin:BrightSpot\n"
    )
    return root


def test_entry_point_plugin_is_registered(tmp_path, monkeypatch):
    install_fake_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("method", "defectbench.methods", None)
    registry.load_plugins()
    entry = registry.entry("bright-spot")
    assert entry.obj.__name__ == "BrightSpot"
    assert "brightspot-plugin" in entry.origin
    assert entry.description.startswith("third-party test method")


def test_entry_point_duplicating_a_builtin_is_rejected(tmp_path, monkeypatch):
    install_fake_plugin(tmp_path)
    entry_points = tmp_path / "brightspot_plugin-0.1.dist-info" / "entry_points.txt"
    entry_points.write_text("[defectbench.methods]\nmean-diff = brightspot_plugin:BrightSpot\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("method", "defectbench.methods", None)
    registry.add("mean-diff", METHODS.get("mean-diff"))
    with pytest.raises(RegistryError, match="duplicate method name 'mean-diff'.*entry point"):
        registry.load_plugins()


def test_plugin_runs_end_to_end_through_the_cli(tmp_path, tiny_dataset_root):
    site = tmp_path / "site"
    site.mkdir()
    install_fake_plugin(site)
    env = {**__import__("os").environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    listing = subprocess.run(
        [sys.executable, "-m", "bench.cli", "list", "methods"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert listing.returncode == 0, listing.stderr
    assert "bright-spot" in listing.stdout
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "run",
            "--methods",
            "bright-spot",
            "--dataset",
            "folder",
            "--data-root",
            str(tiny_dataset_root),
            "--setting",
            "clean",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--device",
            "cpu",
            "--image-size",
            "32",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = list((tmp_path / "runs").rglob("results/bright-spot/*/*/clean.json"))
    assert len(rows) == 2  # two classes in the tiny dataset


def _method_registry() -> Registry:
    from bench.method import _adopt_registration

    return Registry("method", "defectbench.test-methods", None, on_add=_adopt_registration)


def test_method_class_takes_its_registered_name_and_description():
    from methods.mean_diff import MeanDiff

    registry = _method_registry()

    @registry.register("floor-copy", description="a floor")
    class Floor(MeanDiff):
        name = ""
        description = ""

    assert Floor.name == "floor-copy"
    assert Floor.description == "a floor"
    assert METHODS.get("mean-diff").name == "mean-diff"


def test_method_class_stating_another_name_is_refused():
    from methods.mean_diff import MeanDiff

    registry = _method_registry()

    class Named(MeanDiff):
        name = "named"

    with pytest.raises(RegistryError, match="says name='named' but is registered as 'other'"):
        registry.add("other", Named)
    assert "other" not in registry
