"""Stage ``plot``: comparison figures from the train outputs, attached to the train run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config.params import Params
from pipeline.core import files
from pipeline.core.stats import time_to_target
from pipeline.problems import data
from pipeline.problems.model import load_model, seed_accuracies
from pipeline.reporting import curves, figures
from pipeline.tracking import store
from pipeline.tracking.background import RecordError, Tracker
from pipeline.trainer.runtime import tensors

CPU = torch.device("cpu")
FIGURES = (
    "learning_rates.png",
    "losses.png",
    "test_accuracy.png",
    "steps_to_target.png",
    "decision_boundaries.png",
    "final_metrics.png",
)


@dataclass(frozen=True)
class PlotPaths:
    """Every file the stage reads or writes, as ``dvc.yaml`` names them."""

    train_data: Path  # the train sets: decision boundaries are drawn over the first seed's
    test_data: Path  # the test sets: accuracy per seed
    curves_dir: Path  # the train stage's per-step tables
    models_dir: Path  # the train stage's weights
    metrics: Path  # the train stage's final metrics: its digest finds the train run
    figures_dir: Path  # written: the PNGs, replaced whole


def run(params: Params, paths: PlotPaths, tracker: Tracker) -> tuple[list[Path], str | None]:
    """Write the figures; return their paths and the MLflow run they were attached to.

    ``tracker``: started before torch and matplotlib were imported (the CLI does).
    """
    uri = store.tracking_uri()
    # Looked up while the figures are drawn: the train run to attach them to.
    digest = files.sha256_files([paths.metrics])
    found = tracker.find_train_run(uri, params.mlflow.experiment, digest)
    pngs = _render(params, paths)
    # The store has answered before a figure is written: one that cannot be opened leaves
    # the figures as they were (`dvc repro` keeps them: `persist` in dvc.yaml).
    try:
        tracker.wait()
    except RecordError as error:
        raise store.TrackingUnavailable(
            f"cannot use the MLflow store {uri}: {error.message}\n"
            f"No figure was written; {paths.figures_dir} is as it was."
        ) from None
    with files.staged_directory(paths.figures_dir) as staging:
        for name in FIGURES:
            files.write_bytes(staging / name, pngs[name])
    written = [Path(paths.figures_dir) / name for name in FIGURES]
    return written, _attach(tracker, uri, found.get(), written, paths.figures_dir)


def _render(params: Params, paths: PlotPaths) -> dict[str, bytes]:
    """Every figure as PNG bytes, by file name."""
    torch.set_num_threads(1)  # tiny models; and no thread pool that forked workers inherit
    runs = params.runs
    names = [run.name for run in runs]
    tables = curves.read_all(paths.curves_dir, names)
    metrics = json.loads(Path(paths.metrics).read_text())
    weights = {name: str(Path(paths.models_dir) / f"{name}.pt") for name in names}
    train_sets = data.read_sets(paths.train_data)
    test_sets = data.read_test_sets(paths.test_data)
    # Decision boundaries show the first seed's model over the first seed's train set.
    first = params.seeds[0]
    sets = {run.name: (train_sets[first, run.point.noise], test_sets[run.point.noise])
            for run in runs}  # fmt: skip
    network = params.architecture
    models = {name: load_model(weights[name], network) for name in names}
    accuracies = {
        run.name: seed_accuracies(weights[run.name], network, *tensors(sets[run.name][1], CPU))
        for run in runs
    }
    target = params.analysis.target_loss
    steps = {
        run.name: time_to_target(_seed_losses(paths.curves_dir, run.name, tables), target, first=0)
        for run in runs
    }
    regions = figures.decision_regions(models, sets)
    # A grid: a loss panel per grid point, a rate panel per starting rate (rates do not depend
    # on the data, but for ReduceLROnPlateau's: those of the first noise level are drawn).
    loss_panels: dict[str, dict[str, str]] | None = None
    rate_panels: dict[str, dict[str, str]] | None = None
    if len(params.grid) > 1:
        loss_panels, rate_panels = {}, {}
        first_noise = params.grid[0].noise
        for run in runs:
            title = run.point.label.lstrip("@").replace(",", ", ")
            loss_panels.setdefault(title, {})[run.spec.name] = run.name
            if run.point.noise == first_noise:
                rate_panels.setdefault(f"lr={run.point.lr:g}", {})[run.spec.name] = run.name
    schedule_of = {run.name: run.spec.name for run in runs}
    draw = {  # the slowest first, so that the last to finish is a quick one
        "decision_boundaries.png": lambda: figures.decision_boundaries(regions, sets, metrics),
        "learning_rates.png": lambda: figures.learning_rates(tables, rate_panels),
        "losses.png": lambda: figures.losses(tables, loss_panels),
        "final_metrics.png": lambda: figures.final_metrics(metrics),
        "test_accuracy.png": lambda: figures.accuracy_per_seed(accuracies, schedule_of),
        "steps_to_target.png": lambda: figures.steps_to_target(
            steps, target, params.train.epochs, schedule_of
        ),
    }
    with figures.Renderer(draw) as renderer:
        return renderer.results()


def _attach(
    tracker: Tracker, uri: str, run_id: str | None, paths: list[Path], figures_dir: Path
) -> str | None:
    """Attach the figures to the train run found meanwhile, if any; return its id."""
    if run_id is not None:
        try:
            tracker.attach_files(uri, run_id, paths, "figures").get()
        except RecordError as error:
            raise store.TrackingUnavailable(
                f"wrote the figures to {figures_dir}, but cannot attach them to the MLflow "
                f"store {uri}: {error.message}"
            ) from None
    return run_id


def _seed_losses(curves_dir: Path, name: str, tables: dict) -> np.ndarray:
    """Every seed's per-step loss, (seeds, steps): the .seeds.npy table, or the one seed's CSV."""
    per_seed = Path(curves_dir) / f"{name}.seeds.npy"
    if per_seed.is_file():
        return np.load(per_seed, allow_pickle=False)[:, :, 0]
    return tables[name]["loss"][None, :]
