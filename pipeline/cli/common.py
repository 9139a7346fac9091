"""What the commands share: the ``--params`` option, path types, and domain errors turned into
click's, so that a bad value ends in one clear line and no traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from pipeline.config.params import Params, ScheduleCheck, load_params
from pipeline.core.validation import ParamsError
from pipeline.tracking.store import TrackingUnavailable

if TYPE_CHECKING:  # the engines import Ray when it is chosen; the comparison, its spaces
    from pipeline.comparison.plan import ComparisonParams
    from pipeline.engines.execution import Engine

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
def params_errors() -> Iterator[None]:
    try:
        yield
    except ParamsError as error:
        raise click.ClickException(str(error)) from None


def load(path: Path, schedules: ScheduleCheck = "trial") -> Params:
    """The sections every stage reads, checked; a bad value is a click error."""
    with params_errors():
        return load_params(path, schedules)


def load_comparison(path: Path, schedules: ScheduleCheck = "parse") -> ComparisonParams:
    """The params with the comparison's sections (workloads, search), checked."""
    from pipeline.comparison import plan

    with params_errors():
        return plan.load_comparison(path, schedules)


@contextlib.contextmanager
def tracking_errors() -> Iterator[None]:
    try:
        yield
    except TrackingUnavailable as error:
        raise click.ClickException(str(error)) from None


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    # Only the stages that train import the engines: plot's code (and its DVC deps) stay apart.
    from pipeline.engines.execution import ExecutionError

    try:
        yield
    except ExecutionError as error:
        raise click.ClickException(str(error)) from None


@contextlib.contextmanager
def joined(params: Params, warm_units: int | None = None) -> Iterator[Engine]:
    """The stage's engine, joined before torch is imported (the schedules' parsing and the
    stage import it): a cluster's workers start while this process imports torch. An
    unreachable cluster stops the stage here, before the store is touched. ``warm_units``: the
    tune stage's workloads; None: train's shards."""
    from pipeline.engines import execution

    with engine_errors(), execution.joined(params, warm_units) as engine:
        yield engine


def console(wrap: bool = False) -> Console:
    # Numeric tables keep their natural width: never truncated to a guessed 80 columns when
    # piped. Prose tables (wrap=True) fold to the terminal instead.
    if wrap:
        return Console(highlight=False)
    return Console(highlight=False, soft_wrap=True, width=1000)
