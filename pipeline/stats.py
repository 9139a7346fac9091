"""Over seeds: means with 95% intervals, steps to a target loss, a paired test, a ranking."""

from __future__ import annotations

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def mean_interval(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the half-width of its Student-t 95% interval (NaN with a single seed)."""
    values = np.asarray(values, dtype=np.float64)
    count = values.shape[axis]
    mean = values.mean(axis=axis)
    if count < 2:
        return mean, np.full_like(mean, np.nan)
    spread = values.std(axis=axis, ddof=1) / np.sqrt(count)
    return mean, stats.t.ppf((1 + CONFIDENCE) / 2, count - 1) * spread


def steps_to(losses: np.ndarray, target: float) -> np.ndarray:
    """Per run, the first step whose loss is at or below ``target`` (NaN if never)."""
    reached = np.asarray(losses) <= target
    first = reached.argmax(axis=-1).astype(np.float64)
    first[~reached.any(axis=-1)] = np.nan
    return first
