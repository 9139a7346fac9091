"""``lrsched plot``: the plot stage's command."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.common import EXISTING, PATH, load, params_option, tracking_errors


@click.command()
@params_option
@click.option("--train", "train_data", type=EXISTING, required=True, help="Train set CSV.")
@click.option("--test", "test_data", type=EXISTING, required=True, help="Test set CSV.")
@click.option("--curves", "curves_dir", type=EXISTING, required=True, help="Per-step tables.")
@click.option("--models", "models_dir", type=EXISTING, required=True, help="Trained weights.")
@click.option("--metrics", type=EXISTING, required=True, help="Final metrics.")
@click.option("--figures", "figures_dir", type=PATH, required=True, help="Folder for the PNGs.")
def plot(params_path: Path, **paths: Path) -> None:
    """Stage plot: render the comparison figures and attach them to the train run."""
    from pipeline.tracking.background import Tracker

    # First, before torch and matplotlib are imported: MLflow imports in its own process.
    with Tracker() as tracker:
        from stages import plot as stage

        params = load(params_path, schedules="parse")
        with tracking_errors():
            written, run_id = stage.run(params, stage.PlotPaths(**paths), tracker)
    for path in written:
        click.echo(f"wrote {path}")
    if run_id:
        click.echo(f"attached to MLflow run {run_id}")
    else:
        click.echo("no MLflow train run matches these metrics; figures not attached")
