"""The fair comparison (pipeline/comparison/tuning.py, stage tune): real training at a toy scale."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from pipeline.comparison import tuning
from pipeline.comparison.plan import parse_comparison
from pipeline.comparison.scores import score
from pipeline.core.validation import ParamsError
from pipeline.problems import workloads
from pipeline.schedules.specs import parse_spec
from tests.conftest import run, tiny_document
from tests.reference import train_reference

CPU = torch.device("cpu")


def full_document() -> dict:
    """Every default workload and schedule, at a toy scale."""
    return tiny_document(full_tuning=True)


@pytest.fixture(scope="module")
def params():
    return parse_comparison(full_document())


@pytest.fixture(scope="module")
def data(params):
    return workloads.generate_all(params.workloads, params.seed)


@pytest.fixture(scope="module")
def tuned(params, data):
    return tuning.run_protocol(params, data, CPU)


@pytest.mark.compute
def test_every_schedule_gets_the_same_number_of_trials(params, tuned):
    plan = params.search
    for workload in params.workloads:
        if workload.held_out:
            continue
        counts = {name: len(tuned.rows(name, workload.name)) for name in plan.spaces}
        assert set(counts.values()) == {plan.trials * plan.studies}, counts
    # The reference's extra trials serve the target only, and are marked so.
    reference = params.tuning.target.reference
    extra = tuned.rows(reference, "tutorial", tuning.TARGET_ONLY)
    assert len(extra) == (params.tuning.target.trials - plan.trials) * plan.studies
    # Held-out workloads train the reference alone (for their targets), nothing scored.
    assert not len(tuned.rows("OneCycleLR", "circles"))


@pytest.mark.compute
def test_the_draws_repeat_from_the_seed(params):
    workload = params.workloads[0]
    first = tuning.draw_trials(params, workload)
    assert first == tuning.draw_trials(params, workload)
    document = full_document()
    document["search"]["seed"] = 1
    other = tuning.draw_trials(parse_comparison(document), workload)
    assert [t.lr for t in first] != [t.lr for t in other]
    # The reference's compared trials are the first of its larger draw.
    reference = params.tuning.target.reference
    ours = [t.lr for t in first if t.schedule == reference and t.budget == tuning.SCORED]
    document = full_document()
    document["tuning"]["target"]["trials"] = params.search.trials
    alone = tuning.draw_trials(parse_comparison(document), workload)
    assert ours == [t.lr for t in alone if t.schedule == reference]


@pytest.mark.compute
def test_times_follow_the_evaluated_curves(params, tuned):
    """A trial's time is an evaluated update (a multiple of eval_every, or the last one), and a
    trial reached its target exactly when its lowest evaluated loss is at or below it."""
    every = params.tuning.eval_every
    budgets = {w.name: w.epochs for w in params.workloads}
    for trial, time, best in zip(tuned.trials, tuned.times, tuned.best_losses, strict=True):
        target = tuned.targets[trial.workload]["target"]
        assert math.isfinite(time) == (best <= target)
        if math.isfinite(time):
            assert time % every == 0 or time == budgets[trial.workload]


@pytest.mark.compute
def test_the_target_is_the_median_of_the_references_reruns(tuned, params):
    for target in tuned.targets.values():
        bests = target["rerun_bests"]
        assert len(bests) == params.tuning.reruns
        assert target["target"] == pytest.approx(float(np.median(bests)))
        # By construction about half the reference's re-runs reach it.
        assert sum(b <= target["target"] for b in bests) >= len(bests) // 2
    # The test target likewise, from the reference's chosen setting on the test set.
    reference = params.tuning.target.reference
    for workload in params.workloads:
        runs = [r for r in tuned.reruns if r.workload == workload.name and r.schedule == reference]
        reached = sum(math.isfinite(r.time) for r in runs)
        assert reached >= len(runs) // 2, (workload.name, reached)


@pytest.mark.compute
def test_selection_never_reads_the_test_set(params, data, tuned):
    """Corrupt every test set (labels flipped): every choice, target and trial time stays; the
    re-runs, which are measured on the test set, change."""
    corrupted = {
        name: dataclasses.replace(
            splits, test=dataclasses.replace(splits.test, labels=1 - splits.test.labels)
        )
        for name, splits in data.items()
    }
    again = tuning.run_protocol(params, corrupted, CPU)
    assert again.chosen == tuned.chosen
    assert again.held_out_choice == tuned.held_out_choice
    validation = ("target", "how", "reference", "reference_trial", "reference_lr", "rerun_bests")
    for name, target in tuned.targets.items():
        assert {k: again.targets[name][k] for k in validation} == {k: target[k] for k in validation}
    np.testing.assert_array_equal(again.times, tuned.times)
    before = [r.final_loss for r in tuned.reruns]
    after = [r.final_loss for r in again.reruns]
    assert all(a != b for a, b in zip(after, before, strict=True))
    # Control: corrupting the validation sets does change what is chosen.
    misled = {
        name: dataclasses.replace(
            splits,
            validation=dataclasses.replace(splits.validation, labels=1 - splits.validation.labels),
        )
        for name, splits in data.items()
    }
    assert tuning.run_protocol(params, misled, CPU).chosen != tuned.chosen


@pytest.mark.compute
def test_a_chosen_setting_alone_gives_the_numbers_of_the_batch(params, data, tuned):
    """Re-run alone (a batch of one), then as a plain torch loop (the twin): the same curve."""
    workload = params.workloads[0]
    splits = data[workload.name]
    for name, choice in tuned.chosen[workload.name].items():
        row = tuned.rows(name, workload.name)[choice.study * params.search.trials + choice.index]
        trial = tuned.trials[row]
        setting = [(name, trial.scheduler, trial.lr, params.seed)]
        curves, _ = tuning.train_settings(
            params, workload, setting, {params.seed: splits.train}, splits.validation, CPU
        )
        assert curves.losses[0].min() == pytest.approx(tuned.best_losses[row], abs=1e-6)
        assert curves.losses[0, -1] == pytest.approx(tuned.final_losses[row], abs=1e-6)
        target = tuned.targets[workload.name]["target"]
        assert curves.times(target)[0] == tuned.times[row]

        local = dataclasses.replace(  # the oracle's params: the workload's budget
            params,
            train=params.train.model_copy(update={"epochs": workload.epochs, "lr": trial.lr}),
        )
        spec = parse_spec(name, dict(trial.scheduler), workload.epochs)
        twin = train_reference(
            spec, local, splits.train, splits.test, CPU, splits.validation, workload.architecture
        )
        assert twin.validation_losses is not None
        np.testing.assert_allclose(
            curves.losses[0], twin.validation_losses[curves.steps - 1], rtol=0, atol=1e-6
        )


@pytest.mark.compute
def test_scores_follow_the_protocol(params, tuned):
    scores = score(params, tuned)
    tuned_names = [w.name for w in params.workloads if not w.held_out]
    assert scores.tuned == tuned_names
    for schedule in params.search.spaces:
        for workload in tuned_names:
            rows = tuned.rows(schedule, workload)
            per_study = tuned.times[rows].reshape(params.search.studies, -1).min(axis=1)
            assert scores.validation_times[schedule][workload] == np.median(per_study)
        assert 0.0 <= scores.benchmark_score[schedule] <= 1.0
    # Some schedule is the fastest on each workload a schedule reached: its ratio is 1.
    for workload in tuned_names:
        ratios = [scores.validation_ratios[s][workload] for s in params.search.spaces]
        assert min(ratios) == 1.0 or all(math.isinf(r) for r in ratios)
    assert set(scores.test) == {w.name for w in params.workloads}


@pytest.mark.compute
def test_the_edge_flag_fires_where_the_range_cuts_off_the_best_rate():
    """Rates so small that the largest always trains best: the choice sits at the top end."""
    document = tiny_document()
    document["search"]["lr"] = {"log_uniform": [1.0e-6, 1.0e-5]}
    document["search"]["spaces"] = {"constant": {"type": "constant"}}
    document["tuning"]["edge"] = 0.25  # 4 Sobol' points: one always lies in the top quarter
    document["tuning"]["target"]["trials"] = 4
    document["workloads"] = document["workloads"][:1]
    edgy = parse_comparison(document)
    result = tuning.run_protocol(edgy, workloads.generate_all(edgy.workloads, edgy.seed), CPU)
    choice = result.chosen["tutorial"]["constant"]
    assert choice.at_edge
    assert score(edgy, result).edges == ["constant on tutorial"]
    assert not tuning.edge_of(edgy, math.sqrt(1e-6 * 1e-5))  # the middle is no edge


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["tuning"]["target"].update(reference="nope"),
            r"tuning.target.reference: got 'nope'; must be one of the search spaces",
        ),
        (
            lambda d: d["tuning"]["target"].update(trials=2),
            r"tuning.target.trials: got 2; must be >= search.trials \(4\)",
        ),
        (
            lambda d: d["search"]["spaces"]["StepLR"].update(final_ratio={"log_uniform": [0, 1]}),
            r"search.spaces.StepLR.final_ratio: .*positive",
        ),
        (lambda d: d["tuning"].update(reruns=0), r"tuning.reruns"),
        (lambda d: d["workloads"][0].update(epochs=-1), r"workloads\[0\].epochs: got -1"),
    ],
)
def test_bad_tuning_params_name_the_key(change, message):
    document = copy.deepcopy(tiny_document())
    change(document)
    with pytest.raises(ParamsError, match=message):
        parse_comparison(document)


@pytest.mark.pipeline
def test_the_stage_writes_scores_for_dvc_and_mlflow(reproduced):
    """`dvc repro` ran tune: its outputs, `dvc metrics show`, the report, the MLflow runs."""
    root, env = reproduced["root"], reproduced["env"]
    out = root / "outputs" / "tuning"
    params = parse_comparison(tiny_document())
    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    plan = params.search
    scored = [r for r in rows if r["budget"] == tuning.SCORED]
    tuned_count = sum(not w.held_out for w in params.workloads)
    assert len(scored) == len(plan.spaces) * plan.studies * plan.trials * tuned_count
    chosen = json.loads((out / "chosen.json").read_text())
    assert set(chosen) == {w.name for w in params.workloads}
    for figure in ("profiles.png", "budget_curves.png", "chosen_rates.png", "test_times.png"):
        assert (out / "figures" / figure).stat().st_size > 0
    metrics = json.loads((root / "outputs" / "tuning.json").read_text())
    assert set(metrics["benchmark_score"]) == set(plan.spaces)
    shown = run(["dvc", "metrics", "show", "--json"], root, env).stdout
    assert "benchmark_score" in shown
    report = (root / "outputs" / "report.md").read_text()
    assert "The tutorial's claims after equal tuning" in report

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], "tags.`lrsched.kind` = 'tuning'")
    assert len(runs) == len(plan.spaces) * len(params.workloads)
    one = runs[0]
    assert [a.path for a in client.list_artifacts(one.info.run_id, "trials")]
    parents = client.search_runs([experiment.experiment_id], "tags.`lrsched.kind` = 'tune'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}


@pytest.mark.compute
def test_the_numbers_do_not_depend_on_how_many_processes_train(params, data, tuned):
    """One process, or three at once on however many cores: the same trials, choices, targets
    and re-runs to the last bit (each workload trains single-threaded wherever it runs)."""
    for workers in (1, 3):
        again = tuning.run_protocol(params, data, CPU, workers=workers)
        np.testing.assert_array_equal(again.times, tuned.times)
        np.testing.assert_array_equal(again.best_losses, tuned.best_losses)
        np.testing.assert_array_equal(again.final_losses, tuned.final_losses)
        assert again.targets == tuned.targets
        assert again.chosen == tuned.chosen
        assert again.reruns == tuned.reruns
