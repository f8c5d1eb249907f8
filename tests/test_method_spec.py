from dataclasses import dataclass

import pytest
import torch

from bench.method import (
    METHODS,
    Method,
    parse_method_spec,
    parse_options,
    split_method_list,
)


def test_split_method_list_respects_parentheses():
    text = "ours, ours(components=G.S.C,opacity=0.5),patchcore"
    assert split_method_list(text) == ["ours", "ours(components=G.S.C,opacity=0.5)", "patchcore"]


@pytest.mark.parametrize("text", ["a(b=1", "a)b", "x(y=(1)"])
def test_split_method_list_rejects_unbalanced(text):
    with pytest.raises(ValueError, match="unbalanced"):
        split_method_list(text)


def test_spec_resolves_alias_and_sorts_options():
    spec = parse_method_spec("meandiff")
    assert spec.name == "mean-diff"
    assert spec.key == "mean-diff"


def test_spec_unknown_method_suggests():
    with pytest.raises(LookupError, match="Did you mean 'mean-diff'"):
        parse_method_spec("mean-dif")


def test_spec_garbage_is_rejected():
    with pytest.raises(ValueError, match="cannot read method"):
        parse_method_spec("9lives!")


@dataclass(frozen=True)
class _Options:
    steps: int | None = None
    rate: float = 0.1
    flag: bool = False
    label: str = "x"


class _Dummy(Method):
    name = "dummy"
    Options = _Options

    def fit(self, normal_images, context):
        pass

    def predict(self, images):
        return images[:, 0]

    def save(self, directory):
        pass

    def load(self, directory):
        pass


def test_parse_options_converts_types():
    options = parse_options(_Dummy, {"steps": "5", "rate": "0.5", "flag": "yes", "label": "G.S"})
    assert options == _Options(steps=5, rate=0.5, flag=True, label="G.S")
    assert parse_options(_Dummy, {"steps": "none"}).steps is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"nope": "1"}, "has no option 'nope'; valid options: steps, rate, flag, label"),
        ({"steps": "many"}, r"dummy\(steps=...\): expected int, got 'many'"),
        ({"flag": "maybe"}, r"expected true/false, got 'maybe'"),
        ({"rate": "fast"}, r"expected float"),
    ],
)
def test_parse_options_errors_name_the_option(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_options(_Dummy, raw)


def test_option_without_value_is_rejected():
    with pytest.raises(ValueError, match="needs key=value"):
        parse_method_spec("mean-diff(fast)")


def test_method_rejects_unknown_profile():
    with pytest.raises(ValueError, match="has no profile 'huge'; expected one of quick, paper"):
        _Dummy(profile="huge")


def test_mean_diff_has_no_options():
    with pytest.raises(ValueError, match="has no option 'k'; valid options: none"):
        parse_method_spec("mean-diff(k=1)")


def test_mean_diff_map_is_distance_to_mean(tmp_path):
    from bench.method import FitContext

    method = METHODS.get("mean-diff")()
    normal = torch.full((4, 3, 8, 8), 0.5)
    method.fit(normal, FitContext(torch.device("cpu"), 0, "quick", tmp_path))
    image = torch.full((1, 3, 8, 8), 0.5)
    image[0, :, 4, 4] = 1.0
    anomaly_map = method.predict(image)
    assert anomaly_map.shape == (1, 8, 8)
    # distance sqrt(3 * 0.25) at the centre, averaged over a 5 x 5 window
    assert anomaly_map[0, 4, 4].item() == pytest.approx((3 * 0.25) ** 0.5 / 25, rel=1e-5)
    assert anomaly_map[0, 0, 0].item() == 0.0
    method.save(tmp_path)
    other = METHODS.get("mean-diff")()
    other.load(tmp_path)
    assert torch.equal(other.predict(image), anomaly_map)


def test_mean_diff_errors():
    method = METHODS.get("mean-diff")()
    with pytest.raises(RuntimeError, match="before fit"):
        method.predict(torch.zeros(1, 3, 4, 4))
    with pytest.raises(RuntimeError, match="save\\(\\) called before fit"):
        method.save(None)
    with pytest.raises(ValueError, match="N >= 1"):
        method.fit(torch.zeros(0, 3, 4, 4), None)
