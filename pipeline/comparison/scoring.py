"""Fair comparison of learning-rate schedules, after MLCommons AlgoPerf's external-tuning scoring.

For every schedule and workload: S studies of T trials; a trial's time is the number of updates
until its validation loss first reaches the workload's target (infinite if never); a study's time
is its fastest trial; the per-workload time is the median over studies; per workload, each
schedule's time is divided by the fastest schedule's; the performance profile of a schedule is
the share of workloads whose ratio is within a factor tau of the best, and its benchmark score is
the profile's area over [1, r_max], divided by r_max - 1.

AlgoPerf references are to github.com/mlcommons/algorithmic-efficiency (commit 2c90454, 2025-09):
``scoring/performance_profile.py`` (``get_best_trial_index``, ``get_workloads_time_to_target``,
``compute_performance_profiles``, ``compute_leaderboard_score``), ``scoring/score_submissions.py``
(the official call: ``min_tau=1.0, max_tau=4.0, num_points=100, scale='linear'``, normalised
trapezoid) and ``docs/DOCUMENTATION.md`` (sections "External Tuning Ruleset" and "AlgoPerf
Benchmark Score via Integrated Performance Profiles").

Pure numpy; no torch, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from pipeline.core.stats import time_to_target

FloatArray = npt.NDArray[np.float64]

#: AlgoPerf's upper integration limit (DOCUMENTATION.md: "r_max = 4").
R_MAX = 4.0


def study_best(times: npt.ArrayLike) -> FloatArray:
    """Per study, the fastest trial's time: (..., studies, trials) -> (..., studies).

    ``inf`` when no trial of the study reached the target. AlgoPerf (``get_best_trial_index``)
    picks the trial that reaches the target at the earliest evaluation; with the loss recorded
    after every update, as here, that is the trial with the fewest updates.
    """
    values = _times(times, "times")
    if values.ndim == 0 or values.shape[-1] == 0:
        raise ValueError("times needs a non-empty trials axis (its last axis)")
    result: FloatArray = values.min(axis=-1)
    return result


def median_over_studies(study_times: npt.ArrayLike) -> FloatArray:
    """The median over the last axis (studies), in which ``inf`` takes part as a value.

    As AlgoPerf's ``np.median(time_vals_per_study)`` (``get_workloads_time_to_target``;
    DOCUMENTATION.md: a miss "receives inf, which participates in the median"): the median of
    [3, inf, inf] is inf, of [3, 5, inf] is 5. With an even number of studies the median is the
    mean of the middle two, so [3, inf] gives inf: half the studies failing means failing.
    """
    values = _times(study_times, "study_times")
    if values.ndim == 0 or values.shape[-1] == 0:
        raise ValueError("study_times needs a non-empty studies axis (its last axis)")
    result: FloatArray = np.median(values, axis=-1)
    return result


def workload_time(losses: npt.ArrayLike, target: float) -> FloatArray:
    """AlgoPerf's per-workload time from losses shaped (..., studies, trials, steps).

    The median over studies of each study's fastest trial (DOCUMENTATION.md:
    ``t_{s,w} = median_j(min_i(t_{i,j}))``).
    """
    values = np.asarray(losses, dtype=np.float64)
    if values.ndim < 3:
        raise ValueError("losses must be shaped (..., studies, trials, steps)")
    return median_over_studies(study_best(time_to_target(values, target)))


def ratios(times: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per workload, each schedule's time divided by the fastest schedule's time on it.

    ``times`` maps schedule -> workload -> per-workload time (> 0, or ``inf``); every schedule
    must have the same workloads. The fastest schedule gets exactly 1; one that never reached
    the target gets ``inf``. A workload that no schedule reached gets ``inf`` for every schedule
    and still counts as a workload (in the profile's denominator): this is what AlgoPerf does
    (``compute_performance_profiles`` divides by the column minimum; inf / inf is NaN, which
    ``DataFrame.update`` skips, leaving the inf in place; ``rho`` divides by the fixed
    ``NUM_BASE_WORKLOADS``). It takes the same 1/n off every schedule's profile and score, so it
    changes no ranking, and keeps scores comparable across comparisons on the same workloads.

    AlgoPerf also sets a time to ``inf`` before dividing when it exceeds 4 times the fastest;
    that changes nothing in the profile on [1, 4] nor in the score, so the ratio here stays
    finite (Dolan and More's definition), which is more informative beyond tau = 4.
    """
    workloads = _workloads(times)
    result: dict[str, dict[str, float]] = {schedule: {} for schedule in times}
    for workload in workloads:
        column = {schedule: float(row[workload]) for schedule, row in times.items()}
        for schedule, time in column.items():
            if math.isnan(time) or time <= 0:
                raise ValueError(f"time of {schedule!r} on {workload!r} is {time}; need > 0")
        fastest = min(column.values())
        for schedule, time in column.items():
            result[schedule][workload] = math.inf if math.isinf(fastest) else time / fastest
    return result


def performance_profile(
    ratios: Mapping[str, Mapping[str, float]], taus: npt.ArrayLike
) -> dict[str, FloatArray]:
    """Per schedule, the share of workloads whose ratio is at most each tau.

    ``rho_s(tau) = |{w : r_{s,w} <= tau}| / n`` (DOCUMENTATION.md, "Building performance
    profiles"; ``rho`` in ``compute_performance_profiles``), n counting every workload, also
    those with all ratios infinite. The result has the shape of ``taus`` (finite values: an
    infinite ratio is within no factor tau, and ``inf <= inf`` would say otherwise).
    """
    workloads = _workloads(ratios)
    grid = np.asarray(taus, dtype=np.float64)
    if not np.isfinite(grid).all():
        raise ValueError("taus must be finite (an infinite ratio is within no finite factor)")
    profile: dict[str, FloatArray] = {}
    for schedule, row in ratios.items():
        values = _ratio_row(row, workloads, schedule)
        within = values[:, np.newaxis] <= grid.ravel()[np.newaxis, :]
        profile[schedule] = within.mean(axis=0).reshape(grid.shape)
    return profile


def benchmark_score(
    ratios: Mapping[str, Mapping[str, float]], r_max: float = R_MAX
) -> dict[str, float]:
    """AlgoPerf's benchmark score: the profile's area over [1, r_max] divided by r_max - 1.

    ``B_s = 1/(r_max - 1) * integral_1^r_max rho_s(tau) dtau`` (DOCUMENTATION.md, "Integrating
    performance profiles for the benchmark score"), in [0, 1]. Computed exactly: the profile is
    a mean of steps 1[r_w <= tau], and a step at r contributes r_max - max(r, 1) to the integral
    when r <= r_max and 0 otherwise, so ``B_s = mean_w clip((r_max - max(r_w, 1)) /
    (r_max - 1), 0, 1)``. AlgoPerf samples the profile at ``np.linspace(1, 4, 100)`` and
    integrates with the trapezoid rule (``compute_leaderboard_score``); that differs from the
    exact area by at most half a grid step per workload, i.e. by at most 1 / (2 * 99) ~ 0.005.
    """
    if not (r_max > 1 and math.isfinite(r_max)):
        raise ValueError(f"r_max must be finite and > 1, got {r_max}")
    workloads = _workloads(ratios)
    scores: dict[str, float] = {}
    for schedule, row in ratios.items():
        values = _ratio_row(row, workloads, schedule)
        credit = np.clip((r_max - np.maximum(values, 1.0)) / (r_max - 1.0), 0.0, 1.0)
        scores[schedule] = float(credit.mean())
    return scores


def expected_best_after_k(
    trial_values: npt.ArrayLike,
    ks: Sequence[int],
    rng: np.random.Generator,
    draws: int = 1000,
) -> FloatArray:
    """Bootstrap of the best (lowest) of k trials drawn with replacement from ``trial_values``.

    ``trial_values`` is 1-D: the times to target of the trials that were run (``inf`` for a
    miss). As the mean of the best would be infinite as soon as k misses can be drawn together,
    the result separates the two things it mixes: an array shaped (2, len(ks)) whose row 0 is
    the share of draws in which at least one of the k trials reached the target, and row 1 the
    mean best time over those draws (NaN if none did). Unpack as ``reached, best = ...``. With
    no misses, row 0 is 1 and row 1 is the plain expected best. ``expected_best_after_k_exact``
    gives both in closed form.

    Drawing with replacement follows the expected-validation-performance estimator of Dodge et
    al. (2019, "Show your work"); AlgoPerf itself reports no such curve (its studies draw
    distinct points).
    """
    values = _trial_values(trial_values)
    sizes = _ks(ks)
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    result = np.empty((2, len(sizes)))
    for column, k in enumerate(sizes):
        best = values[rng.integers(0, len(values), size=(draws, k))].min(axis=1)
        finite = np.isfinite(best)
        result[0, column] = finite.mean()
        result[1, column] = best[finite].mean() if finite.any() else np.nan
    return result


def expected_best_after_k_exact(trial_values: npt.ArrayLike, ks: Sequence[int]) -> FloatArray:
    """Closed form of ``expected_best_after_k``: (2, len(ks)), reached share and mean best.

    With the n values sorted, v_(1) <= ... <= v_(n), the best of k draws with replacement is
    v_(i) when all k draws fall in positions i..n but not all in i+1..n, which has probability
    ((n - i + 1) / n)^k - ((n - i) / n)^k (ties need no care: tied values just add up). With m
    finite values, P(reached) = 1 - ((n - m) / n)^k and the mean best given reached is
    sum_{i <= m} v_(i) P(best = v_(i)) / P(reached).
    """
    values = np.sort(_trial_values(trial_values))
    sizes = _ks(ks)
    n = len(values)
    finite = int(np.isfinite(values).sum())
    share_from = (n - np.arange(n + 1)) / n  # share of positions i..n (0-based i), then 0
    result = np.empty((2, len(sizes)))
    for column, k in enumerate(sizes):
        all_from = share_from**k
        probability = all_from[:-1] - all_from[1:]
        reached = 1.0 - ((n - finite) / n) ** k
        result[0, column] = reached
        if finite:
            result[1, column] = float(values[:finite] @ probability[:finite]) / reached
        else:
            result[1, column] = np.nan
    return result


def at_edge(
    value: float, low: float, high: float, log: bool = True, fraction: float = 0.05
) -> bool:
    """Whether ``value`` lies within ``fraction`` of the range's width of either end.

    The width is measured in log space when ``log`` (as for a learning rate searched
    log-uniformly), else linearly. A value outside [low, high] counts as at the edge.
    """
    if not low < high:
        raise ValueError(f"need low < high, got {low}, {high}")
    if not 0 <= fraction < 0.5:
        raise ValueError(f"fraction must be in [0, 0.5), got {fraction}")
    if math.isnan(value):
        raise ValueError("value is NaN")
    if log:
        if low <= 0 or value <= 0:
            raise ValueError("a log-space range needs positive low and value")
        value, low, high = math.log(value), math.log(low), math.log(high)
    position = (value - low) / (high - low)
    return position <= fraction or position >= 1 - fraction


def _times(times: npt.ArrayLike, name: str) -> FloatArray:
    values = np.asarray(times, dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError(f"{name} contain NaN; a miss is inf")
    return values


def _workloads(table: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The workloads of a schedule -> workload table, checked to be the same for all."""
    if not table:
        raise ValueError("no schedules")
    first = next(iter(table.values()))
    workloads = list(first)
    if not workloads:
        raise ValueError("no workloads")
    for schedule, row in table.items():
        if set(row) != set(workloads):
            raise ValueError(
                f"{schedule!r} has workloads {sorted(row)}, another has {sorted(workloads)}"
            )
    return workloads


def _ratio_row(row: Mapping[str, float], workloads: list[str], schedule: str) -> FloatArray:
    values = np.array([row[workload] for workload in workloads], dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError(f"ratios of {schedule!r} contain NaN")
    return values


def _trial_values(trial_values: npt.ArrayLike) -> FloatArray:
    values = _times(trial_values, "trial_values")
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("trial_values must be a non-empty 1-D array")
    return values


def _ks(ks: Sequence[int]) -> list[int]:
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of integers >= 1, got {list(ks)}")
    return [int(k) for k in ks]
