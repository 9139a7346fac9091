"""Stage ``train``: every schedule over every seed, as one batched computation, recorded to
files for DVC and to MLflow (a parent run, a child run per schedule)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import curves, data, files, report, stats, tracking
from pipeline.background import Background, RecordError
from pipeline.batched import Arm, ScheduleResult, by_schedule, train_batch
from pipeline.model import stacked_weights, weights_bytes
from pipeline.params import Params
from pipeline.training import make_deterministic, select_device


@dataclass(frozen=True)
class TrainSummary:
    results: tuple[ScheduleResult, ...]
    parent_run_id: str
    tracking_uri: str
    device: str
    seconds: float
    training_seconds: float
    logging_seconds: float
    reaped: tuple[str, ...] = ()


def run(
    params: Params,
    train_path: Path,
    test_path: Path,
    curves_dir: Path,
    models_dir: Path,
    metrics_path: Path,
    steps_path: Path,
    ranking_path: Path,
    report_path: Path,
    on_step: Callable[[int], None] = lambda step: None,
    figures_dir: str = "../figures",
    mlflow: Background | None = None,
) -> TrainSummary:
    """``figures_dir``: where the report's figure links point, relative to the report.

    ``mlflow``: a ``Background`` started early, so that importing MLflow overlaps with importing
    torch (the CLI starts it first thing); by default one is started here.
    """
    started = time.perf_counter()
    make_deterministic()
    device = select_device(params.train.device)
    train_sets = data.read_sets(train_path)
    test_sets = data.read_test_sets(test_path)
    arms = [
        Arm(run.spec, seed, run.variant.lr, run.variant.noise)
        for run in params.runs
        for seed in params.seeds
    ]
    missing = sorted({arm.data_key for arm in arms} - set(train_sets))
    missing_tests = sorted({arm.noise for arm in arms} - set(test_sets))
    if missing or missing_tests:
        raise ValueError(
            f"{train_path} or {test_path} lacks the sets for (seed, noise) "
            f"{missing or missing_tests}; re-run generate"
        )
    uri = tracking.tracking_uri()
    with contextlib.ExitStack() as stack:
        records = mlflow or stack.enter_context(Background())
        stack.enter_context(_failed_run_on_error(records, uri))
        # The store opens while the runs train; a store that cannot be opened stops training at
        # the next step (`poll`), and no output is written before the store answers (`wait`).
        if "Recorder" not in records.sent:
            open_store(params, records)
        lineage = {
            **tracking.git_state(),
            **tracking.environment_tags(str(device)),
            "params.sha256": params.digest(),
            "data.sha256": files.sha256_files([train_path, test_path]),
        }
        shared = tracking.flatten(_resolved(params))
        records.record("start", "train", shared, lineage)

        def step(index: int) -> None:
            on_step(index)
            records.poll()

        training_started = time.perf_counter()
        batch = train_batch(arms, params, train_sets, device, on_step=step)
        results = by_schedule(batch, params, train_sets, test_sets)
        rankings = _rank_by_noise(results, params)
        ranked = {row.name: row for ranking in rankings.values() for row in ranking}
        training_seconds = time.perf_counter() - training_started

        logging_started = time.perf_counter()
        records.wait()  # the store is open and the parent run started before any file is written
        with (
            files.staged_directory(curves_dir) as curves_tmp,
            files.staged_directory(models_dir) as models_tmp,
        ):
            for result in results:
                spec = params.schedule(result.schedule)
                curve_path = curves.write(result, curves_tmp)
                weights_path = models_tmp / f"{result.name}.pt"
                weights = stacked_weights(list(result.seeds), list(result.state_dicts))
                files.write_bytes(weights_path, weights_bytes(weights))
                artifacts = {"model": weights_path, "curves": curve_path}
                if len(result.seeds) > 1:
                    seeds_path = curves_tmp / f"{result.name}.seeds.npy"
                    files.write_bytes(seeds_path, _per_seed_bytes(result))
                    artifacts["seeds"] = seeds_path
                point = {"train": {"lr": result.lr}, "data": {"noise": result.noise}}
                records.record(
                    "child",
                    result.name,
                    {**shared, **tracking.flatten({**point, "scheduler": spec.as_params()})},
                    {**lineage, "scheduler": spec.name, "scheduler.type": spec.type},
                    curves.series(result),
                    {**result.final, **_ranking_metrics(ranked[result.name])},
                    artifacts,
                )
            table = _ranking_markdown(rankings, params)
            claims = report.check_claims(results, params)
            text = report.markdown(claims, table, params, figures_dir)
            records.record("attach_text", table, "ranking.md")
            records.record("attach_text", text, "report.md")
            # The artifacts are logged from the staging folders: wait before they move.
            records.wait()
            # Nothing refused the run: the outputs are replaced from here on. DVC keeps the old
            # ones until now (`persist`), so first take away the file that says they are whole.
            Path(metrics_path).unlink(missing_ok=True)
        files.write_text(steps_path, curves.long_table(results))
        files.write_text(ranking_path, table)
        files.write_text(report_path, text)
        # Last: a metrics file on disk means every other output of this run is complete.
        files.write_text(metrics_path, metrics_json(results, ranked))
        records.record("tag", tracking.OUTPUTS_TAG, files.sha256_files([metrics_path]))
        records.record("finish", "FINISHED")
        records.wait()
        logging_seconds = time.perf_counter() - logging_started
        return TrainSummary(
            tuple(results),
            records.answers["start"],
            uri,
            str(device),
            time.perf_counter() - started,
            training_seconds,
            logging_seconds,
            tuple(records.answers["Recorder"]),
        )


def open_store(params: Params, records: Background) -> None:
    """Have ``records`` open the MLflow store (and reap what a killed train left): it takes
    seconds, which the CLI overlaps with stepping every schedule once (``try_schedules``)."""
    records.call("Recorder", tracking.tracking_uri(), params.mlflow.experiment, os.getpid())


@contextlib.contextmanager
def _failed_run_on_error(records: Background, uri: str):
    """On any error, close the parent run FAILED; say what a failed record means."""
    try:
        yield
    except BaseException as error:
        with contextlib.suppress(RecordError):  # the process may be gone
            records.record("finish", "FAILED")
        if isinstance(error, RecordError):
            raise _tracking_error(error, uri) from None
        raise


def _tracking_error(error: RecordError, uri: str) -> Exception:
    if error.kind == "unavailable":  # the store could not be opened: the message says so
        return tracking.TrackingUnavailable(error.message)
    if error.kind == "bug":
        return RuntimeError(f"recording to MLflow failed in {error.call}:\n{error.message}")
    return tracking.TrackingUnavailable(
        f"lost the MLflow store {uri} mid-run: {error.message}\n"
        "No output was written; the runs of this attempt are marked FAILED now, or by the "
        "next train on this host if the store cannot be reached."
    )


def _rank_by_noise(
    results: list[ScheduleResult], params: Params
) -> dict[float, list[stats.Ranked]]:
    """A ranking per noise level: runs on different data are not compared with each other."""
    rankings = {}
    for noise in dict.fromkeys(result.noise for result in results):
        group = [result for result in results if result.noise == noise]
        rankings[noise] = stats.rank(
            {r.name: r.finals["final_loss"] for r in group},
            {r.name: r.finals["test_accuracy"] for r in group},
            {r.name: r.losses for r in group},
            params.analysis.target_loss,
            params.analysis.alpha,
        )
    return rankings


def _ranking_markdown(rankings: dict[float, list[stats.Ranked]], params: Params) -> str:
    analysis = params.analysis
    if len(rankings) == 1:
        return stats.markdown(next(iter(rankings.values())), analysis.target_loss, analysis.alpha)
    sections = [
        f"## data.noise = {noise:g}\n\n"
        + stats.markdown(ranking, analysis.target_loss, analysis.alpha)
        for noise, ranking in rankings.items()
    ]
    return "\n".join(sections)


def _per_seed_bytes(result: ScheduleResult) -> bytes:
    """Every seed's per-step loss and rates, (seeds, epochs, 1 + groups) float64, as .npy.

    One file per schedule logs in one call, where per-seed metrics would be seeds x steps values.
    """
    import io

    table = np.concatenate([result.losses[:, :, None], result.rates], axis=2)
    buffer = io.BytesIO()
    np.save(buffer, table, allow_pickle=False)
    return buffer.getvalue()


def metrics_json(results: list[ScheduleResult], ranked: dict[str, stats.Ranked]) -> str:
    """Final metrics and ranking per schedule, for ``dvc metrics show``: stable order."""
    table = {r.name: {**r.final, **_ranking_metrics(ranked[r.name])} for r in results}
    return json.dumps(table, indent=2) + "\n"


def _ranking_metrics(row: stats.Ranked) -> dict[str, float]:
    values = {"rank": float(row.rank), "steps_to_target": row.steps_to_target[0]}
    if row.p_vs_best is not None:
        values["p_vs_best"] = row.p_vs_best
    # JSON has no NaN: a schedule that never reached the target has no steps_to_target.
    return {key: value for key, value in values.items() if value == value}


def _resolved(params: Params) -> dict:
    # Log the values in force, defaults included, not only what the file spelled out.
    return {
        "seed": params.seed,
        "data": params.data.model_dump(),
        "model": params.model.model_dump(),
        "train": params.train.model_dump(),
    }
