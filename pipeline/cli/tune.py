"""``lrsched tune``: the tune stage's command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipeline.cli.common import (
    EXISTING,
    PATH,
    engine_errors,
    joined,
    load_comparison,
    params_errors,
    params_option,
    tracking_errors,
)
from pipeline.cli.progress import UnitBar


@click.command()
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
    from pipeline.tracking.background import Tracker

    unparsed = load_comparison(params_path, schedules="skip")
    with Tracker() as tracker, joined(unparsed, len(unparsed.workloads)) as engine:
        from stages import tune as stage

        params = load_comparison(params_path, schedules="parse")
        plan = params.search
        tuned = [w for w in params.workloads if not w.held_out]
        click.echo(
            f"tune: {len(plan.spaces)} schedules x {plan.studies} studies x {plan.trials} trials"
            f" on {len(tuned)} workloads ({len(params.workloads) - len(tuned)} held out),"
            f" then {params.tuning.reruns} re-runs of each choice"
        )
        bar = UnitBar("tune", stage.total_updates(params), "trial-updates")
        with params_errors(), tracking_errors(), engine_errors(), bar:
            summary = stage.run(
                params, stage.TunePaths(params_path, **paths), tracker, engine, bar.advance
            )
    scores = summary.scores
    best = scores.best()
    phases = ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in summary.result.seconds.items()
    )
    click.echo(
        f"tuned {len(summary.result.trials)} trials in {summary.seconds:.1f} s ({phases});"
        f" best benchmark score: {best} {scores.benchmark_score[best]:.3f} (validation),"
        f" {scores.test_benchmark_score[best]:.3f} (test re-runs);"
        f" {_count(len(scores.edges), 'rate')} at an edge; report: {paths['out_dir'] / 'report.md'}"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")
