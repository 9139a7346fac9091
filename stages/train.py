"""Stage ``train``: every schedule over every seed, as one batched computation, recorded to
files for DVC and to MLflow (a parent run, a child run per named run)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config.params import Params, try_schedules
from pipeline.core import files, stats
from pipeline.engines import execution, shards
from pipeline.engines.units import usable_cpus
from pipeline.problems import data
from pipeline.problems.model import stacked_weights, weights_bytes
from pipeline.reporting import curves, report
from pipeline.tracking import store
from pipeline.tracking.background import Reply, Tracker, failed_run_on_error
from pipeline.trainer.batch import BatchResult, Replicate, Setup
from pipeline.trainer.batched import run_results, train_batch
from pipeline.trainer.results import RunResult
from pipeline.trainer.runtime import make_deterministic


@dataclass(frozen=True)
class TrainPaths:
    """Every file the stage reads or writes, as ``dvc.yaml`` names them."""

    params: Path  # read by the caller; named when a schedule fails its trial
    train_data: Path  # the train sets: one per seed and noise level
    test_data: Path  # the test sets: one per noise level
    curves_dir: Path  # written: a per-step table per run (and per seed, with several)
    models_dir: Path  # written: each run's weights, every seed stacked
    metrics: Path  # written last: final metrics and ranking, for ``dvc metrics``
    steps: Path  # written: every run's steps in one CSV, for ``dvc plots``
    ranking: Path  # written: the ranking table (markdown)
    report: Path  # written: the report on the tutorial's claims (markdown)
    figures_link: str = "../figures"  # where the report links the figures, relative to it
    tuned_claims: Path | None = None  # read: the tune stage's claims.md, for the report


@dataclass(frozen=True)
class TrainSummary:
    results: tuple[RunResult, ...]
    parent_run_id: str
    tracking_uri: str
    device: str
    seconds: float
    training_seconds: float
    logging_seconds: float
    reaped: tuple[str, ...] = ()
    registration: store.Registration | None = None


@dataclass(frozen=True)
class _Inputs:
    """What the stage trains on: the sets it read, and every replicate they serve."""

    train_sets: dict[tuple[int, float], data.Dataset]
    test_sets: dict[float, data.Dataset]
    replicates: list[Replicate]


@dataclass(frozen=True)
class _Lineage:
    """What every MLflow run of this train carries: resolved params, tags and data inputs."""

    shared: dict[str, Any]
    tags: dict[str, str]
    datasets: tuple[store.DataFile, store.DataFile]


@dataclass(frozen=True)
class _Trained:
    results: list[RunResult]
    rankings: dict[float, list[stats.Ranked]]
    ranked: dict[str, stats.Ranked]
    nodes: dict[str, str]


def run(
    params: Params,
    paths: TrainPaths,
    tracker: Tracker,
    engine: execution.Engine,
    on_start: Callable[[], None] = lambda: None,
    on_step: Callable[[int], None] = lambda step: None,
) -> TrainSummary:
    """Try every schedule, train every run, write the outputs and record them to MLflow.

    ``params``: parsed, not yet tried (``load_params(..., "parse")``): the schedules are tried
    here, while the store opens. ``tracker``: started before torch was imported, so that
    importing MLflow overlaps with importing torch (the CLI starts it first thing).
    ``engine``: joined before that import too, with its workers warming
    (:func:`pipeline.engines.execution.joined`); the store is touched only after it answered.
    ``on_start`` is called once every schedule passed its trial, before training; ``on_step``
    after each update.
    """
    uri = store.tracking_uri()
    with failed_run_on_error(tracker, uri):
        # The store opens (and what a killed train left is reaped) while torch tries each
        # schedule: a rate that blows up stops the stage here, and the store then holds no run.
        # A store that cannot be opened stops training at the next step (`poll`), and no output
        # is written before the store answers (`wait`).
        opened = tracker.open_store(uri, params.mlflow.experiment, os.getpid())
        try_schedules(params, str(paths.params))
        on_start()
        started = time.perf_counter()
        make_deterministic()
        device = torch.device(engine.device)
        inputs = _read_inputs(params, paths)
        lineage = _lineage(params, paths, inputs, engine)
        parent = tracker.start_parent("train", lineage.shared, lineage.tags, lineage.datasets)

        def step(index: int) -> None:
            on_step(index)
            tracker.poll()

        training_started = time.perf_counter()
        trained = _train_and_rank(engine, inputs, params, tracker, step)
        training_seconds = time.perf_counter() - training_started
        logging_started = time.perf_counter()
        registration = _write_and_record(params, paths, tracker, inputs, lineage, trained)
        logging_seconds = time.perf_counter() - logging_started
        return TrainSummary(
            tuple(trained.results),
            parent.get(),
            uri,
            str(device),
            time.perf_counter() - started,
            training_seconds,
            logging_seconds,
            opened.get(),
            registration.get() if registration else None,
        )


def _read_inputs(params: Params, paths: TrainPaths) -> _Inputs:
    """The sets, and a replicate per run and seed; a set that is missing is an error."""
    train_sets = data.read_sets(paths.train_data)
    test_sets = data.read_test_sets(paths.test_data)
    replicates = [
        Replicate(run.spec, seed, run.point.lr, run.point.noise)
        for run in params.runs
        for seed in params.seeds
    ]
    missing = sorted({r.data_key for r in replicates} - set(train_sets))
    missing_tests = sorted({r.noise for r in replicates} - set(test_sets))
    if missing or missing_tests:
        raise ValueError(
            f"{paths.train_data} or {paths.test_data} lacks the sets for (seed, noise) "
            f"{missing or missing_tests}; re-run generate"
        )
    return _Inputs(train_sets, test_sets, replicates)


def _lineage(
    params: Params, paths: TrainPaths, inputs: _Inputs, engine: execution.Engine
) -> _Lineage:
    git = store.git_state()
    tags = {
        **git,
        **store.source_tags("lrsched train"),
        **store.environment_tags(str(torch.device(engine.device))),
        **engine.tags(),
        "params.sha256": params.digest(),
        "data.sha256": files.sha256_files([paths.train_data, paths.test_data]),
    }
    datasets = (
        _data_file(paths.train_data, inputs.train_sets, "training", git["git.commit"]),
        _data_file(paths.test_data, inputs.test_sets, "testing", git["git.commit"]),
    )
    return _Lineage(store.flatten(_resolved(params)), tags, datasets)


def _train_and_rank(
    engine: execution.Engine,
    inputs: _Inputs,
    params: Params,
    tracker: Tracker,
    on_step: Callable[[int], None],
) -> _Trained:
    batch, placements = _train(
        engine, inputs.replicates, params, inputs.train_sets, inputs.test_sets, on_step
    )
    tracker.tag_parent("execution.nodes", execution.node_list(placements))
    results = run_results(batch, params, inputs.train_sets, inputs.test_sets)
    nodes = _nodes_by_run(batch.replicates, placements, params)
    rankings = _rank_by_noise(results, params)
    ranked = {row.name: row for ranking in rankings.values() for row in ranking}
    return _Trained(results, rankings, ranked, nodes)


def _write_and_record(
    params: Params,
    paths: TrainPaths,
    tracker: Tracker,
    inputs: _Inputs,
    lineage: _Lineage,
    trained: _Trained,
) -> Reply[store.Registration] | None:
    """Every output written and every run recorded; the metrics file, which says the outputs
    are whole, last. Returns the champion's registration, when there is one."""
    tracker.wait()  # the store is open and the parent run started before any file is written
    with (
        files.staged_directory(paths.curves_dir) as curves_tmp,
        files.staged_directory(paths.models_dir) as models_tmp,
    ):
        for result in trained.results:
            _record_run(params, tracker, result, inputs, lineage, trained, curves_tmp, models_tmp)
        registration = _register_best(tracker, params, trained.rankings, lineage.tags)
        table = _ranking_markdown(trained.rankings, params)
        claims = report.check_claims(trained.results, params)
        tuned = None if paths.tuned_claims is None else paths.tuned_claims.read_text()
        text = report.markdown(claims, table, params, paths.figures_link, tuned)
        tracker.attach_text(table, "ranking.md")
        tracker.attach_text(text, "report.md")
        # The artifacts are logged from the staging folders: wait before they move.
        tracker.wait()
        # Nothing refused the run: the outputs are replaced from here on. DVC keeps the old
        # ones until now (`persist`), so first take away the file that says they are whole.
        Path(paths.metrics).unlink(missing_ok=True)
    files.write_text(paths.steps, curves.long_table(trained.results))
    files.write_text(paths.ranking, table)
    files.write_text(paths.report, text)
    # Last: a metrics file on disk means every other output of this run is complete.
    files.write_text(paths.metrics, metrics_json(trained.results, trained.ranked))
    tracker.tag_parent(store.OUTPUTS_TAG, files.sha256_files([paths.metrics]))
    tracker.finish_parent("FINISHED")
    tracker.wait()
    return registration


def _record_run(
    params: Params,
    tracker: Tracker,
    result: RunResult,
    inputs: _Inputs,
    lineage: _Lineage,
    trained: _Trained,
    curves_tmp: Path,
    models_tmp: Path,
) -> None:
    """One run's curves and weights staged, and its child run logged with them."""
    spec = params.schedule(result.schedule)
    curve_path = curves.write(result, curves_tmp)
    weights_path = models_tmp / f"{result.name}.pt"
    weights = stacked_weights(list(result.seeds), list(result.state_dicts))
    files.write_bytes(weights_path, weights_bytes(weights))
    artifacts = {"weights": weights_path, "curves": curve_path}
    if len(result.seeds) > 1:
        seeds_path = curves_tmp / f"{result.name}.seeds.npy"
        files.write_bytes(seeds_path, _per_seed_bytes(result))
        artifacts["seeds"] = seeds_path
    point = {"train": {"lr": result.lr}, "data": {"noise": result.noise}}
    tracker.log_child(
        result.name,
        {**lineage.shared, **store.flatten({**point, "scheduler": spec.as_params()})},
        {
            **lineage.tags,
            "scheduler": spec.name,
            "scheduler.type": spec.type,
            "execution.nodes": trained.nodes[result.name],
        },
        curves.series(result),
        {**result.summary, **_ranking_metrics(trained.ranked[result.name])},
        artifacts,
        lineage.datasets,
        _model_to_log(result, inputs.test_sets[result.noise], params.model.activation),
    )


def _train(
    engine: execution.Engine,
    replicates: list[Replicate],
    params: Params,
    train_sets: Mapping[tuple[int, float], data.Dataset],
    test_sets: Mapping[float, data.Dataset],
    on_step: Callable[[int], None],
) -> tuple[BatchResult, list[execution.Placement]]:
    """Every replicate trained: in this process as one batch, or cut into shards that the
    engine runs where it can; either way the same numbers, with where each replicate ran."""
    count = execution.train_shards(engine, params)
    if engine.name == "local" and count == 1:
        device = torch.device(engine.device)
        batch = train_batch(replicates, Setup.of(params), train_sets, device, on_step=on_step)
        return batch, [execution.here()] * len(replicates)
    groups = shards.cut(len(replicates), count)
    keys = [(run.name, seed) for run in params.runs for seed in params.seeds]
    done = 0

    def progress(replicate_updates: int) -> None:
        # The bar counts steps of the whole batch: the shards' updates over its replicates.
        nonlocal done
        done += replicate_updates
        on_step(max(done // len(replicates), 1) - 1)

    units = [
        (
            params,
            [keys[i] for i in group],
            {replicates[i].data_key: train_sets[replicates[i].data_key] for i in group},
            {replicates[i].noise: test_sets[replicates[i].noise] for i in group},
            engine.device,
        )
        for group in groups
    ]
    with engine.pool(min(len(groups), usable_cpus()), progress) as pool:
        parts = pool.map(shards.train_shard, units, costs=[len(group) for group in groups])
        by_shard = pool.placements
    placements: list[execution.Placement] = [execution.here()] * len(replicates)
    for group, placement in zip(groups, by_shard, strict=True):
        for index in group:
            placements[index] = placement
    return shards.merge(parts, groups, replicates), placements


def _nodes_by_run(
    replicates: tuple[Replicate, ...], placements: list[execution.Placement], params: Params
) -> dict[str, str]:
    """Each named run's nodes: where any of its seeds trained."""
    names = [run.name for run in params.runs for _ in params.seeds]
    found: dict[str, list[execution.Placement]] = {}
    for name, placement in zip(names, placements, strict=True):
        found.setdefault(name, []).append(placement)
    return {name: execution.node_list(where) for name, where in found.items()}


def _data_file(
    path: Path, sets: Mapping[Any, data.Dataset], context: str, revision: str
) -> store.DataFile:
    columns = dict.fromkeys(data.SET_KEYS + data.HEADER, "double")
    columns.update(seed="long", label="long")
    return store.DataFile(
        path=str(path),
        md5=files.md5_file(path),
        rows=sum(len(dataset) for dataset in sets.values()),
        columns=tuple(columns.items()),
        context=context,
        revision=revision,
    )


def _model_to_log(result: RunResult, test_set: data.Dataset, activation: str) -> store.ModelToLog:
    """The run's first seed's model, with the first test points as its example."""
    weights = {name: tensor.cpu().numpy() for name, tensor in result.state_dicts[0].items()}
    return store.ModelToLog(weights, test_set.features[:5], activation)


def _register_best(
    tracker: Tracker,
    params: Params,
    rankings: dict[float, list[stats.Ranked]],
    lineage: Mapping[str, str],
) -> Reply[store.Registration] | None:
    """Register the model of the ranking's first at the first noise level (with seeds: its
    first seed's model), scored by its mean final loss."""
    if params.mlflow.registered_model is None:
        return None
    best = next(iter(rankings.values()))[0]
    tags = {key: lineage[key] for key in ("git.commit", "params.sha256", "data.sha256")}
    return tracker.register_model(
        best.name, params.mlflow.registered_model, tags, best.final_loss[0]
    )


def _rank_by_noise(results: list[RunResult], params: Params) -> dict[float, list[stats.Ranked]]:
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


def _per_seed_bytes(result: RunResult) -> bytes:
    """Every seed's per-step loss and rates, (seeds, epochs, 1 + groups) float64, as .npy.

    One file per run logs in one call, where per-seed metrics would be seeds x steps values.
    """
    import io

    table = np.concatenate([result.losses[:, :, None], result.rates], axis=2)
    buffer = io.BytesIO()
    np.save(buffer, table, allow_pickle=False)
    return buffer.getvalue()


def metrics_json(results: list[RunResult], ranked: dict[str, stats.Ranked]) -> str:
    """Final metrics and ranking per run, for ``dvc metrics show``: stable order."""
    table = {r.name: {**r.summary, **_ranking_metrics(ranked[r.name])} for r in results}
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
