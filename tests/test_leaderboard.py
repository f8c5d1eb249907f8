import re

import pytest
from fixed_run import write_fixed_run
from typer.testing import CliRunner

from bench.cli import app
from bench.leaderboard import IncompatibleRunsError, open_runs, write_leaderboard

runner = CliRunner(env={"COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"})


def flat(text: str) -> str:
    for char in "│╭╮╰╯─":
        text = text.replace(char, " ")
    return " ".join(text.split())


def two_runs(root, **second):
    a = write_fixed_run(root, "a", methods=("mean-diff", "ours"), settings=("clean", "hard"))
    options = dict(methods=("ours(components=G.S)",), settings=("clean",), offset=0.3)
    b = write_fixed_run(root, "b", arrays=False, **(options | second))
    return a.root, b.root


def table_rows(text: str, heading: str) -> list[list[str]]:
    block = text.split(heading, 1)[1].split("\n\n")[1]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()]


def test_compatible_runs_merge_ranked_by_val_f1_with_manifest_links(tmp_path):
    a, b = two_runs(tmp_path / "runs")
    output = write_leaderboard([a, b], tmp_path / "reports" / "LEADERBOARD.md")
    text = output.read_text(encoding="utf-8")

    assert "## default · profile `quick` · 16 px · classes: carpet, wood" in text
    clean = table_rows(text, "### setting `clean`")
    assert [row[1] for row in clean[2:]] == ["ours(components=G.S)‡§", "ours", "mean-diff"]
    assert [row[0] for row in clean[2:]] == ["1", "2", "3"]
    assert clean[2][2] == "[b](../runs/b/manifest.json)"
    assert clean[3][2] == "[a](../runs/a/manifest.json)"
    assert clean[3][3] == "resnet18, pretrained" and clean[2][3] == "resnet18, random weights"
    assert "F1 oracle (upper bound)" in clean[0][5]
    hard = table_rows(text, "### setting `hard`")
    assert [row[1] for row in hard[2:]] == ["ours", "mean-diff"]  # run b has no hard rows
    assert "n/a — the method has no native threshold: mean-diff." in text
    assert re.search(r"\bnan\b", text, flags=re.IGNORECASE) is None
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert (output.parent / target).is_file()


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        ({"profile": "paper"}, "profile 'quick' vs 'paper'"),
        ({"image_size": 32}, "evaluation resolution 16 vs 32"),
        ({"dataset": "mvtec"}, "dataset 'default' vs 'mvtec'"),
        ({"classes": ("carpet",)}, "classes 'carpet, wood' vs 'carpet'"),
    ],
)
def test_incompatible_runs_are_refused_with_the_reason(tmp_path, second, reason):
    a, b = two_runs(tmp_path / "runs", **second)
    output = tmp_path / "LEADERBOARD.md"
    with pytest.raises(IncompatibleRunsError) as caught:
        write_leaderboard([a, b], output)
    message = str(caught.value)
    assert reason in message and str(a) in message and str(b) in message
    assert "--separate" in message
    assert not output.exists()


def test_separate_gives_incompatible_runs_their_own_tables(tmp_path):
    a, b = two_runs(tmp_path / "runs", profile="paper")
    text = write_leaderboard([a, b], tmp_path / "L.md", separate=True).read_text()
    assert "## default · profile `quick` · 16 px" in text
    assert "## default · profile `paper` · 16 px" in text
    assert "Kept apart from the first tables: profile 'quick' vs 'paper'." in text


def test_unfinished_methods_and_runs_are_left_out_and_named(tmp_path):
    a, b = two_runs(tmp_path / "runs")
    (a / "results" / "ours" / "default" / "wood" / "hard.json").unlink()
    empty = write_fixed_run(tmp_path / "runs", "empty", methods=()).root
    text = write_leaderboard([a, b, empty], tmp_path / "L.md").read_text()
    assert f"Left out (no finished results yet): `{empty}`." in text
    assert "Left out (unfinished): ours in a (1 of 2 classes finished)." in text


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: [], "no run folders given"),
        (lambda root: [root / "nowhere"], "nowhere is not a run folder"),
        (lambda root: [two_runs(root)[0]] * 2, "is given twice"),
        (
            lambda root: [write_fixed_run(root, "e", methods=()).root],
            "none of the runs has finished results yet",
        ),
    ],
)
def test_bad_run_lists_are_errors(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        open_runs(make(tmp_path))


def test_cli_writes_the_default_path_and_says_where(tmp_path, monkeypatch):
    a, b = two_runs(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["leaderboard", "runs/a", "runs/b"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "reports" / "LEADERBOARD.md"
    assert "[a](../runs/a/manifest.json)" in written.read_text()
    assert "leaderboard:" in flat(result.stderr)


def test_cli_output_option(tmp_path):
    a, b = two_runs(tmp_path / "runs")
    output = tmp_path / "elsewhere" / "board.md"
    result = runner.invoke(app, ["leaderboard", str(a), str(b), "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert "[a](../runs/a/manifest.json)" in output.read_text()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "no run folder given"),
        (["{root}/nowhere"], 2, "not a run folder (no manifest.json): {root}/nowhere"),
        (["{root}/runs/a", "{root}/runs/b", "--separate"], 0, "leaderboard:"),
        (["{root}/runs/a", "{root}/runs/b"], 1, "cannot share a leaderboard"),
        (["{root}/runs/empty"], 1, "none of the runs has finished results yet"),
    ],
)
def test_cli_exit_codes_and_errors_on_stderr(tmp_path, args, code, message):
    two_runs(tmp_path / "runs", profile="paper")
    write_fixed_run(tmp_path / "runs", "empty", methods=())
    args = [arg.format(root=tmp_path) for arg in args]
    result = runner.invoke(app, ["leaderboard", *args, "--output", str(tmp_path / "L.md")])
    assert result.exit_code == code, result.output
    assert message.format(root=tmp_path) in flat(result.stderr)
    assert result.stdout == ""


def test_cli_report_of_a_fixed_run(tmp_path):
    store = write_fixed_run(tmp_path / "runs", arrays=False)
    result = runner.invoke(app, ["report", str(store.root), "--output", str(tmp_path / "r.md")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.md").read_text().startswith("# DefectBench report — fixed-run")
    missing = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert "not a run folder" in flat(missing.stderr)
