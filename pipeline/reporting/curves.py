"""Per-step tables: one CSV per run, ``step,lr,loss`` plus ``lr/<group>`` with several groups."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.core import files
from pipeline.core.stats import mean_interval
from pipeline.trainer.results import RunResult


def series(result: RunResult) -> dict[str, np.ndarray]:
    """The named per-step series of a run, as logged to MLflow and written to CSV.

    With one seed, ``lr`` and ``loss`` are that run's. With several, they are means over seeds,
    and ``loss_low`` and ``loss_high`` bound the 95% interval of the mean loss.
    """
    loss, half_width = mean_interval(result.losses)
    named = {"lr": _across_seeds(result.rates[:, :, 0]), "loss": loss}
    if len(result.seeds) > 1:
        named["loss_low"], named["loss_high"] = loss - half_width, loss + half_width
    if len(result.groups) > 1:
        for index, group in enumerate(result.groups):
            named[f"lr/{group}"] = _across_seeds(result.rates[:, :, index])
    if result.batch_sizes is not None:
        named["batch_size"] = result.batch_sizes.astype(np.float64)
    return named


def _across_seeds(rates: np.ndarray) -> np.ndarray:
    # Most schedules give every seed the same rates: keep them exact rather than re-averaged.
    return rates[0] if (rates == rates[0]).all() else rates.mean(axis=0)


def to_csv(named: dict[str, np.ndarray]) -> str:
    columns = [values.tolist() for values in named.values()]
    rows = ([step, *map(repr, row)] for step, row in enumerate(zip(*columns, strict=True)))
    return files.csv_text(["step", *named], rows)


def long_table(results: list[RunResult]) -> str:
    """Every run in one table, ``step,scheduler,lr,loss``: DVC draws a line per scheduler."""

    def rows(result: RunResult) -> Iterator[list[object]]:
        named = series(result)
        rates, losses = named["lr"].tolist(), named["loss"].tolist()
        for step, (rate, loss) in enumerate(zip(rates, losses, strict=True)):
            yield [step, result.name, repr(rate), repr(loss)]

    every = (row for result in results for row in rows(result))
    return files.csv_text(["step", "scheduler", "lr", "loss"], every)


def write(result: RunResult, folder: Path) -> Path:
    path = folder / f"{result.name}.csv"
    files.write_text(path, to_csv(series(result)))
    return path


def read(path: str | Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [[float(value) for value in row] for row in reader]
    table = np.array(rows, dtype=np.float64).reshape(-1, len(header))
    return {name: table[:, index] for index, name in enumerate(header)}


def read_all(folder: str | Path, names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """The tables of the named runs, in that order; a missing one is an error."""
    folder = Path(folder)
    missing = [name for name in names if not (folder / f"{name}.csv").is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} has no table for {', '.join(missing)}; re-run train")
    return {name: read(folder / f"{name}.csv") for name in names}
