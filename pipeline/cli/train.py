"""``lrsched train``: the train stage's command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pipeline.cli.common import (
    EXISTING,
    PATH,
    engine_errors,
    joined,
    load,
    params_errors,
    params_option,
    tracking_errors,
)
from pipeline.cli.progress import StepBar
from pipeline.config.params import Params

if TYPE_CHECKING:  # importing the stage imports torch; the engines, Ray
    from pipeline.engines.execution import Engine
    from stages.train import TrainSummary


@click.command()
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
    from pipeline.tracking.background import Tracker

    # First, before torch is imported (by the stage, and by parsing the schedules): MLflow
    # imports in its own process meanwhile.
    with Tracker() as tracker, joined(load(params_path, schedules="skip")) as engine:
        from stages import train as stage

        params = load(params_path, schedules="parse")
        bar = StepBar(params.train.epochs)
        with params_errors(), tracking_errors(), engine_errors(), bar:
            summary = stage.run(
                params,
                stage.TrainPaths(params_path, **paths),
                tracker,
                engine,
                on_start=lambda: bar.start(_plan(params, engine)),
                on_step=bar.step,
            )
    _echo_summary(summary)


def _plan(params: Params, engine: Engine) -> str:
    points = len(params.grid)
    grid = f" x {points} grid points" if points > 1 else ""
    return (
        f"training {len(params.schedules)} schedules{grid} x {params.train.seeds} seed(s) = "
        f"{len(params.runs) * params.train.seeds} runs x {params.train.epochs} steps, "
        + _where(params, engine)
    )


def _where(params: Params, engine: Engine) -> str:
    from pipeline.engines.execution import train_shards

    execution = params.execution
    count = train_shards(engine, params)
    if execution.engine == "ray":
        shards = "1 shard" if count == 1 else f"{count} shards"
        return f"as Ray tasks ({shards}) on the cluster at {execution.address}"
    if count == 1:
        return "as one batch"
    return f"as {count} batches in parallel processes"


def _echo_summary(summary: TrainSummary) -> None:
    """A line per run, the runs reaped, the model registered, and the one-line summary."""
    width = max(len(result.name) for result in summary.results)
    for result in summary.results:
        final = result.summary
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
    timing = (
        f"training {summary.training_seconds:.1f} s, "
        f"files and MLflow {summary.logging_seconds:.1f} s"
    )
    click.echo(
        f"done in {summary.seconds:.1f} s on {summary.device} ({timing}); "
        f"MLflow parent run {summary.parent_run_id} in {summary.tracking_uri}"
    )
