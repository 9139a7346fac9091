"""``lrsched generate``: the generate stage's command."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.common import PATH, load, params_errors, params_option


@click.command()
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
    from pipeline.problems.workloads import workloads_section
    from stages import generate as stage

    params = load(params_path, schedules="skip")
    with params_errors():  # checked before anything is written
        suite = workloads_section(params.raw, str(params_path)) if workloads_path else ()
    sizes = stage.run(params, train_path, test_path)
    per_level = f" at each of {sizes.noise_levels} noise levels" if sizes.noise_levels > 1 else ""
    click.echo(
        f"wrote {train_path} ({sizes.train} points x {sizes.seeds} seeds{per_level}) and "
        f"{test_path} ({sizes.test} points{per_level})"
    )
    if workloads_path is not None:
        names = stage.write_workloads(suite, params.seed, workloads_path)
        click.echo(f"wrote {workloads_path} ({len(names)} workloads: {', '.join(names)})")
