"""Stage ``plot``: comparison figures from the train outputs, attached to the train run."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException

from pipeline import curves, data, figures, files, tracking
from pipeline.model import load_model, seed_accuracies
from pipeline.params import Params
from pipeline.training import tensors

CPU = torch.device("cpu")
FIGURES = (
    "learning_rates.png",
    "losses.png",
    "test_accuracy.png",
    "decision_boundaries.png",
    "final_metrics.png",
)


def run(
    params: Params,
    train_path: Path,
    test_path: Path,
    curves_dir: Path,
    models_dir: Path,
    metrics_path: Path,
    figures_dir: Path,
) -> tuple[list[Path], str | None]:
    """Write the figures; return their paths and the MLflow run they were attached to."""
    runs = params.runs
    names = [run.name for run in runs]
    tables = curves.read_all(curves_dir, names)
    metrics = json.loads(Path(metrics_path).read_text())
    weights = {name: str(Path(models_dir) / f"{name}.pt") for name in names}
    train_sets = data.read_sets(train_path)
    test_sets = {noise: dataset for (_, noise), dataset in data.read_sets(test_path).items()}
    # Decision boundaries show the first seed's model over the first seed's train set.
    first = params.seeds[0]
    sets = {run.name: (train_sets[first, run.variant.noise], test_sets[run.variant.noise])
            for run in runs}  # fmt: skip
    models = {name: load_model(weights[name], params.model.hidden_dim) for name in names}
    accuracies = {
        run.name: seed_accuracies(weights[run.name], *tensors(sets[run.name][1], CPU))
        for run in runs
    }
    rendered = {
        "learning_rates.png": figures.learning_rates(tables),
        "losses.png": figures.losses(tables),
        "test_accuracy.png": figures.test_accuracy(accuracies),
        "decision_boundaries.png": figures.decision_boundaries(models, sets, metrics),
        "final_metrics.png": figures.final_metrics(metrics),
    }
    with files.staged_directory(figures_dir) as staging:
        for name in FIGURES:
            files.write_bytes(staging / name, figures.png_bytes(rendered[name]))
    paths = [Path(figures_dir) / name for name in FIGURES]

    uri = tracking.tracking_uri()
    try:
        run_id = tracking.find_train_run(
            uri, params.mlflow.experiment, files.sha256_files([metrics_path])
        )
        if run_id is not None:
            tracking.attach_files(uri, run_id, paths, "figures")
    except (MlflowException, OSError) as error:
        raise tracking.TrackingUnavailable(
            f"wrote the figures to {figures_dir}, but cannot attach them to the MLflow store "
            f"{uri}: {tracking.first_line(error)}"
        ) from None
    return paths, run_id
