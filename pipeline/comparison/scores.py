"""The tuning's scores, typed: every number the report, the figures, MLflow and ``dvc metrics``
show, computed by :func:`score` from a :class:`~pipeline.comparison.tuning.TuningResult` with
AlgoPerf's functions (:mod:`pipeline.comparison.scoring`).

Tables are nested dicts keyed by name, in the params' order: ``validation_times[schedule]
[workload]``, ``test[workload][schedule]``, ``budget[workload][schedule]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.comparison import scoring
from pipeline.core import stats

if TYPE_CHECKING:  # annotations only: scoring needs no torch
    from pipeline.comparison.plan import ComparisonParams
    from pipeline.comparison.tuning import TuningResult

#: schedule -> workload -> value
Table = dict[str, dict[str, float]]


@dataclass(frozen=True)
class RerunScore:
    """One chosen setting's re-runs on one workload, measured on the test set: the median
    updates to the test target with its bootstrap interval, the share of seeds that reached
    it, and the final test loss and accuracy, each a mean with its 95% half-width."""

    median_time: float
    time_low: float
    time_high: float
    reached: float
    test_loss: float
    test_loss_half: float
    test_accuracy: float
    test_accuracy_half: float


@dataclass(frozen=True)
class BudgetCurve:
    """After k = 1, 2, ... trials (``Scores.budget_ks``): the chance that the best of k reached
    the target, and the expected best time and best validation loss of k."""

    reached: list[float]
    best_time: list[float]
    best_loss: list[float]


@dataclass(frozen=True)
class Scores:
    schedules: list[str]
    tuned: list[str]  # workloads the settings were chosen on
    held_out: list[str]
    validation_times: Table  # the median study's time of the chosen setting
    validation_ratios: Table  # time / the fastest schedule's on that workload
    taus: list[float]  # the performance profile's sample points over [1, r_max]
    profiles: dict[str, list[float]]  # schedule -> profile at each tau
    benchmark_score: dict[str, float]
    test: dict[str, dict[str, RerunScore]]  # workload -> schedule, every workload
    test_ratios: Table
    test_benchmark_score: dict[str, float]
    held_out_ratios: Table
    budget_ks: list[int]
    budget: dict[str, dict[str, BudgetCurve]]  # tuned workload -> schedule
    edges: list[str]  # "<schedule> on <workload>" whose chosen rate is at its range's edge

    def best(self) -> str:
        """The schedule with the highest validation benchmark score (ties: the later name)."""
        return max(self.benchmark_score, key=lambda s: (self.benchmark_score[s], s))


def _rerun_scores(
    result: TuningResult, schedules: Sequence[str], rng: np.random.Generator, bootstrap: int
) -> dict[str, dict[str, RerunScore]]:
    """Per workload and schedule: the re-runs' median time to the test target with its
    bootstrap interval, the share that reached it, and test loss and accuracy with their 95%
    half-widths. ``rng`` is drawn from in workload, then schedule order."""
    test: dict[str, dict[str, RerunScore]] = {}
    for w in result.workloads:
        test[w.name] = {}
        for s in schedules:
            runs = [r for r in result.reruns if r.workload == w.name and r.schedule == s]
            times = np.array([r.time for r in runs])
            median, low, high = stats.median_interval(times, rng, bootstrap)
            losses, accuracies = [r.final_loss for r in runs], [r.accuracy for r in runs]
            loss, loss_half = stats.as_floats(stats.mean_interval(losses))
            accuracy, accuracy_half = stats.as_floats(stats.mean_interval(accuracies))
            test[w.name][s] = RerunScore(
                median_time=median,
                time_low=low,
                time_high=high,
                reached=float(np.isfinite(times).mean()),
                test_loss=loss,
                test_loss_half=loss_half,
                test_accuracy=accuracy,
                test_accuracy_half=accuracy_half,
            )
    return test


def _budget_curves(
    result: TuningResult, tuned: Sequence[str], schedules: Sequence[str], ks: list[int]
) -> dict[str, dict[str, BudgetCurve]]:
    """Per tuned workload and schedule: the expected best time and loss after k trials."""
    budget: dict[str, dict[str, BudgetCurve]] = {}
    for name in tuned:
        budget[name] = {}
        for s in schedules:
            rows = result.rows(s, name)
            reached, best_time = scoring.expected_best_after_k_exact(result.times[rows], ks)
            _, best_loss = scoring.expected_best_after_k_exact(result.best_losses[rows], ks)
            budget[name][s] = BudgetCurve(
                reached=reached.tolist(), best_time=best_time.tolist(), best_loss=best_loss.tolist()
            )
    return budget


def score(params: ComparisonParams, result: TuningResult) -> Scores:
    """Every number the report, the figures, MLflow and ``dvc metrics`` show."""
    plan, tuning = params.search, params.tuning
    schedules = list(plan.spaces)
    tuned = [w.name for w in result.workloads if not w.held_out]
    held_out = [w.name for w in result.workloads if w.held_out]
    taus = np.linspace(1.0, tuning.r_max, 100)

    validation_times = {s: {w: result.chosen[w][s].median_time for w in tuned} for s in schedules}
    validation_ratios = scoring.ratios(validation_times)
    rng = np.random.default_rng(plan.seed)
    test = _rerun_scores(result, schedules, rng, tuning.bootstrap)
    test_times = {s: {w: test[w][s].median_time for w in tuned} for s in schedules}
    test_ratios = scoring.ratios(test_times)
    held_ratios = (
        scoring.ratios({s: {w: test[w][s].median_time for w in held_out} for s in schedules})
        if held_out
        else {s: {} for s in schedules}
    )
    ks = list(range(1, plan.trials * plan.studies + 1))
    budget = _budget_curves(result, tuned, schedules, ks)
    return Scores(
        schedules=schedules,
        tuned=tuned,
        held_out=held_out,
        validation_times=validation_times,
        validation_ratios=validation_ratios,
        taus=taus.tolist(),
        profiles={
            s: v.tolist() for s, v in scoring.performance_profile(validation_ratios, taus).items()
        },
        benchmark_score=scoring.benchmark_score(validation_ratios, tuning.r_max),
        test=test,
        test_ratios=test_ratios,
        test_benchmark_score=scoring.benchmark_score(test_ratios, tuning.r_max),
        held_out_ratios=held_ratios,
        budget_ks=ks,
        budget=budget,
        edges=sorted(
            [f"{s} on {w}" for w in tuned for s in schedules if result.chosen[w][s].at_edge]
            + [
                f"{s} on held-out workloads"
                for s, c in result.held_out_choice.items()
                if c.at_edge and held_out
            ]
        ),
    )
