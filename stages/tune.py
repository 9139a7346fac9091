"""Stage ``tune``: every schedule tuned on the same budget over the workloads, the chosen
settings re-run on the test sets, scored; written for DVC and recorded to MLflow (a parent run,
a child run per schedule and workload carrying its trial table)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.comparison import search, tuning
from pipeline.comparison.plan import ComparisonParams
from pipeline.comparison.scores import Scores, score
from pipeline.core import files
from pipeline.engines import execution
from pipeline.problems import workloads
from pipeline.reporting import tuning_figures, tuning_report
from pipeline.tracking import store
from pipeline.tracking.background import Tracker, failed_run_on_error
from pipeline.trainer.runtime import make_deterministic

TRIAL_COLUMNS = (
    "workload",
    "schedule",
    "study",
    "trial",
    "budget",
    "lr",
    "parameters",
    "scheduler",
    "time_to_target",
    "best_validation_loss",
    "final_validation_loss",
)
RERUN_COLUMNS = ("workload", "schedule", "seed", "time_to_target", "test_loss", "test_accuracy")


@dataclass(frozen=True)
class TunePaths:
    params: Path
    data: Path  # read: every workload's train, validation and test sets
    out_dir: Path  # written whole: trials, targets, choices, re-runs, report, figures
    metrics: Path  # written last: the scores, for ``dvc metrics``


@dataclass(frozen=True)
class TuneSummary:
    result: tuning.TuningResult
    scores: Scores
    parent_run_id: str
    tracking_uri: str
    seconds: float
    training_seconds: float


def total_updates(params: ComparisonParams) -> int:
    """Trial-updates the protocol trains: for a progress bar sized before it starts."""
    plan = params.search
    target = params.tuning.target
    compared = plan.trials * plan.studies * (len(plan.spaces) - 1)
    reference = target.trials * plan.studies
    total = 0
    for workload in params.workloads:
        tuned = 0 if workload.held_out else compared
        reruns = params.tuning.reruns * (len(plan.spaces) + 1)  # and the target's reference
        total += (tuned + reference + reruns) * workload.epochs
    return total


def run(
    params: ComparisonParams,
    paths: TunePaths,
    tracker: Tracker,
    engine: execution.Engine,
    progress: Callable[[int], None] = lambda done: None,
) -> TuneSummary:
    """``engine``: joined before torch was imported (:func:`pipeline.engines.execution.joined`)."""
    uri = store.tracking_uri()
    with failed_run_on_error(tracker, uri):
        opened = tracker.open_store(uri, params.mlflow.experiment, os.getpid())
        started = time.perf_counter()
        make_deterministic()
        device = torch.device(engine.device)
        data = workloads.read_splits(paths.data)
        missing = [w.name for w in params.workloads if w.name not in data]
        if missing:
            raise ValueError(f"{paths.data} lacks the workloads {missing}; re-run generate")
        lineage, dataset = _lineage(params, paths, data, engine)
        shared = store.flatten(
            {key: params.raw[key] for key in ("seed", "search", "tuning") if key in params.raw}
        )
        parent = tracker.start_parent("tune", shared, lineage, (dataset,))
        opened.get()

        training_started = time.perf_counter()
        result = tuning.run_protocol(
            params, data, device, _polling(progress, tracker), engine=engine
        )
        everywhere = [p for placed in result.placements.values() for p in placed]
        tracker.tag_parent("execution.nodes", execution.node_list(everywhere))
        training_seconds = time.perf_counter() - training_started
        scores = _write_and_record(params, paths, tracker, result, lineage, dataset)
        return TuneSummary(
            result,
            scores,
            parent.get(),
            uri,
            time.perf_counter() - started,
            training_seconds,
        )


def _lineage(
    params: ComparisonParams,
    paths: TunePaths,
    data: Mapping[str, workloads.Splits],
    engine: execution.Engine,
) -> tuple[dict[str, str], store.DataFile]:
    """The tags every run of this tune carries, and the workloads' file as a data input."""
    git = store.git_state()
    lineage = {
        **git,
        **store.source_tags("lrsched tune"),
        **store.environment_tags(str(torch.device(engine.device))),
        **engine.tags(),
        store.PARENT_KIND_TAG: "tune",
        "params.sha256": params.digest("seed", "train", "workloads", "search", "tuning"),
        "data.sha256": files.sha256_files([paths.data]),
    }
    dataset = store.DataFile(
        path=str(paths.data),
        md5=files.md5_file(paths.data),
        rows=sum(len(d) for splits in data.values() for _, d in splits.items()),
        columns=(
            ("workload", "string"),
            ("split", "string"),
            ("x1", "double"),
            ("x2", "double"),
            ("label", "long"),
        ),
        context="tuning",
        revision=git["git.commit"],
    )
    return lineage, dataset


def _write_and_record(
    params: ComparisonParams,
    paths: TunePaths,
    tracker: Tracker,
    result: tuning.TuningResult,
    lineage: Mapping[str, str],
    dataset: store.DataFile,
) -> Scores:
    """Scores, report, claims and figures written, every child run recorded; the metrics file,
    which says the outputs are whole, last. Returns the scores."""
    outputs_started = time.perf_counter()
    scores = score(params, result)
    report_text = tuning_report.markdown(params, result, scores)
    claims_text = tuning_report.claims_markdown(params, result, scores)
    with files.staged_directory(paths.out_dir) as out:
        files.write_text(out / "trials.csv", trials_csv(result))
        files.write_text(out / "reruns.csv", reruns_csv(result))
        files.write_text(out / "targets.json", _json(result.targets))
        files.write_text(out / "chosen.json", _json(chosen_json(params, result)))
        files.write_text(out / "report.md", report_text)
        files.write_text(out / "claims.md", claims_text)
        tuning_figures.write_all(params, result, scores, out / "figures")
        result.seconds["scores, report and figures"] = time.perf_counter() - outputs_started
        logging_started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="lrsched-tune-") as scratch:
            _log_children(tracker, params, result, scores, lineage, dataset, Path(scratch))
            tracker.attach_text(report_text, "report.md")
            tracker.wait()  # the trial tables are logged from the scratch folder
        Path(paths.metrics).unlink(missing_ok=True)
    files.write_text(paths.metrics, _json(metrics(scores, result)))
    tracker.tag_parent(store.OUTPUTS_TAG, files.sha256_files([paths.metrics]))
    tracker.finish_parent("FINISHED")
    tracker.wait()
    result.seconds["MLflow (what training did not hide)"] = time.perf_counter() - logging_started
    return scores


def _polling(progress: Callable[[int], None], tracker: Tracker) -> Callable[[int], None]:
    def advance(done: int) -> None:
        progress(done)
        tracker.poll()

    return advance


def _finite(value: float) -> float | None:
    """JSON has no infinity: a target never reached is null."""
    return value if math.isfinite(value) else None


def _json(value: Any) -> str:
    return json.dumps(_clean(value), indent=2, allow_nan=False) + "\n"


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _time_text(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else "inf"


def trials_csv(result: tuning.TuningResult) -> str:
    columns = zip(result.trials, result.times, result.best_losses, result.final_losses, strict=True)
    rows = (
        (
            trial.workload,
            trial.schedule,
            trial.study,
            trial.index,
            trial.budget,
            repr(trial.lr),
            json.dumps(dict(trial.point), sort_keys=True),
            json.dumps(dict(trial.scheduler), sort_keys=True),
            _time_text(time_),
            repr(float(best)),
            repr(float(final)),
        )
        for trial, time_, best, final in columns
    )
    return files.csv_text(TRIAL_COLUMNS, rows)


def reruns_csv(result: tuning.TuningResult) -> str:
    rows = (
        (
            rerun.workload,
            rerun.schedule,
            rerun.seed,
            _time_text(rerun.time),
            repr(rerun.final_loss),
            repr(rerun.accuracy),
        )
        for rerun in result.reruns
    )
    return files.csv_text(RERUN_COLUMNS, rows)


def chosen_json(params: ComparisonParams, result: tuning.TuningResult) -> dict[str, Any]:
    """Per workload and schedule, the chosen setting as a ``schedulers:`` entry and its peak
    rate (``train.lr``), with the trial it came from."""
    plan = params.search
    chosen: dict[str, Any] = {}
    for workload in result.workloads:
        chosen[workload.name] = {}
        for name, choice in tuning.chosen_for(result, workload).items():
            resolved = plan.spaces[name].resolve(
                choice.point, workload.epochs, workload.architecture.layer_names
            )
            chosen[workload.name][name] = {
                "lr": resolved["lr"],
                "scheduler": resolved["scheduler"],
                "point": dict(choice.point),
                "study": choice.study,
                "trial": choice.index,
                "chosen_on": "every tuned workload" if workload.held_out else workload.name,
                "median_validation_time": choice.median_time,
                "lr_at_edge": choice.at_edge,
            }
    return chosen


def metrics(scores: Scores, result: tuning.TuningResult) -> dict[str, Any]:
    """What ``dvc metrics show`` lists: scores per schedule, targets, times per workload."""
    return {
        "benchmark_score": scores.benchmark_score,
        "test_benchmark_score": scores.test_benchmark_score,
        "targets": {name: entry["target"] for name, entry in result.targets.items()},
        "test_targets": {name: entry["test_target"] for name, entry in result.targets.items()},
        "median_test_time": {
            workload: {s: row[s].median_time for s in row} for workload, row in scores.test.items()
        },
        "edges": len(scores.edges),
    }


def _log_children(
    tracker: Tracker,
    params: ComparisonParams,
    result: tuning.TuningResult,
    scores: Scores,
    lineage: Mapping[str, str],
    dataset: store.DataFile,
    out: Path,
) -> None:
    """A child run per schedule and workload: its space, its trial table, its choice, its
    scores. Not one run per trial: thousands of runs would bury the ones that matter."""
    plan = params.search
    tables = out
    chosen = chosen_json(params, result)
    lines = trials_csv(result).splitlines()[1:]  # once: 66 children share the one table
    for workload in result.workloads:
        for name, space in plan.spaces.items():
            run_name = f"{name}@{workload.name}"
            table = tables / f"{run_name}.trials.csv"
            rows = [line for line in lines if line.startswith(f"{workload.name},{name},")]
            files.write_text(table, "\n".join([",".join(TRIAL_COLUMNS), *rows]) + "\n")
            setting = chosen[workload.name][name]
            space_params = _space_params(space, workload, setting)
            series, final = _child_metrics(scores, result, workload, name, setting)
            tracker.log_child(
                run_name,
                space_params,
                {
                    **lineage,
                    store.PARENT_KIND_TAG: "tuning",
                    "scheduler": name,
                    "workload": workload.name,
                    "held_out": str(workload.held_out).lower(),
                    "lr_at_edge": str(setting["lr_at_edge"]).lower(),
                    "execution.nodes": execution.node_list(result.placements[workload.name]),
                },
                series,
                final,
                {"trials": table},
                (dataset,),
            )


def _space_params(
    space: search.SearchSpace, workload: workloads.Workload, setting: Mapping[str, Any]
) -> dict[str, Any]:
    """A child run's params: its search space, its workload and the setting it chose."""
    return {
        "space.type": space.type,
        "space.form": space.form_name,
        **{f"space.{k}": repr(v) for k, v in space.dims.items()},
        **{f"space.{k}": str(v) for k, v in space.fixed.items()},
        "workload": workload.name,
        **store.flatten(workload.model_dump(), "workload."),
        "chosen.lr": repr(setting["lr"]),
        **store.flatten(setting["scheduler"], "chosen.scheduler."),
    }


def _child_metrics(
    scores: Scores,
    result: tuning.TuningResult,
    workload: workloads.Workload,
    name: str,
    setting: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, float]]:
    """A child run's series (the expected best loss per budget) and its final metrics: the
    finite ones only, as MLflow stores no infinity."""
    test = dataclasses.asdict(scores.test[workload.name][name])
    final = {f"test.{key}": value for key, value in test.items() if math.isfinite(value)}
    series = {}
    if not workload.held_out:
        ratio = scores.validation_ratios[name][workload.name]
        if math.isfinite(ratio):
            final["validation.ratio_to_best"] = ratio
        if math.isfinite(setting["median_validation_time"] or math.inf):
            final["validation.median_time"] = setting["median_validation_time"]
        series = {"budget.expected_best_loss": scores.budget[workload.name][name].best_loss}
    final["target"] = result.targets[workload.name]["target"]
    final["test_target"] = result.targets[workload.name]["test_target"]
    return series, final
