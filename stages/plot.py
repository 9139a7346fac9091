"""Stage ``plot``: comparison figures from the train outputs, attached to the train run."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.exceptions import MlflowException

from pipeline import curves, data, figures, files, tracking
from pipeline.model import load_model
from pipeline.params import Params

FIGURES = ("learning_rates.png", "losses.png", "decision_boundaries.png", "final_metrics.png")


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
    names = [spec.name for spec in params.schedules]
    tables = curves.read_all(curves_dir, names)
    metrics = json.loads(Path(metrics_path).read_text())
    models = {
        name: load_model(str(Path(models_dir) / f"{name}.pt"), params.model.hidden_dim)
        for name in names
    }
    # Decision boundaries show the first seed's model over the first seed's train set.
    train_set, test_set = data.read_seeded(train_path)[params.seeds[0]], data.read(test_path)
    rendered = {
        "learning_rates.png": figures.learning_rates(tables),
        "losses.png": figures.losses(tables),
        "decision_boundaries.png": figures.decision_boundaries(
            models, train_set, test_set, metrics
        ),
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
