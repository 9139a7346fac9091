"""Stage ``train``: one run per schedule, recorded to files for DVC and to MLflow."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline import curves, data, files, tracking
from pipeline.model import weights_bytes
from pipeline.params import Params
from pipeline.training import RunResult, make_deterministic, select_device, train_one


@dataclass(frozen=True)
class TrainSummary:
    results: tuple[RunResult, ...]
    parent_run_id: str
    tracking_uri: str
    device: str
    seconds: float
    reaped: tuple[str, ...] = ()


def run(
    params: Params,
    train_path: Path,
    test_path: Path,
    curves_dir: Path,
    models_dir: Path,
    metrics_path: Path,
    steps_path: Path,
    on_run: Callable[[RunResult], None] = lambda result: None,
) -> TrainSummary:
    started = time.perf_counter()
    make_deterministic()
    device = select_device(params.train.device)
    train_set, test_set = data.read(train_path), data.read(test_path)
    uri = tracking.tracking_uri()
    recorder = tracking.Recorder(uri, params.mlflow.experiment)
    lineage = {
        **tracking.git_state(),
        **tracking.environment_tags(str(device)),
        "params.sha256": params.digest(),
        "data.sha256": files.sha256_files([train_path, test_path]),
    }
    shared = tracking.flatten(_resolved(params))

    results = []
    with recorder.parent("train", shared, lineage):
        with (
            files.staged_directory(curves_dir) as curves_tmp,
            files.staged_directory(models_dir) as models_tmp,
        ):
            for spec in params.schedules:
                result = train_one(spec, params, train_set, test_set, device)
                curve_path = curves.write(result, curves_tmp)
                weights_path = models_tmp / f"{spec.name}.pt"
                files.write_bytes(weights_path, weights_bytes(result.state_dict))
                recorder.child(
                    spec.name,
                    params={**shared, **tracking.flatten({"scheduler": spec.as_params()})},
                    tags={**lineage, "scheduler": spec.name, "scheduler.type": spec.type},
                    series=curves.series(result),
                    final=result.final,
                    artifacts={"model": weights_path, "curves": curve_path},
                )
                results.append(result)
                on_run(result)
        files.write_text(steps_path, curves.long_table(results))
        # Last: a metrics file on disk means every other output of this run is complete.
        files.write_text(metrics_path, metrics_json(results))
        recorder.tag(tracking.OUTPUTS_TAG, files.sha256_files([metrics_path]))
    return TrainSummary(
        tuple(results),
        recorder.parent_id,
        uri,
        str(device),
        time.perf_counter() - started,
        tuple(recorder.reaped),
    )


def metrics_json(results: list[RunResult]) -> str:
    """Final metrics per schedule, for ``dvc metrics show``: stable order, exact floats."""
    table = {result.name: result.final for result in results}
    return json.dumps(table, indent=2) + "\n"


def _resolved(params: Params) -> dict:
    # Log the values in force, defaults included, not only what the file spelled out.
    return {
        "seed": params.seed,
        "data": params.data.model_dump(),
        "model": params.model.model_dump(),
        "train": params.train.model_dump(),
    }
