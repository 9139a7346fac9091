"""Progress bars on stderr for the stages that train, gone when their ``with`` block ends."""

from __future__ import annotations

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class UnitBar:
    """Work done, in any unit."""

    def __init__(self, label: str, total: int, unit: str) -> None:
        share = TextColumn(f"{{task.percentage:>3.0f}}% of {total:,} {unit}")
        self.progress = Progress(
            TextColumn(label), BarColumn(), share, TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )  # fmt: skip
        self.task = self.progress.add_task(label, total=total)

    def advance(self, done: int) -> None:
        self.progress.advance(self.task, done)

    def __enter__(self) -> UnitBar:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()


class StepBar:
    """Training steps: drawn from ``start`` (once every schedule passed its trial)."""

    def __init__(self, total: int) -> None:
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

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.started:  # stopping a bar never drawn prints an empty line before the error
            self.progress.stop()
