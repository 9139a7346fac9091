"""Summaries over seeds, against scipy's own interval and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pipeline.stats import mean_interval, steps_to


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
