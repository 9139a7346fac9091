"""Summaries over seeds, against scipy's own interval and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pipeline.core.stats import mean_interval, median_interval, time_to_target


def test_interval_equals_scipy_t_interval():
    rng = np.random.default_rng(0)
    values = rng.normal(1.0, 0.3, size=(12, 5))
    mean, half_width = mean_interval(values)
    for column in range(5):
        sample = values[:, column]
        low, high = scipy_stats.t.interval(
            0.95, len(sample) - 1, loc=sample.mean(), scale=scipy_stats.sem(sample)
        )
        assert mean[column] == pytest.approx((low + high) / 2, rel=1e-12)
        assert half_width[column] == pytest.approx((high - low) / 2, rel=1e-12)


def test_one_seed_has_no_interval():
    mean, half_width = mean_interval(np.array([[0.5, 0.25]]))
    np.testing.assert_array_equal(mean, [0.5, 0.25])
    assert np.isnan(half_width).all()


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_interval_at_any_level_equals_scipy_t_interval(level):
    sample = np.random.default_rng(2).normal(0.8, 0.05, size=7)
    mean, half_width = mean_interval(sample, level=level)
    low, high = scipy_stats.t.interval(
        level, len(sample) - 1, loc=sample.mean(), scale=scipy_stats.sem(sample)
    )
    assert mean == pytest.approx((low + high) / 2, rel=1e-12)
    assert half_width == pytest.approx((high - low) / 2, rel=1e-12)


def test_interval_refuses_no_values_and_a_level_outside_zero_one():
    with pytest.raises(ValueError, match="at least one"):
        mean_interval([])
    with pytest.raises(ValueError, match="level"):
        mean_interval([1.0, 2.0], level=1.0)


def test_time_to_target_counts_the_updates_done_when_the_loss_was_measured():
    losses = np.array([[0.9, 0.5, 0.1, 0.05], [0.9, 0.8, 0.7, 0.6], [0.04, 0.5, 0.01, 0.0]])
    # A training loss precedes its update: reaching it at index 2 took 2 updates.
    np.testing.assert_array_equal(time_to_target(losses, 0.1, first=0), [2, np.inf, 0])
    # A validation loss follows its update: the same index took 3.
    np.testing.assert_array_equal(time_to_target(losses, 0.1), [3, np.inf, 1])


def test_median_interval_brackets_the_median_and_keeps_misses_infinite():
    rng = np.random.default_rng(3)
    times = np.array([10.0, 12.0, 14.0, 15.0, np.inf, np.inf, np.inf])
    median, low, high = median_interval(times, rng, draws=500)
    assert median == 15.0 and low <= median <= high and high == np.inf
    # The interval is the bootstrap's percentiles, drawn again from the same generator state.
    again = np.median(np.random.default_rng(3).choice(times, size=(500, 7)), axis=1)
    assert low == np.quantile(again, 0.025, method="lower")


def test_ranking_tests_each_schedule_against_the_best_paired_by_seed():
    from pipeline.core.stats import markdown, rank

    rng = np.random.default_rng(1)
    base = rng.uniform(0.1, 0.2, size=12)
    finals = {"best": base, "worse": base + 0.05, "same": base + rng.normal(0, 1e-4, 12)}
    accuracy = {name: np.full(12, 0.9) for name in finals}
    curves = {name: np.linspace(1, value, 50).T for name, value in finals.items()}
    rows = rank(finals, accuracy, curves, target_loss=0.5)
    assert rows[0].name in {"best", "same"}
    by_name = {row.name: row for row in rows}
    leader = rows[0].name
    raw = scipy_stats.wilcoxon(finals["worse"] - finals[leader]).pvalue
    other = "same" if leader == "best" else "best"
    raw_other = scipy_stats.wilcoxon(finals[other] - finals[leader]).pvalue
    # Holm: the smaller p is multiplied by 2, the larger by 1, and kept monotone.
    assert by_name["worse"].p_vs_best == pytest.approx(min(1, 2 * raw))
    assert by_name[other].p_vs_best == pytest.approx(max(min(1, 2 * raw), raw_other))
    assert by_name["worse"].significant is True
    assert by_name["worse"].rank == 3
    assert by_name["worse"].steps_to_target[0] > 0 and by_name["worse"].reached == 12
    table = markdown(rows, 0.5)
    assert table.count("\n| ") == 4 and "| 1 | " in table and "| best |" in table


def test_one_seed_ranks_but_tests_nothing():
    from pipeline.core.stats import rank

    rows = rank(
        {"a": np.array([0.2]), "b": np.array([0.1])},
        {"a": np.array([0.9]), "b": np.array([0.8])},
        {"a": np.array([[0.5, 0.2]]), "b": np.array([[0.5, 0.1]])},
        target_loss=0.15,
    )
    assert [(r.name, r.p_vs_best, r.significant, r.reached) for r in rows] == [
        ("b", None, None, 1),
        ("a", None, None, 0),
    ]
