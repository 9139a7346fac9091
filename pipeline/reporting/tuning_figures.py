"""Figures of the ``tune`` stage: the schedules compared after equal tuning.

Four PNGs, drawn from the :class:`~pipeline.comparison.scores.Scores` and the chosen settings'
rates:

- ``profiles.png``: performance profiles on validation, with each schedule's benchmark score;
- ``budget_curves.png``: the expected best validation loss after k trials, per tuned workload;
- ``chosen_rates.png``: the learning rate of each update of every chosen setting;
- ``test_times.png``: the re-runs' median updates to the target on the test set, with intervals.

A schedule has one colour in all four (its place in ``scores.schedules``), and the bytes
depend on the inputs only (:func:`pipeline.reporting.figures.png_bytes`), so DVC sees no change
on a rerun.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pipeline.core import files
from pipeline.reporting.figures import Renderer, _colors

if TYPE_CHECKING:  # only for the annotations: the figures need no torch
    from pipeline.comparison.scores import RerunScore, Scores
    from pipeline.comparison.tuning import TuningResult

Style = dict[str, Any]  # keyword arguments of a schedule's line: colour and dashes

FILES = ("profiles.png", "budget_curves.png", "chosen_rates.png", "test_times.png")


def write_all(params: Any, result: TuningResult, scores: Scores, folder: Path) -> list[Path]:
    """Write the four figures into ``folder`` (created if missing); returns their paths.

    ``params`` is accepted for the stage's sake but not read: r_max is the last of
    ``scores.taus``, so the figures cannot disagree with the scores they show.
    """
    del params
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    styles = schedule_styles(scores.schedules)
    draw: dict[str, Callable[[], Figure]] = {
        "profiles.png": lambda: profiles(scores, styles),
        "budget_curves.png": lambda: budget_curves(result, scores, styles),
        "chosen_rates.png": lambda: chosen_rates(result, scores, styles),
        "test_times.png": lambda: rerun_times(result, scores, styles),
    }
    with Renderer(draw) as renderer:  # in forked processes, one figure each: about 2 s apiece
        pngs = renderer.results()
    written = []
    for name in FILES:
        path = folder / name
        files.write_bytes(path, pngs[name])
        written.append(path)
    return written


def schedule_styles(schedules: Sequence[str]) -> dict[str, Style]:
    """One colour per schedule, the same in every figure (figures.py's tab10/tab20 rule).

    Past ten schedules tab20 pairs a dark and a light shade of one hue; the light one is also
    dashed, so that the two stay apart where the shades are hard to tell.
    """
    colors = _colors(len(schedules))
    many = len(schedules) > 10
    return {
        name: {"color": color, "linestyle": "--" if many and index % 2 else "-"}
        for index, (name, color) in enumerate(zip(schedules, colors, strict=True))
    }


def _grid(count: int, width: float, height: float, sharey: bool = False) -> tuple[Figure, list]:
    """Panels in up to three columns (two for four panels), the spare cells hidden."""
    columns = count if count <= 3 else (2 if count == 4 else 3)
    rows = math.ceil(count / columns)
    figure, grid = plt.subplots(
        rows, columns, figsize=(width * columns + 2.8, height * rows + 1.0), squeeze=False,
        sharey=sharey, layout="constrained",
    )  # fmt: skip
    for axes in grid.flat[count:]:
        axes.set_visible(False)
    return figure, list(grid.flat[:count])


def _panel_order(result: TuningResult, names: Sequence[str]) -> list[Any]:
    """The workloads among ``names``, in params.yaml's order (tuned and held out as listed)."""
    wanted = set(names)
    return [workload for workload in result.workloads if workload.name in wanted]


def _title(workload: Any) -> str:
    return workload.name + (" (held out)" if workload.held_out else "")


def _positive(values: Any) -> np.ndarray:
    """Floats with NaN where a log axis could not place them (<= 0, NaN, None, inf)."""
    array = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(array) & (array > 0), array, np.nan)


def _figure_legend(figure: Figure, axes: Axes, title: str | None = None) -> None:
    # Outside the panels: with ten schedules an inner legend would hide the lines.
    figure.legend(*axes.get_legend_handles_labels(), loc="outside right upper",
                  fontsize="small", title=title, title_fontsize="small")  # fmt: skip


def profiles(scores: Scores, styles: Mapping[str, Style]) -> Figure:
    """Share of tuned workloads on which each schedule is within a factor tau of the fastest."""
    taus = np.asarray(scores.taus, dtype=np.float64)
    benchmark = scores.benchmark_score
    # Best first: the legend reads as a ranking (ties keep the schedules' order).
    ranked = sorted(scores.schedules, key=lambda s: -_finite_or(benchmark[s], -1.0))
    figure, axes = plt.subplots(figsize=(10, 6), layout="constrained")
    widths = np.linspace(4.0, 1.2, len(ranked)) if len(ranked) > 1 else [1.8]
    for order, (name, width) in enumerate(zip(ranked, widths, strict=True)):
        # Equal profiles lie on top of each other: each is drawn thinner than the one below, so
        # that every colour stays visible along a shared stretch.
        axes.step(taus, scores.profiles[name], where="post", label=_scored(name, benchmark),
                  linewidth=width, zorder=2 + order, alpha=0.9, **styles[name])  # fmt: skip
    count = len(scores.tuned)
    if 0 < count <= 10:  # a profile only takes the values k/n: say so on the axis
        axes.set_yticks(np.arange(count + 1) / count, [f"{k}/{count}" for k in range(count + 1)])
    axes.set(
        xlim=(taus[0], taus[-1]), ylim=(-0.02, 1.02), xlabel="τ (time ÷ the fastest schedule's)",
        ylabel=f"share of the {count} tuned workloads within τ",
        title="Performance profiles on validation (time to target: median over studies)",
    )  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                title="schedule (benchmark score)", title_fontsize="small")  # fmt: skip
    return figure


def _finite_or(value: float, default: float) -> float:
    return float(value) if math.isfinite(value) else default


def _scored(name: str, benchmark: Mapping[str, float]) -> str:
    value = benchmark.get(name, math.nan)
    return f"{name} ({value:.2f})" if math.isfinite(value) else f"{name} (—)"


def budget_curves(result: TuningResult, scores: Scores, styles: Mapping[str, Style]) -> Figure:
    """Per tuned workload: the expected best validation loss after k trials, per schedule."""
    ks = np.asarray(scores.budget_ks, dtype=np.float64)
    workloads = _panel_order(result, scores.tuned)
    figure, panes = _grid(max(len(workloads), 1), 4.2, 3.4)
    for axes, workload in zip(panes, workloads, strict=False):
        table = scores.budget[workload.name]
        for name in scores.schedules:
            axes.plot(ks, _positive(table[name].best_loss), label=name, linewidth=1.4,
                      **styles[name])  # fmt: skip
        target = result.targets[workload.name]["target"]
        axes.axhline(target, color="black", linestyle=(0, (2, 2)), linewidth=1.0, label="target")
        axes.set(title=f"{_title(workload)}\ntarget {target:.3g}", xscale="log", yscale="log",
                 xlabel="trials k")  # fmt: skip
        axes.grid(alpha=0.3, which="both")
    panes[0].set_ylabel("expected best validation loss")
    figure.suptitle(
        "Expected best validation loss after k trials (drawn from all studies' trials; "
        "mean over the draws that did not diverge)"
    )
    _figure_legend(figure, panes[0])
    return figure


def chosen_rates(result: TuningResult, scores: Scores, styles: Mapping[str, Style]) -> Figure:
    """Per workload: the learning rate of each update of every schedule's chosen setting."""
    workloads = _panel_order(result, list(result.chosen_rates))
    figure, panes = _grid(max(len(workloads), 1), 4.2, 3.4)
    for axes, workload in zip(panes, workloads, strict=False):
        rates = result.chosen_rates[workload.name]
        for name in scores.schedules:
            if name not in rates:
                continue
            values = _positive(rates[name])  # a rate of 0 (warm-up start) has no log position
            axes.plot(np.arange(1, len(values) + 1), values, label=name, linewidth=1.2,
                      **styles[name])  # fmt: skip
        axes.set(title=_title(workload), yscale="log", xlabel="update")
        axes.grid(alpha=0.3, which="both")
    panes[0].set_ylabel("learning rate (log scale)")
    figure.suptitle("Learning rate of each update of the chosen setting (first re-run)")
    _figure_legend(figure, panes[0])
    return figure


def rerun_times(result: TuningResult, scores: Scores, styles: Mapping[str, Style]) -> Figure:
    """Per workload: median test-set updates to the target over the re-runs, with the 95%
    bootstrap interval; a schedule whose median never got there says "never" at the budget."""
    schedules = list(scores.schedules)
    workloads = _panel_order(result, list(scores.test))
    figure, panes = _grid(max(len(workloads), 1), 4.4, 0.3 * len(schedules) + 1.0, sharey=True)
    positions = np.arange(len(schedules))
    for axes, workload in zip(panes, workloads, strict=False):
        budget = float(workload.epochs)
        for row, name in zip(positions, schedules, strict=True):
            _time_row(axes, float(row), scores.test[workload.name][name], budget, styles[name])
        target = result.targets[workload.name]["test_target"]
        axes.set(title=f"{_title(workload)}\ntarget {target:.3g}", xlim=(0, budget),
                 xlabel="test-set updates to the target")  # fmt: skip
        axes.grid(alpha=0.3, axis="x")
    panes[0].set_yticks(positions, schedules)
    panes[0].set_ylim(len(schedules) - 0.5, -0.5)  # the first schedule on top
    figure.suptitle(
        "Updates until the test loss reaches the target: median over the re-runs, 95% bootstrap "
        "interval (▶: the interval goes past the budget)"
    )
    return figure


def _time_row(axes: Axes, row: float, entry: RerunScore, budget: float, style: Style) -> None:
    """One schedule on one workload: a dot at the median, a line over the interval, and a
    word at the budget where not every re-run reached the target."""
    median, low, high = entry.median_time, entry.time_low, entry.time_high
    color = style["color"]
    if math.isfinite(low):  # the interval, cut at the budget (its end may be inf: never)
        axes.plot([low, min(high, budget)], [row, row], color=color, linewidth=2.2,
                  solid_capstyle="butt")  # fmt: skip
        if not math.isfinite(high) or high > budget:
            axes.plot([budget], [row], marker=">", color=color, markersize=6, clip_on=False)
    if math.isfinite(median):
        axes.plot([median], [row], marker="o", color=color, markersize=6,
                  markeredgecolor="black", markeredgewidth=0.6)  # fmt: skip
    reached = entry.reached
    if not math.isfinite(median):
        text = "never" if reached == 0 else f"never (median; {reached:.0%} reached)"
    elif reached < 1:
        text = f"{reached:.0%} reached"
    else:
        return
    # Inside the right end, on a light box: the interval may run under it.
    axes.annotate(text, (budget, row), xytext=(-8, 0), textcoords="offset points", ha="right",
                  va="center", fontsize="x-small", fontweight="bold" if reached == 0 else None,
                  bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8,
                        "edgecolor": "none"})  # fmt: skip
