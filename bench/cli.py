"""The ``bench`` command line: run, list, report, leaderboard, evaluate, predict."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(
    help="DefectBench: compare anomaly localizers on textures under lighting and colour shifts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
logger = logging.getLogger("bench")

ALL_SETTINGS = ("clean", "general", "hard")
DEFAULT_LEADERBOARD = Path("reports") / "LEADERBOARD.md"


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("timm", "PIL", "matplotlib", "anomalib", "lightning", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _parse_methods(text: str) -> list:
    from bench.method import METHODS, parse_method_spec, split_method_list

    try:
        items = split_method_list(text)
        if items == ["all"]:
            items = METHODS.names()
        specs = [parse_method_spec(item) for item in items]
    except (ValueError, LookupError) as error:
        raise typer.BadParameter(str(error), param_hint="--methods") from error
    if not specs:
        raise typer.BadParameter("no method given", param_hint="--methods")
    keys = [spec.key for spec in specs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise typer.BadParameter(f"listed twice: {', '.join(duplicates)}", param_hint="--methods")
    return specs


def _parse_settings(text: str, severity: str | None) -> list:
    from bench.runner import SettingSpec
    from bench.settings import SETTINGS

    names = list(ALL_SETTINGS) if text == "all" else _split(text)
    if not names:
        raise typer.BadParameter("no setting given", param_hint="--setting")
    for name in names:
        try:
            SETTINGS.get(name)
        except LookupError as error:
            raise typer.BadParameter(str(error), param_hint="--setting") from error
    severities: list[int | None] = [None]
    if severity:
        try:
            severities = [int(part) for part in _split(severity)]
        except ValueError as error:
            message = f"expected whole numbers such as 1,3,5, got {severity!r}"
            raise typer.BadParameter(message, param_hint="--severity") from error
        bad = [value for value in severities if not 1 <= value <= 5]
        if bad:
            raise typer.BadParameter(
                f"severities must be 1 to 5, got {bad}", param_hint="--severity"
            )
    if severity and all(name == "clean" for name in names):
        message = "clean images have no severity; it grades the shifts (general, hard)"
        raise typer.BadParameter(message, param_hint="--severity")
    specs = []
    for name in names:
        if name == "clean":
            specs.append(SettingSpec("clean"))
            continue
        specs.extend(SettingSpec(name, value) for value in severities)
    return specs


class _RichReporter:
    """Draws one bar per training or evaluation step and prints a line per finished job."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def start_task(self, description: str, total: int):
        return self.progress.add_task(escape(description), total=total)

    def advance(self, task, completed: int, total: int) -> None:
        self.progress.update(task, completed=completed, total=max(total, 1))

    def finish_task(self, task) -> None:
        self.progress.remove_task(task)

    def job_done(self, line: str) -> None:
        self.progress.console.print(f"[green]✓[/] {escape(line)}")  # "[hard]" is no style


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@app.command()
def run(
    methods: Annotated[
        str,
        typer.Option(help="Comma-separated methods, with options: 'ours,ours(components=G.S)'."),
    ] = "all",
    setting: Annotated[
        str, typer.Option("--setting", "--settings", help="clean, general, hard, or 'all'.")
    ] = "all",
    severity: Annotated[
        str | None, typer.Option(help="Severities 1-5 for non-clean settings, e.g. '1,3,5'.")
    ] = None,
    dataset: Annotated[str, typer.Option(help="Registered dataset (see 'bench list').")] = (
        "default"
    ),
    data_root: Annotated[
        Path | None,
        typer.Option(help="Dataset folder (not needed for 'default').", file_okay=False),
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated classes; default: the dataset's own.")
    ] = None,
    profile: Annotated[str, typer.Option(help="quick (default), cpu or paper.")] = "quick",
    seed: Annotated[int, typer.Option(help="Seed for training and perturbations.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    image_size: Annotated[int, typer.Option(help="Evaluation resolution in pixels.", min=16)] = 256,
    runs_dir: Annotated[Path, typer.Option(help="Folder that holds runs.")] = Path("runs"),
    run_id: Annotated[
        str | None, typer.Option(help="Name of the run folder; default: derived from arguments.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Train and evaluate methods; re-running the same command resumes an interrupted run."""
    _configure_logging(verbose)
    from bench.report import write_report
    from bench.runner import RunConfig, Runner, dataset_adapter, open_store, resolve_device

    specs = _parse_methods(methods)
    settings = _parse_settings(setting, severity)
    try:
        resolved_device = resolve_device(device)
    except (ValueError, RuntimeError) as error:
        raise typer.BadParameter(str(error), param_hint="--device") from error
    if data_root is not None and not data_root.is_dir():
        raise typer.BadParameter(f"{data_root} is not a folder", param_hint="--data-root")
    unsupported = [spec.key for spec in specs if profile not in _method_profiles(spec.name)]
    if unsupported:
        offered = sorted({p for spec in specs for p in _method_profiles(spec.name)})
        message = (
            f"profile {profile!r} is not offered by {', '.join(unsupported)}; "
            f"expected one of {', '.join(offered)}"
        )
        raise typer.BadParameter(message, param_hint="--profile")

    config = RunConfig(
        methods=tuple(specs),
        dataset=_dataset_name(dataset),
        data_root=str(data_root) if data_root else None,
        classes=tuple(_split(classes)) or None,
        settings=tuple(settings),
        profile=profile,
        seed=seed,
        image_size=image_size,
        device=str(resolved_device),
    )
    if config.data_root is not None or config.dataset != "default":
        # Check the data's folder and classes before a run folder is made for them.
        try:
            dataset_adapter(config).classes()
        except (ValueError, LookupError, OSError) as error:
            raise typer.BadParameter(str(error), param_hint="--data-root / --classes") from error
    try:
        store = open_store(config, runs_dir, run_id)
        console.print(f"run folder: [bold]{store.root}[/]")
        with _progress() as progress:
            Runner(config, store, _RichReporter(progress)).run()
        report = write_report(store.root)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: re-run the same command to resume.")
        raise typer.Exit(130) from None
    except (ValueError, LookupError, OSError, RuntimeError) as error:
        logger.debug("run failed", exc_info=True)
        raise _fail(str(error)) from error
    console.print(f"report: [bold]{report}[/]")


def _method_profiles(name: str) -> tuple[str, ...]:
    from bench.method import METHODS

    return METHODS.get(name).profiles


def _dataset_name(name: str) -> str:
    from bench.data import DATASETS

    try:
        return DATASETS.entry(name).name
    except LookupError as error:
        raise typer.BadParameter(str(error), param_hint="--dataset") from error


@app.command("list")
def list_(
    kind: Annotated[str, typer.Argument(help="methods, datasets or settings.")] = "methods",
) -> None:
    """Show what is registered, with one-line descriptions and where each comes from."""
    from rich.table import Table

    from bench.data import DATASETS
    from bench.method import METHODS
    from bench.settings import SETTINGS

    registries = {"methods": METHODS, "datasets": DATASETS, "settings": SETTINGS}
    if kind not in registries:
        message = f"expected one of {', '.join(registries)}, got {kind!r}"
        raise typer.BadParameter(message, param_hint="KIND")
    table = Table(title=kind)
    table.add_column("name")
    table.add_column("aliases")
    table.add_column("description")
    table.add_column("origin")
    for entry in registries[kind]:
        origin = entry.origin.split(" (")[0]  # the module path, without the source file
        table.add_row(entry.name, ", ".join(entry.aliases), entry.description, origin)
    Console().print(table)


@app.command()
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run folder, e.g. runs/default-quick-1a2b3c4d.")
    ],
    output: Annotated[
        Path | None, typer.Option(help="Markdown file to write; default: RUN/report.md.")
    ] = None,
) -> None:
    """Render the markdown report (and figures) of a finished or interrupted run."""
    _configure_logging(False)
    from bench.report import write_report
    from bench.store import RunStore

    if not (run_dir / "manifest.json").is_file():
        raise typer.BadParameter(
            f"{run_dir} is not a run folder (no manifest.json)", param_hint="RUN_DIR"
        )
    try:
        path = write_report(RunStore(run_dir).root, output)
    except (ValueError, OSError) as error:
        raise _fail(str(error)) from error
    console.print(f"report: [bold]{path}[/]")


@app.command()
def leaderboard(
    run_dirs: Annotated[
        list[Path] | None, typer.Argument(help="Run folders to merge, e.g. runs/*.")
    ] = None,
    output: Annotated[
        Path, typer.Option(help="Markdown file to write.", dir_okay=False)
    ] = DEFAULT_LEADERBOARD,
    separate: Annotated[
        bool,
        typer.Option(
            help="Give runs of another dataset, profile, resolution or class set their own "
            "tables instead of refusing them."
        ),
    ] = False,
) -> None:
    """Merge finished runs into one markdown leaderboard, each row linked to its manifest."""
    _configure_logging(False)
    from bench.leaderboard import write_leaderboard

    if not run_dirs:
        raise typer.BadParameter("no run folder given; expected e.g. runs/*", param_hint="RUN_DIRS")
    not_runs = [str(path) for path in run_dirs if not (path / "manifest.json").is_file()]
    if not_runs:
        message = f"not a run folder (no manifest.json): {', '.join(not_runs)}"
        raise typer.BadParameter(message, param_hint="RUN_DIRS")
    try:
        path = write_leaderboard(run_dirs, output, separate)
    except (ValueError, OSError) as error:
        raise _fail(str(error)) from error
    console.print(f"leaderboard: [bold]{path}[/]")


@app.command()
def evaluate(
    dataset: Annotated[str, typer.Option(help="Registered dataset the maps belong to.")],
    maps: Annotated[
        Path,
        typer.Option(help="Folder of .npy maps: <maps>/<class>/test/<defect>/<name>.npy."),
    ],
    data_root: Annotated[Path | None, typer.Option(help="Dataset folder.")] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated classes.")] = None,
    image_size: Annotated[int, typer.Option(help="Evaluation resolution.", min=16)] = 256,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics here.")] = None,
) -> None:
    """Score anomaly maps produced by any external tool against a dataset's masks."""
    _configure_logging(False)
    from bench.evaluate import evaluate_folder, format_table

    if not maps.is_dir():
        raise typer.BadParameter(f"{maps} is not a folder", param_hint="--maps")
    try:
        results = evaluate_folder(
            _dataset_name(dataset), data_root, maps, _split(classes) or None, image_size
        )
    except (ValueError, LookupError, OSError) as error:
        raise _fail(str(error)) from error
    Console().print(format_table(results))
    if json_out is not None:
        from bench.store import atomic_write_json

        atomic_write_json(json_out, results)
        console.print(f"metrics written to [bold]{json_out}[/]")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files to score.")],
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            "--checkpoint",
            help="A saved model folder: runs/<id>/models/<method>/<dataset>/<class>.",
        ),
    ],
    output: Annotated[Path, typer.Option(help="Folder for maps and masks.")] = Path("predictions"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    image_size: Annotated[int, typer.Option(help="Resolution images are read at.", min=16)] = 256,
) -> None:
    """Write defect maps (.npy, .png) and binary masks for your own images from a saved model."""
    _configure_logging(False)
    from bench.predict import predict_images

    missing = [str(path) for path in images if not path.is_file()]
    if missing:
        raise typer.BadParameter(f"no such file: {', '.join(missing)}", param_hint="IMAGES")
    try:
        written = predict_images(model, images, output, device, image_size)
    except (ValueError, LookupError, OSError) as error:
        raise _fail(str(error)) from error
    console.print(f"wrote {len(written)} maps to [bold]{output}[/]")


def main() -> None:
    """Entry point that keeps tracebacks for real bugs only."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
