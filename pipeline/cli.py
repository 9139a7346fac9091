"""``lrsched``: the front door. Each command parses its arguments, calls one function, reports.

Every ``dvc.yaml`` stage runs one of ``generate``, ``train`` and ``plot``; the rest are what a
user reaches for: ``schedulers``, ``preview``, ``validate`` and ``ui``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click
from rich.console import Console
from rich.table import Table

from pipeline.params import Params, ParamsError, ScheduleCheck, load_params
from pipeline.tracking import TrackingUnavailable

if TYPE_CHECKING:  # importing the stage imports torch; the engines, Ray
    from pipeline.execution import Engine
    from stages.train import TrainSummary

PATH = click.Path(path_type=Path)
EXISTING = click.Path(path_type=Path, exists=True)
params_option = click.option(
    "--params",
    "params_path",
    type=PATH,
    default=Path("params.yaml"),
    show_default=True,
    help="The params file to read.",
)


@contextlib.contextmanager
def _params_errors():
    try:
        yield
    except ParamsError as error:
        raise click.ClickException(str(error)) from None


def _load(path: Path, schedules: ScheduleCheck = "trial") -> Params:
    with _params_errors():
        return load_params(path, schedules)


@contextlib.contextmanager
def _tracking_errors():
    try:
        yield
    except TrackingUnavailable as error:
        raise click.ClickException(str(error)) from None


@contextlib.contextmanager
def _joined(params_path: Path, stage: Literal["train", "tune"]) -> Iterator[Engine]:
    """The stage's engine, joined before torch is imported (the schedules' parsing and the
    stage import it): a cluster's workers start while this process imports torch. An
    unreachable cluster stops the stage here, before the store is touched."""
    from pipeline.execution import joined

    with _engine_errors(), joined(_load(params_path, schedules="skip"), stage) as engine:
        yield engine


@contextlib.contextmanager
def _engine_errors():
    # Only the stages that train import the engines: plot's code (and its DVC deps) stay apart.
    from pipeline.execution import ExecutionError

    try:
        yield
    except ExecutionError as error:
        raise click.ClickException(str(error)) from None


def _console(wrap: bool = False) -> Console:
    # Numeric tables keep their natural width: never truncated to a guessed 80 columns when
    # piped. Prose tables (wrap=True) fold to the terminal instead.
    if wrap:
        return Console(highlight=False)
    return Console(highlight=False, soft_wrap=True, width=1000)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lrsched")
def cli() -> None:
    """Reproducible learning-rate-scheduler experiments: DVC stages, MLflow records."""


@cli.command()
@params_option
@click.option("--train", "train_path", type=PATH, required=True, help="Train set CSV to write.")
@click.option("--test", "test_path", type=PATH, required=True, help="Test set CSV to write.")
@click.option(
    "--workloads",
    "workloads_path",
    type=PATH,
    help="Also write every workload's train, validation and test sets (CSV), for tune.",
)
def generate(
    params_path: Path, train_path: Path, test_path: Path, workloads_path: Path | None
) -> None:
    """Stage generate: write the two-moons train and test sets (and the workloads' sets)."""
    from stages import generate as stage

    sizes = stage.run(_load(params_path, schedules="skip"), train_path, test_path)
    levels = sizes["noise levels"]
    per_level = f" at each of {levels} noise levels" if levels > 1 else ""
    click.echo(
        f"wrote {train_path} ({sizes['train']} points x {sizes['seeds']} seeds{per_level}) and "
        f"{test_path} ({sizes['test']} points{per_level})"
    )
    if workloads_path is not None:
        names = stage.write_workloads(_load(params_path, schedules="skip"), workloads_path)
        click.echo(f"wrote {workloads_path} ({len(names)} workloads: {', '.join(names)})")


@cli.command()
@params_option
@click.option("--train", "train_data", type=EXISTING, required=True, help="Train set CSV.")
@click.option("--test", "test_data", type=EXISTING, required=True, help="Test set CSV.")
@click.option(
    "--curves", "curves_dir", type=PATH, required=True, help="Folder for per-step tables."
)
@click.option(
    "--models", "models_dir", type=PATH, required=True, help="Folder for trained weights."
)
@click.option("--metrics", type=PATH, required=True, help="Final metrics JSON.")
@click.option("--steps", type=PATH, required=True, help="All runs' steps in one CSV, for DVC.")
@click.option("--ranking", type=PATH, required=True, help="The ranking table (markdown).")
@click.option(
    "--report",
    type=PATH,
    required=True,
    help="The report on the tutorial's claims (markdown; links the plot stage's figures).",
)
@click.option(
    "--figures",
    "figures_link",
    default="../figures",
    show_default=True,
    help="Where the report links the figures, relative to the report.",
)
@click.option(
    "--tuned-claims",
    "tuned_claims",
    type=EXISTING,
    help="The tune stage's claims.md: the report adds the claims re-tested after equal tuning.",
)
def train(params_path: Path, **paths: Any) -> None:
    """Stage train: train LogicNet under every schedule; record each run to MLflow."""
    from pipeline.background import Tracker

    # First, before torch is imported (by the stage, and by parsing the schedules): MLflow
    # imports in its own process meanwhile.
    with Tracker() as tracker, _joined(params_path, "train") as engine:
        from stages import train as stage

        params = _load(params_path, schedules="parse")
        bar = _StepBar(params.train.epochs)
        with _params_errors(), _tracking_errors(), _engine_errors(), bar:
            summary = stage.run(
                params,
                stage.TrainPaths(params_path, **paths),
                tracker,
                engine,
                on_start=lambda: bar.start(_train_plan(params, engine)),
                on_step=bar.step,
            )
    _echo_train_summary(summary)


@cli.command()
@params_option
@click.option(
    "--data", "data", type=EXISTING, required=True, help="The workloads' sets (generate's CSV)."
)
@click.option(
    "--out", "out_dir", type=PATH, required=True,
    help="Folder for trials, targets, choices, re-runs, the report and figures.",
)  # fmt: skip
@click.option("--metrics", type=PATH, required=True, help="The scores JSON, for dvc metrics.")
def tune(params_path: Path, **paths: Any) -> None:
    """Stage tune: every schedule tuned on the same budget over the workloads, then scored."""
    from pipeline.background import Tracker

    with Tracker() as tracker, _joined(params_path, "tune") as engine:
        from stages import tune as stage

        params = _load(params_path, schedules="parse")
        plan = params.search
        assert plan is not None
        tuned = [w for w in params.workloads if not w.held_out]
        click.echo(
            f"tune: {len(plan.spaces)} schedules x {plan.studies} studies x {plan.trials} trials"
            f" on {len(tuned)} workloads ({len(params.workloads) - len(tuned)} held out),"
            f" then {params.tuning.reruns} re-runs of each choice"
        )
        bar = _UnitBar("tune", stage.total_updates(params), "trial-updates")
        with _params_errors(), _tracking_errors(), _engine_errors(), bar:
            summary = stage.run(
                params, stage.TunePaths(params_path, **paths), tracker, engine, bar.advance
            )
    scores = summary.scores
    best = max(scores["benchmark_score"], key=lambda s: (scores["benchmark_score"][s], s))
    phases = ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in summary.result.seconds.items()
    )
    click.echo(
        f"tuned {len(summary.result.trials)} trials in {summary.seconds:.1f} s ({phases});"
        f" best benchmark score: {best} {scores['benchmark_score'][best]:.3f} (validation),"
        f" {scores['test_benchmark_score'][best]:.3f} (test re-runs);"
        f" {len(scores['edges'])} rates at an edge; report: {paths['out_dir'] / 'report.md'}"
    )


class _UnitBar:
    """Work done on stderr, in any unit, gone when the ``with`` block ends."""

    def __init__(self, label: str, total: int, unit: str) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        share = TextColumn(f"{{task.percentage:>3.0f}}% of {total:,} {unit}")
        self.progress = Progress(
            TextColumn(label), BarColumn(), share, TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        self.task = self.progress.add_task(label, total=total)

    def advance(self, done: int) -> None:
        self.progress.advance(self.task, done)

    def __enter__(self) -> _UnitBar:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()


def _train_plan(params: Params, engine: Engine) -> str:
    points = len(params.grid)
    grid = f" x {points} grid points" if points > 1 else ""
    return (
        f"training {len(params.schedules)} schedules{grid} x {params.train.seeds} seed(s) = "
        f"{len(params.runs) * params.train.seeds} runs x {params.train.epochs} steps, "
        + _where(params, engine)
    )


def _where(params: Params, engine: Engine) -> str:
    from pipeline.execution import train_shards

    execution = params.execution
    count = train_shards(engine, params)
    if execution.engine == "ray":
        shards = "1 shard" if count == 1 else f"{count} shards"
        return f"as Ray tasks ({shards}) on the cluster at {execution.address}"
    if count == 1:
        return "as one batch"
    return f"as {count} batches in parallel processes"


class _StepBar:
    """Training steps on stderr: drawn from ``start`` (once every schedule passed its trial),
    gone when the ``with`` block ends."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
            TimeRemainingColumn(), console=Console(stderr=True), transient=True,
        )  # fmt: skip
        self.task = self.progress.add_task("train", total=total)
        self.started = False

    def start(self, plan: str) -> None:
        click.echo(plan)
        self.progress.start()
        self.started = True

    def step(self, index: int) -> None:
        self.progress.update(self.task, completed=index + 1)

    def __enter__(self) -> _StepBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.started:  # stopping a bar never drawn prints an empty line before the error
            self.progress.stop()


def _echo_train_summary(summary: TrainSummary) -> None:
    """A line per run, the runs reaped, and the one-line summary."""
    width = max(len(result.name) for result in summary.results)
    for result in summary.results:
        final = result.final
        spread = f" +/- {final['test_accuracy_ci95']:.1%}" if "test_accuracy_ci95" in final else ""
        click.echo(
            f"  {result.name:<{width}}  final loss {final['final_loss']:.4f}  "
            f"train acc {final['train_accuracy']:.1%}  test acc {final['test_accuracy']:.1%}"
            f"{spread}"
        )
    if summary.reaped:
        click.echo(
            f"marked FAILED {len(summary.reaped)} run(s) that a killed train left RUNNING: "
            + ", ".join(summary.reaped)
        )
    timing = (
        f"training {summary.training_seconds:.1f} s, "
        f"files and MLflow {summary.logging_seconds:.1f} s"
    )
    registered = summary.registration
    if registered is not None:
        champion = (
            "now the champion"
            if registered.moved
            else f"the champion stays version {registered.champion}"
        )
        click.echo(
            f"registered {registered.run_name}'s model as {registered.name} version "
            f"{registered.version}: {champion}"
        )
    click.echo(
        f"done in {summary.seconds:.1f} s on {summary.device} ({timing}); "
        f"MLflow parent run {summary.parent_run_id} in {summary.tracking_uri}"
    )


@cli.command()
@params_option
@click.option("--train", "train_data", type=EXISTING, required=True, help="Train set CSV.")
@click.option("--test", "test_data", type=EXISTING, required=True, help="Test set CSV.")
@click.option("--curves", "curves_dir", type=EXISTING, required=True, help="Per-step tables.")
@click.option("--models", "models_dir", type=EXISTING, required=True, help="Trained weights.")
@click.option("--metrics", type=EXISTING, required=True, help="Final metrics.")
@click.option("--figures", "figures_dir", type=PATH, required=True, help="Folder for the PNGs.")
def plot(params_path: Path, **paths: Path) -> None:
    """Stage plot: render the comparison figures and attach them to the train run."""
    from pipeline.background import Tracker

    # First, before torch and matplotlib are imported: MLflow imports in its own process.
    with Tracker() as tracker:
        from stages import plot as stage

        params = _load(params_path, schedules="parse")
        with _tracking_errors():
            written, run_id = stage.run(params, stage.PlotPaths(**paths), tracker)
    for path in written:
        click.echo(f"wrote {path}")
    if run_id:
        click.echo(f"attached to MLflow run {run_id}")
    else:
        click.echo("no MLflow train run matches these metrics; figures not attached")


@cli.command()
def schedulers() -> None:
    """List every schedule type params.yaml accepts, with its arguments."""
    from pipeline.schedules import available_types

    table = Table(box=None)
    table.add_column("type", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("arguments (default)")
    table.add_column("what it does")
    for row in available_types():
        table.add_row(row["type"], row["source"], row["arguments"], row["summary"])
    _console(wrap=True).print(table)


@cli.command()
@params_option
@click.argument("names", nargs=-1)
@click.option(
    "--steps", type=click.IntRange(min=1), help="Steps to preview [default: train.epochs]."
)
@click.option(
    "--points",
    type=click.IntRange(min=2),
    default=6,
    show_default=True,
    help="Steps shown in the table, evenly spaced from the first to the last.",
)
@click.option("--png", "png_path", type=PATH, help="Also draw the curves to this PNG.")
def preview(
    params_path: Path, names: tuple[str, ...], steps: int | None, points: int, png_path: Path | None
) -> None:
    """Show the learning rate each update would use, from params alone, without training.

    NAMES are run names from params.yaml (all when none). ReduceLROnPlateau is shown as if the
    loss never improved: the fastest decay it can make.
    """
    import numpy as np

    from pipeline import figures, files, lr_preview

    params = _load(params_path)
    epochs = steps or params.train.epochs
    try:
        curves = lr_preview.curves(params, names, epochs)
    except lr_preview.UnknownSchedules as error:
        raise click.ClickException(
            f"no schedule named {', '.join(error.unknown)} in {params_path}; "
            f"known: {', '.join(error.known)}"
        ) from None
    shown = np.unique(np.linspace(0, epochs - 1, points).round().astype(int))
    table = Table("schedule \\ step", *map(str, shown), box=None)
    for name, curve in curves.items():
        table.add_row(name, *(f"{curve['lr'][step]:.4g}" for step in shown))
    _console().print(table)
    if png_path:
        files.write_bytes(png_path, figures.png_bytes(figures.learning_rates(curves)))
        click.echo(f"wrote {png_path}")


@cli.command()
@params_option
def validate(params_path: Path) -> None:
    """Check a params file the way every stage does, and summarise it."""
    params = _load(params_path)
    click.echo(
        f"{params_path} is valid: {len(params.schedules)} schedules "
        f"({', '.join(spec.name for spec in params.schedules)}), {params.train.epochs} steps, "
        f"{params.train.optimizer} at lr {_listed(params.train.lr)}, noise "
        f"{_listed(params.data.noise)}, {params.train.seeds} seed(s): "
        f"{len(params.runs) * params.train.seeds} runs"
    )


def _listed(value: float | tuple[float, ...]) -> str:
    return ", ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--print-link",
    is_flag=True,
    help="Print the link to this project's runs in the UI, and exit.",
)
@params_option
def ui(host: str, port: int, print_link: bool, params_path: Path) -> None:
    """Open the MLflow UI on the project's store (MLFLOW_TRACKING_URI, else mlflow.db), and
    print the link to this project's runs."""
    from pipeline import tracking

    uri = tracking.tracking_uri()
    server = uri.startswith(("http://", "https://"))
    # Listening on every address (in a container, say): the browser still goes to loopback.
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = uri.rstrip("/") if server else f"http://{shown_host}:{port}"
    with _params_errors():
        experiment = load_params(params_path, "skip").mlflow.experiment
    try:
        link = _runs_link(base, uri, experiment)
    except TrackingUnavailable as error:
        if print_link:
            raise click.ClickException(str(error)) from None
        link = f"{base}  ({error})"  # a server that is down: still say where it is
    if print_link:
        click.echo(link)
        return
    if server:
        click.echo(f"the store is a tracking server: browse {link}")
        return
    # The venv's own mlflow, beside this Python: found even where the venv is not on PATH.
    beside = Path(sys.executable).with_name("mlflow")
    mlflow = str(beside) if beside.exists() else shutil.which("mlflow") or "mlflow"
    click.echo(f"MLflow UI for {uri} on {base} (Ctrl-C stops it)\nThis project's runs: {link}")
    os.execvp(
        mlflow, [mlflow, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    )


def _runs_link(base: str, uri: str, experiment: str) -> str:
    """The UI page of the experiment's runs (MLflow 3 opens on its GenAI home otherwise)."""
    from pipeline import tracking

    experiment_id = tracking.experiment_id_of(uri, experiment)
    if experiment_id is None:  # no train has run yet: the experiments list
        return f"{base}/#/experiments"
    return f"{base}/#/experiments/{experiment_id}/runs"


def main() -> None:
    """The ``lrsched`` command."""
    cli()
