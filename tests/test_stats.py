"""Summaries over seeds, against scipy's own interval and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pipeline.core.stats import mean_interval, steps_to


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


def test_steps_to_target():
    losses = np.array([[0.9, 0.5, 0.1, 0.05], [0.9, 0.8, 0.7, 0.6], [0.04, 0.5, 0.01, 0.0]])
    np.testing.assert_array_equal(steps_to(losses, 0.1), [2, np.nan, 0])


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
