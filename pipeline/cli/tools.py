"""What a user reaches for besides the stages: ``schedulers``, ``preview``, ``validate`` and
``ui``. No stage runs this module, so editing it re-runs nothing."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click
from rich.table import Table

from pipeline.cli.common import PATH, console, load, params_errors, params_option
from pipeline.config.params import load_params
from pipeline.tracking.store import TrackingUnavailable


@click.command()
def schedulers() -> None:
    """List every schedule type params.yaml accepts, with its arguments."""
    from pipeline.schedules.specs import available_types

    table = Table(box=None)
    table.add_column("type", no_wrap=True)
    table.add_column("from", no_wrap=True)
    table.add_column("arguments (default)")
    table.add_column("what it does")
    for row in available_types():
        table.add_row(row["type"], row["source"], row["arguments"], row["summary"])
    console(wrap=True).print(table)


@click.command()
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

    from pipeline.core import files
    from pipeline.reporting import figures
    from pipeline.schedules import preview as previews

    params = load(params_path)
    epochs = steps or params.train.epochs
    try:
        curves = previews.curves(
            params.schedules,
            names,
            epochs,
            [point.lr for point in params.grid],
            params.train.optimizer,
            params.train.momentum,
        )
    except previews.UnknownSchedules as error:
        raise click.ClickException(
            f"no schedule named {', '.join(error.unknown)} in {params_path}; "
            f"known: {', '.join(error.known)}"
        ) from None
    shown = np.unique(np.linspace(0, epochs - 1, points).round().astype(int))
    table = Table("schedule \\ step", *map(str, shown), box=None)
    for name, curve in curves.items():
        table.add_row(name, *(f"{curve['lr'][step]:.4g}" for step in shown))
    console().print(table)
    if png_path:
        files.write_bytes(png_path, figures.png_bytes(figures.learning_rates(curves)))
        click.echo(f"wrote {png_path}")


@click.command()
@params_option
def validate(params_path: Path) -> None:
    """Check every section of a params file as its stage does, and summarise it."""
    from pipeline.comparison.plan import with_comparison

    with params_errors():  # the file read once: the schedules tried, then the comparison
        params = with_comparison(load(params_path), str(params_path))
    click.echo(
        f"{params_path} is valid: {len(params.schedules)} schedules "
        f"({', '.join(spec.name for spec in params.schedules)}), {params.train.epochs} steps, "
        f"{params.train.optimizer} at lr {_listed(params.train.lr)}, noise "
        f"{_listed(params.data.noise)}, {params.train.seeds} seed(s): "
        f"{len(params.runs) * params.train.seeds} runs"
    )


def _listed(value: float | tuple[float, ...]) -> str:
    return ", ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Server processes (MLflow's default, 4, is for a team's server).",
)
@click.option(
    "--print-link",
    is_flag=True,
    help="Print the link to this project's runs in the UI, and exit.",
)
@params_option
def ui(host: str, port: int, workers: int, print_link: bool, params_path: Path) -> None:
    """Open the MLflow UI on the project's store (MLFLOW_TRACKING_URI, else mlflow.db), and
    print the link to this project's runs."""
    from pipeline.tracking import store

    uri = store.tracking_uri()
    server = uri.startswith(("http://", "https://"))
    # Listening on every address (in a container, say): the browser still goes to loopback.
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = uri.rstrip("/") if server else f"http://{shown_host}:{port}"
    with params_errors():
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
    # MLflow's job runner (GenAI scorers, trace roll-ups: nothing this project logs) would
    # start seven more processes, each importing MLflow; a user who wants it sets it to true.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    command = ["ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    os.execvp(mlflow, [mlflow, *command, "--workers", str(workers)])


def _runs_link(base: str, uri: str, experiment: str) -> str:
    """The UI page of the experiment's runs (MLflow 3 opens on its GenAI home otherwise)."""
    from pipeline.tracking import store

    experiment_id = store.experiment_id_of(uri, experiment)
    if experiment_id is None:  # no train has run yet: the experiments list
        return f"{base}/#/experiments"
    return f"{base}/#/experiments/{experiment_id}/runs"
