"""Over seeds: intervals (mean, median), updates to a target loss, a paired test, a ranking."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import stdtrit  # Student t quantiles; scipy.stats.t.ppf calls it too

CONFIDENCE = 0.95
FloatArray = npt.NDArray[np.float64]


def mean_interval(
    values: npt.ArrayLike, axis: int = 0, level: float = CONFIDENCE
) -> tuple[FloatArray, FloatArray]:
    """Mean and the half-width of its Student-t interval at ``level`` (NaN with one value).

    The formula of ``scipy.stats.t.interval`` with ``scale=scipy.stats.sem(values)``; 0-d
    arrays for 1-D ``values``."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0 or values.shape[axis] == 0:
        raise ValueError("values must have at least one entry along the axis")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    count = values.shape[axis]
    mean = values.mean(axis=axis)
    if count < 2:
        return mean, np.full_like(mean, np.nan)
    spread = values.std(axis=axis, ddof=1) / np.sqrt(count)
    return mean, stdtrit(count - 1, (1 + level) / 2) * spread


def median_interval(
    values: npt.ArrayLike, rng: np.random.Generator, draws: int, level: float = CONFIDENCE
) -> tuple[float, float, float]:
    """The median and a percentile-bootstrap interval of it (infinite times stay infinite)."""
    values = np.asarray(values, dtype=np.float64)
    resampled = np.median(rng.choice(values, size=(draws, len(values)), replace=True), axis=1)
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2], method="lower")
    return float(np.median(values)), float(low), float(high)


def time_to_target(losses: npt.ArrayLike, target: float, first: int = 1) -> FloatArray:
    """Updates until the loss first is at or below ``target``; ``inf`` where it never is.

    ``losses`` has shape (..., steps) and the result shape (...), as floats. ``first`` is the
    number of updates done when ``losses[..., 0]`` was measured: 1 where each loss follows its
    update (a validation loss, AlgoPerf's convention), 0 where it precedes it (the training
    loss of an update's own forward pass). "At or below" follows AlgoPerf's ``operator.le``
    for minimised metrics (``get_best_trial_index``); a NaN loss (a diverged run) never counts
    as reached, as in AlgoPerf, where the comparison with NaN is false.
    """
    values = np.asarray(losses, dtype=np.float64)
    if values.ndim == 0:
        raise ValueError("losses needs a steps axis (its last axis)")
    if math.isnan(target):
        raise ValueError("target is NaN")
    if values.shape[-1] == 0:
        return np.full(values.shape[:-1], np.inf)
    reached = values <= target
    counts = reached.argmax(axis=-1).astype(np.float64) + float(first)
    result: FloatArray = np.where(reached.any(axis=-1), counts, np.inf)
    return result


def wilcoxon_p(differences: np.ndarray, method: str = "auto") -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences; 1 when they are all zero.

    ``method`` is scipy's: "auto" is exact for small samples without ties, else a permutation
    test (a third of a second each); "asymptotic", the normal approximation, takes a
    millisecond."""
    if not np.asarray(differences).any():
        return 1.0
    # Imported here: scipy.stats takes a second to import, and one seed has nothing to test.
    from scipy import stats

    return float(stats.wilcoxon(differences, method=method).pvalue)


@dataclass(frozen=True)
class Ranked:
    """One schedule's line of the ranking, best (lowest mean final loss) first."""

    rank: int
    name: str
    seeds: int
    final_loss: tuple[float, float]  # mean, 95% half-width (NaN with one seed)
    test_accuracy: tuple[float, float]
    steps_to_target: tuple[float, float]  # over the seeds that reached the target
    reached: int  # seeds that reached the target loss
    p_vs_best: float | None  # Holm-adjusted Wilcoxon signed-rank p, paired by seed
    significant: bool | None


def rank(
    final_losses: dict[str, np.ndarray],
    test_accuracies: dict[str, np.ndarray],
    losses: dict[str, np.ndarray],
    target_loss: float,
    alpha: float = 0.05,
) -> list[Ranked]:
    """Rank schedules by mean final loss; test each against the best, paired by seed.

    The test is Wilcoxon's signed-rank test on the per-seed differences in final training loss
    (two-sided; no normality assumed), with Holm's correction over the comparisons. With one
    seed there is nothing to test: ``p_vs_best`` is None.
    """
    names = sorted(final_losses, key=lambda n: (float(np.mean(final_losses[n])), n))
    best = names[0]
    raw_p: dict[str, float] = {}
    for name in names[1:]:
        differences = final_losses[name] - final_losses[best]
        if len(differences) >= 2:
            raw_p[name] = wilcoxon_p(differences)
    adjusted = _holm(raw_p)
    rows = []
    for position, name in enumerate(names, start=1):
        steps = time_to_target(losses[name], target_loss, first=0)
        reached = steps[np.isfinite(steps)]
        p_value = adjusted.get(name)
        rows.append(
            Ranked(
                rank=position,
                name=name,
                seeds=len(final_losses[name]),
                final_loss=as_floats(mean_interval(final_losses[name])),
                test_accuracy=as_floats(mean_interval(test_accuracies[name])),
                steps_to_target=(
                    as_floats(mean_interval(reached)) if len(reached) else (np.nan, np.nan)
                ),
                reached=len(reached),
                p_vs_best=p_value,
                significant=None if p_value is None else p_value < alpha,
            )
        )
    return rows


def as_floats(values: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """A 1-D sample's :func:`mean_interval` (two 0-d arrays) as two floats."""
    return float(values[0]), float(values[1])


def _holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (monotone, capped at 1)."""
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    adjusted, running = {}, 0.0
    for index, (name, p_value) in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - index) * p_value))
        adjusted[name] = running
    return adjusted


def markdown(rows: list[Ranked], target_loss: float, alpha: float = 0.05) -> str:
    """The ranking as a markdown table, with what the columns mean."""

    def interval(pair: tuple[float, float], digits: str) -> str:
        mean, half = pair
        if np.isnan(mean):
            return "never"
        return f"{mean:{digits}}" if np.isnan(half) else f"{mean:{digits}} ± {half:{digits}}"

    lines = [
        f"| rank | schedule | final train loss | test accuracy | steps to loss ≤ {target_loss:g} "
        f"| p vs best (Holm) | differs from best at alpha={alpha:g} |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        reached = f" ({row.reached}/{row.seeds} seeds)" if row.reached < row.seeds else ""
        p_text = (
            "best"
            if row.rank == 1
            else ("n/a" if row.p_vs_best is None else f"{row.p_vs_best:.3g}")
        )
        verdict = "—" if row.significant is None else ("yes" if row.significant else "no")
        lines.append(
            f"| {row.rank} | {row.name} | {interval(row.final_loss, '.4f')} | "
            f"{interval(row.test_accuracy, '.3f')} | "
            f"{interval(row.steps_to_target, '.0f')}{reached} | {p_text} | {verdict} |"
        )
    seeds = rows[0].seeds
    lines += [
        "",
        f"Means over {seeds} seed(s) with 95% Student-t intervals. 'p vs best': Wilcoxon "
        "signed-rank test of the per-seed final training loss against the best schedule, "
        "paired by seed (same data and initial weights), two-sided, Holm-corrected over the "
        "comparisons. Steps to target: first update whose loss is at or below the target, over "
        "the seeds that reached it.",
    ]
    return "\n".join(lines) + "\n"
