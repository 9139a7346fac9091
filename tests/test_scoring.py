"""AlgoPerf-style scoring: a hand-worked example, AlgoPerf's sampled integral, closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline.comparison.scoring import (
    at_edge,
    benchmark_score,
    expected_best_after_k,
    expected_best_after_k_exact,
    median_over_studies,
    performance_profile,
    ratios,
    study_best,
    workload_time,
)
from pipeline.core.stats import time_to_target

INF = math.inf

# The hand-worked example: 3 schedules x 3 workloads, per-workload times in updates.
#   w1: everyone reaches; C is 5x slower than A, beyond r_max = 4.
#   w2: B never reaches.
#   w3: only B reaches.
TIMES = {
    "A": {"w1": 100.0, "w2": 360.0, "w3": INF},
    "B": {"w1": 150.0, "w2": INF, "w3": 700.0},
    "C": {"w1": 500.0, "w2": 300.0, "w3": INF},
}
# Fastest per workload: w1 100 (A), w2 300 (C), w3 700 (B). Ratios = time / fastest:
#   A: w1 100/100 = 1,   w2 360/300 = 1.2, w3 inf (never reached)
#   B: w1 150/100 = 1.5, w2 inf,           w3 700/700 = 1
#   C: w1 500/100 = 5,   w2 300/300 = 1,   w3 inf
RATIOS = {
    "A": {"w1": 1.0, "w2": 1.2, "w3": INF},
    "B": {"w1": 1.5, "w2": INF, "w3": 1.0},
    "C": {"w1": 5.0, "w2": 1.0, "w3": INF},
}
# Profile rho(tau) = (number of workloads with ratio <= tau) / 3:
#   tau:  0.5  1    1.1  1.2  1.5  3.9  4    5    1e9
#   A:    0    1/3  1/3  2/3  2/3  2/3  2/3  2/3  2/3   (w1 from 1, w2 from 1.2)
#   B:    0    1/3  1/3  1/3  2/3  2/3  2/3  2/3  2/3   (w3 from 1, w1 from 1.5)
#   C:    0    1/3  1/3  1/3  1/3  1/3  1/3  2/3  2/3   (w2 from 1, w1 from 5)
TAUS = np.array([0.5, 1.0, 1.1, 1.2, 1.5, 3.9, 4.0, 5.0, 1e9])
PROFILE = {
    "A": np.array([0, 1, 1, 2, 2, 2, 2, 2, 2]) / 3,
    "B": np.array([0, 1, 1, 1, 2, 2, 2, 2, 2]) / 3,
    "C": np.array([0, 1, 1, 1, 1, 1, 1, 2, 2]) / 3,
}
# Benchmark score B = integral_1^4 rho(tau) dtau / (4 - 1):
#   A: 1/3 on [1, 1.2) and 2/3 on [1.2, 4]: (0.2 * 1/3 + 2.8 * 2/3) / 3 = (0.2 + 5.6) / 9 = 5.8/9
#      (= per workload (4 - r)/3, averaged: ((4-1)/3 + (4-1.2)/3 + 0) / 3 = (3 + 2.8) / 9)
#   B: 1/3 on [1, 1.5) and 2/3 on [1.5, 4]: (0.5 * 1/3 + 2.5 * 2/3) / 3 = (0.5 + 5) / 9 = 5.5/9
#   C: 1/3 on [1, 4] (its w1 ratio 5 > 4 earns nothing): (3 * 1/3) / 3 = 3/9
SCORES = {"A": 5.8 / 9, "B": 5.5 / 9, "C": 3 / 9}


def algoperf_sampled_scores(
    times: dict[str, dict[str, float]], r_max: float = 4.0, num_points: int = 100
) -> dict[str, float]:
    """AlgoPerf's own way, restated in numpy (scoring/performance_profile.py,
    compute_performance_profiles + compute_leaderboard_score, as score_submissions.py calls
    them): times beyond r_max x the fastest become inf; divide by the per-workload fastest
    (inf / inf is NaN, which their DataFrame.update skips, so the inf stays); rho on
    linspace(1, r_max, num_points) over all n workloads; trapezoid rule; / (r_max - 1)."""
    names = list(times)
    workloads = list(times[names[0]])
    t = np.array([[times[name][w] for w in workloads] for name in names])
    fastest = t.min(axis=0)
    t = np.where(t > r_max * fastest, INF, t)
    with np.errstate(invalid="ignore"):
        r = np.where(np.isinf(fastest), t, t / fastest)
    taus = np.linspace(1.0, r_max, num=num_points)
    rho = (r[:, :, np.newaxis] <= taus).sum(axis=1) / len(workloads)
    area = np.trapezoid(rho, x=taus, axis=1) / (taus.max() - taus.min())
    return {name: float(a) for name, a in zip(names, area, strict=True)}


# --- time to target, best per study, median over studies ---


def test_time_to_target_counts_updates_from_one():
    losses = np.array(
        [
            [0.9, 0.5, 0.1, 0.05],  # first <= 0.1 at index 2: 3 updates (equal counts)
            [0.9, 0.8, 0.7, 0.6],  # never
            [0.04, 0.5, 0.01, 0.0],  # reached after the first update
            [np.nan, np.nan, 0.05, 0.2],  # NaN never counts as reached
            [0.5, np.nan, np.nan, np.nan],  # diverged: never
        ]
    )
    np.testing.assert_array_equal(time_to_target(losses, 0.1), [3, INF, 1, 3, INF])


def test_time_to_target_is_vectorised_over_leading_axes():
    losses = np.array(
        [
            [[3.0, 2.0, 1.0], [0.5, 0.4, 0.3]],
            [[9.0, 9.0, 9.0], [2.0, 0.9, 2.0]],
        ]
    )  # (studies=2, trials=2, steps=3)
    times = time_to_target(losses, 1.0)
    assert times.shape == (2, 2)
    np.testing.assert_array_equal(times, [[3, 1], [INF, 2]])
    assert time_to_target(np.array([0.5, 2.0]), 1.0) == 1  # a single run gives a 0-d array
    np.testing.assert_array_equal(time_to_target(np.empty((2, 0)), 1.0), [INF, INF])


def test_study_best_takes_the_fastest_trial_and_inf_when_none_reached():
    times = np.array([[5.0, INF, 3.0], [INF, INF, INF], [7.0, 2.0, 2.0]])
    np.testing.assert_array_equal(study_best(times), [3, INF, 2])
    with pytest.raises(ValueError, match="NaN"):
        study_best(np.array([[1.0, np.nan]]))


@pytest.mark.parametrize(
    ("study_times", "median"),
    [
        ([3, INF, INF], INF),  # most studies failed: failed
        ([3, 5, INF], 5),  # one failed study of three is outvoted
        ([INF, 5, 3], 5),  # order does not matter
        ([3, INF], INF),  # even count: mean of the middle two, (3 + inf) / 2
        ([4, 6], 5),
        ([INF, INF, INF], INF),
    ],
)
def test_median_over_studies_lets_inf_take_part(study_times, median):
    assert median_over_studies(np.array(study_times, dtype=float)) == median


def test_workload_time_is_the_median_of_the_study_bests():
    target = 1.0
    never, at = [2.0, 2.0, 2.0, 2.0], lambda n: [2.0] * (n - 1) + [1.0] * (5 - n)
    losses = np.array(
        [
            [at(4), at(2), never],  # study best 2
            [never, never, never],  # study best inf
            [at(3), never, at(5)],  # study best 3
        ]
    )  # (studies=3, trials=3, steps=5)
    assert workload_time(losses, target) == 3  # median of [2, inf, 3]
    # Two schedules at once: a leading axis passes through.
    both = np.stack([losses, losses[[0, 0, 2]]])
    np.testing.assert_array_equal(workload_time(both, target), [3, 2])  # median [2, 2, 3]


# --- ratios, profile, score: the hand-worked example ---


def test_ratios_of_the_hand_worked_example():
    assert ratios(TIMES) == RATIOS


def test_profile_of_the_hand_worked_example():
    profile = performance_profile(RATIOS, TAUS)
    assert set(profile) == set(PROFILE)
    for name, expected in PROFILE.items():
        np.testing.assert_allclose(profile[name], expected, rtol=0, atol=1e-15, err_msg=name)


def test_exact_scores_of_the_hand_worked_example():
    scores = benchmark_score(RATIOS)
    assert scores == pytest.approx(SCORES, rel=1e-12)
    # Up to r_max = 6 C's ratio 5 earns (6 - 5) / 5: C = ((6-5)/5 + (6-1)/5 + 0) / 3 = 6/15.
    assert benchmark_score(RATIOS, r_max=6.0)["C"] == pytest.approx(6 / 15, rel=1e-12)


def test_exact_scores_match_algoperfs_sampled_integration_within_its_sampling_error():
    # Trapezoids over a grid of step h err by at most h/2 per workload, i.e. by at most
    # (h / 2) / (r_max - 1) = 1 / (2 * (num_points - 1)) in the normalised score.
    exact = benchmark_score(ratios(TIMES))
    for num_points in (100, 1001, 100_000):
        sampled = algoperf_sampled_scores(TIMES, num_points=num_points)
        bound = 1 / (2 * (num_points - 1))
        for name in TIMES:
            assert abs(sampled[name] - exact[name]) <= bound + 1e-12, (name, num_points)
    # AlgoPerf's official grid (100 points) on this example: A's step at 1.2 falls inside a
    # grid interval, so the sampled score really differs from the exact one.
    assert algoperf_sampled_scores(TIMES)["A"] != pytest.approx(exact["A"], abs=1e-6)


def test_scores_agree_with_algoperf_on_random_tables():
    rng = np.random.default_rng(3)
    for _ in range(20):
        table = rng.uniform(10, 100, size=(4, 6))
        table[rng.random(table.shape) < 0.25] = INF
        times = {f"s{i}": {f"w{j}": float(table[i, j]) for j in range(6)} for i in range(4)}
        exact = benchmark_score(ratios(times))
        sampled = algoperf_sampled_scores(times)
        for name in times:
            assert abs(sampled[name] - exact[name]) <= 1 / 198 + 1e-12


def test_a_workload_no_schedule_reaches_counts_for_nobody_but_stays_in_n():
    times = {name: {**row, "w4": INF} for name, row in TIMES.items()}
    table = ratios(times)
    assert all(table[name]["w4"] == INF for name in times)
    assert {name: table[name]["w1"] for name in times} == {"A": 1.0, "B": 1.5, "C": 5.0}
    # Four workloads now: every profile and score is 3/4 of the three-workload one.
    profile = performance_profile(table, TAUS)
    for name in times:
        np.testing.assert_allclose(profile[name], PROFILE[name] * 3 / 4, rtol=0, atol=1e-15)
    assert benchmark_score(table) == pytest.approx({n: s * 3 / 4 for n, s in SCORES.items()})
    # AlgoPerf's pipeline does the same (inf / inf stays inf; n stays 4).
    sampled = algoperf_sampled_scores(times)
    assert all(abs(sampled[n] - SCORES[n] * 3 / 4) <= 1 / 198 for n in times)


def test_tables_must_be_complete_and_sensible():
    with pytest.raises(ValueError, match="workloads"):
        ratios({"A": {"w1": 1.0, "w2": 2.0}, "B": {"w1": 1.0}})
    with pytest.raises(ValueError, match="> 0"):
        ratios({"A": {"w1": 0.0}, "B": {"w1": 1.0}})
    with pytest.raises(ValueError, match="> 0"):
        ratios({"A": {"w1": np.nan}, "B": {"w1": 1.0}})
    with pytest.raises(ValueError, match="finite"):
        performance_profile(RATIOS, [1.0, INF])
    with pytest.raises(ValueError, match="r_max"):
        benchmark_score(RATIOS, r_max=1.0)


# --- expected best after k trials ---


def brute_force_best_after_k(values: list[float], k: int) -> tuple[float, float]:
    """All n^k equally likely draws with replacement: reached share, mean best when reached."""
    bests = [min(draw) for draw in itertools.product(values, repeat=k)]
    finite = [b for b in bests if math.isfinite(b)]
    return len(finite) / len(bests), (sum(finite) / len(finite) if finite else math.nan)


def test_closed_form_by_hand_and_by_enumeration():
    # [1, 2, inf], k = 2: 9 pairs; best 1 unless both avoid it: 1 - (2/3)^2 = 5/9;
    # best 2: (2/3)^2 - (1/3)^2 = 3/9; best inf: (1/3)^2 = 1/9.
    # Reached 8/9; mean best when reached (5*1 + 3*2) / 8 = 11/8.
    reached, best = expected_best_after_k_exact([1.0, 2.0, INF], [1, 2])
    np.testing.assert_allclose(reached, [2 / 3, 8 / 9], rtol=1e-12)
    np.testing.assert_allclose(best, [1.5, 11 / 8], rtol=1e-12)
    values = [7.0, 3.0, INF, 3.0, 10.0, INF]  # ties and misses
    ks = [1, 2, 3, 5]
    exact = expected_best_after_k_exact(values, ks)
    for column, k in enumerate(ks):
        np.testing.assert_allclose(exact[:, column], brute_force_best_after_k(values, k))


def test_bootstrap_agrees_with_the_closed_form():
    values = np.array([12.0, 30.0, 45.0, 18.0, INF, 80.0, 25.0, INF, 60.0, 15.0, INF, 95.0])
    ks = [1, 2, 3, 5, 10, 20]
    draws = 20_000
    reached, best = expected_best_after_k(values, ks, np.random.default_rng(0), draws=draws)
    exact_reached, exact_best = expected_best_after_k_exact(values, ks)
    # Five standard errors: a share's is sqrt(p (1 - p) / draws); a mean's is at most half the
    # range of the finite values (Popoviciu) over sqrt(the draws that reached).
    share_se = np.sqrt(exact_reached * (1 - exact_reached) / draws)
    np.testing.assert_array_less(np.abs(reached - exact_reached), 5 * share_se + 1e-12)
    finite = values[np.isfinite(values)]
    mean_se = (finite.max() - finite.min()) / 2 / np.sqrt(draws * exact_reached)
    np.testing.assert_array_less(np.abs(best - exact_best), 5 * mean_se)
    # The curve means something: more trials, more often reached, and faster.
    assert np.all(np.diff(exact_reached) > 0) and np.all(np.diff(exact_best) < 0)
    assert exact_best[0] == pytest.approx(finite.mean())  # one trial: a random finite one


def test_best_after_k_when_nothing_reached_and_bad_arguments():
    rng = np.random.default_rng(1)
    reached, best = expected_best_after_k([INF, INF], [1, 3], rng, draws=50)
    np.testing.assert_array_equal(reached, [0, 0])
    assert np.isnan(best).all()
    exact_reached, exact_best = expected_best_after_k_exact([INF, INF], [1, 3])
    np.testing.assert_array_equal(exact_reached, [0, 0])
    assert np.isnan(exact_best).all()
    with pytest.raises(ValueError, match="ks"):
        expected_best_after_k([1.0], [0], rng)
    with pytest.raises(ValueError, match="1-D"):
        expected_best_after_k_exact(np.ones((2, 2)), [1])


# --- learning rate at the edge of its range; interval over seeds ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e-4, True),  # the low end itself
        (1.2e-4, True),  # 0.08 of 3 decades above the low end: within 5% (0.15 decade)
        (2e-4, False),  # 0.3 decade above
        (1e-2, False),
        (3e-3, False),  # mid-range in log space (it is at the low edge linearly: below)
        (0.08, True),  # 0.097 decade below the top
        (0.05, False),  # 0.3 decade below the top
        (1e-5, True),  # outside the range counts as at the edge
    ],
)
def test_at_edge_in_log_space(value, expected):
    assert at_edge(value, 1e-4, 1e-1) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.14, True), (0.2, False), (0.5, False), (0.9, False), (0.96, True), (1.0, True)],
)
def test_at_edge_in_linear_space(value, expected):
    # Width 0.9: 5% is 0.045 from either end, i.e. below 0.145 or above 0.955.
    assert at_edge(value, 0.1, 1.0, log=False) is expected


def test_at_edge_log_and_linear_disagree_and_fraction_matters():
    # 3e-3 in [1e-4, 1e-1]: linearly (3e-3 - 1e-4) / 0.0999 = 0.029 of the width; in log space
    # log10(30) / 3 = 0.49.
    assert at_edge(3e-3, 1e-4, 1e-1, log=False)
    assert not at_edge(3e-3, 1e-4, 1e-1, log=True)
    assert not at_edge(2e-4, 1e-4, 1e-1)
    assert at_edge(2e-4, 1e-4, 1e-1, fraction=0.15)  # 0.1 of the width
    with pytest.raises(ValueError, match="positive"):
        at_edge(0.5, 0.0, 1.0, log=True)
    with pytest.raises(ValueError, match="low < high"):
        at_edge(0.5, 1.0, 0.1)
