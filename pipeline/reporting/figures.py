"""Comparison figures: every schedule on one chart, so the schedules can be told apart at a glance.

PNG files carry no timestamp or version string (``metadata={"Software": None}``), so the same
inputs give the same bytes and DVC sees no change.
"""

from __future__ import annotations

import io
import math
import multiprocessing
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pipeline.engines import units
from pipeline.problems.data import Dataset
from pipeline.problems.model import FamilyNet

RunTables = Mapping[str, Mapping[str, np.ndarray]]  # run name -> column -> values
DPI = 120


def _colors(count: int) -> list:
    palette = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [palette(index % palette.N) for index in range(count)]


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


# Panels of a grid: title -> {line label (the schedule): run name}. None: one panel, every run.
Panels = Mapping[str, Mapping[str, str]] | None


def _panels(curves: RunTables, panels: Panels) -> dict[str, dict[str, str]]:
    if panels is None:
        return {"": {name: name for name in curves}}
    return {title: dict(lines) for title, lines in panels.items()}


def _palette(panels: dict[str, dict[str, str]]) -> dict[str, tuple]:
    """One color per line label, the same in every panel."""
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    return dict(zip(labels, _colors(len(labels)), strict=True))


def _grid(count: int, width: float, height: float, **options):
    columns = count if count <= 3 else (2 if count == 4 else 3)
    rows = math.ceil(count / columns)
    figure, grid = plt.subplots(
        rows, columns, figsize=(width * columns + 2.5, height * rows + 0.8), squeeze=False,
        sharex=True, sharey=True, layout="constrained", **options,
    )  # fmt: skip
    for axes in grid.flat[count:]:
        axes.set_visible(False)
    return figure, list(grid.flat[:count])


def _rate_lines(axes, table, label: str, color) -> None:
    groups = [key for key in table if key.startswith("lr/")]
    lines = [(key, f"{label} ({key[3:]})") for key in groups] or [("lr", label)]
    for style, (key, text) in zip(("-", "--", ":", "-."), lines, strict=False):
        axes.plot(table["step"], table[key], style, color=color, label=text)


def learning_rates(curves: RunTables, panels: Panels = None) -> Figure:
    """The tutorial's figure for every schedule at once.

    One panel: a linear and a log scale; the log scale shows multiplicative decays (StepLR,
    ExponentialLR, ...) as what they are and keeps small rates visible beside a large peak.
    A grid over ``train.lr``: one log-scale panel per starting rate. Per-layer groups are dashed.
    """
    chosen = _panels(curves, panels)
    colors = _palette(chosen)
    if len(chosen) == 1:
        (lines,) = chosen.values()
        figure, (linear, log) = plt.subplots(
            2, 1, figsize=(11, 8), sharex=True, layout="constrained", height_ratios=(3, 2)
        )
        for label, name in lines.items():
            for axes in (linear, log):
                _rate_lines(axes, curves[name], label, colors[label])
        linear.set(title="Learning rate used by each update", ylabel="learning rate")
        log.set(xlabel="step (update)", ylabel="learning rate (log scale)", yscale="log")
        for axes in (linear, log):
            axes.grid(alpha=0.3, which="both")
        linear.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        return figure
    figure, panes = _grid(len(chosen), 4.2, 3.4)
    for axes, (title, lines) in zip(panes, chosen.items(), strict=True):
        for label, name in lines.items():
            _rate_lines(axes, curves[name], label, colors[label])
        axes.set(title=title, yscale="log", xlabel="step (update)")
        axes.grid(alpha=0.3, which="both")
    panes[0].set_ylabel("learning rate (log scale)")
    figure.suptitle("Learning rate used by each update")
    figure.legend(*panes[0].get_legend_handles_labels(), loc="outside right upper",
                  fontsize="small")  # fmt: skip
    return figure


def losses(curves: RunTables, panels: Panels = None) -> Figure:
    """Training loss on the whole train set, one line per schedule (a panel per grid point)."""
    chosen = _panels(curves, panels)
    colors = _palette(chosen)
    several = any("loss_low" in table for table in curves.values())
    means = np.concatenate([curves[n]["loss"] for lines in chosen.values() for n in lines.values()])
    if len(chosen) == 1:
        figure, axes = plt.subplots(figsize=(11, 6), layout="constrained")
        panes = [axes]
    else:
        figure, panes = _grid(len(chosen), 4.2, 3.4)
    for axes, (title, lines) in zip(panes, chosen.items(), strict=True):
        for label, name in lines.items():
            table, color = curves[name], colors[label]
            axes.plot(table["step"], table["loss"], color=color, label=label, linewidth=1.2)
            if "loss_low" in table:  # several seeds: the 95% interval of the mean
                low = np.maximum(table["loss_low"], np.finfo(float).tiny)  # log axes need > 0
                axes.fill_between(table["step"], low, table["loss_high"], color=color, alpha=0.18)
        axes.set(yscale="log", xlabel="step (update)", title=title)
        # Scaled to the means: a few seeds' interval can reach below zero, which a log axis
        # would otherwise stretch to 1e-300. Bands leave the frame where they are that wide.
        axes.set_ylim(means[means > 0].min() / 3, means.max() * 3)
        axes.grid(alpha=0.3, which="both")
    heading = "Training loss on the whole train set" + (
        ": mean over seeds, 95% band" if several else ""
    )
    panes[0].set_ylabel("cross-entropy loss (log scale)")
    if len(panes) == 1:
        panes[0].set_title(heading)
        panes[0].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    else:
        figure.suptitle(heading)
        figure.legend(*panes[0].get_legend_handles_labels(), loc="outside right upper",
                      fontsize="small")  # fmt: skip
    return figure


@dataclass(frozen=True)
class Regions:
    """Each model's predicted class over one grid of points covering every data set."""

    xs: np.ndarray
    ys: np.ndarray
    classes: dict[str, np.ndarray]


def decision_regions(
    models: Mapping[str, FamilyNet], sets: Mapping[str, tuple[Dataset, Dataset]]
) -> Regions:
    everything = np.vstack([d.features for pair in sets.values() for d in pair])
    low, high = everything.min(axis=0) - 0.5, everything.max(axis=0) + 0.5
    xs, ys = np.meshgrid(np.linspace(low[0], high[0], 200), np.linspace(low[1], high[1], 200))
    points = torch.from_numpy(np.c_[xs.ravel(), ys.ravel()]).float()
    with torch.no_grad():
        classes = {
            name: model.predict(points).numpy().reshape(xs.shape) for name, model in models.items()
        }
    return Regions(xs, ys, classes)


def decision_boundaries(
    regions: Regions, sets: Mapping[str, tuple[Dataset, Dataset]], metrics: Mapping
) -> Figure:
    """Small multiples: each trained model's decision regions over its (train, test) data."""
    names = list(regions.classes)
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    figure, grid = plt.subplots(
        rows,
        columns,
        figsize=(3.6 * columns, 3.4 * rows),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    for axes, name in zip(grid.flat, names, strict=False):
        train_set, test_set = sets[name]
        axes.contourf(
            regions.xs, regions.ys, regions.classes[name], levels=[-0.5, 0.5, 1.5],
            colors=["#f4c7c3", "#c6dbef"],
        )  # fmt: skip
        axes.scatter(*test_set.features.T, c=test_set.labels, cmap="coolwarm", s=6, alpha=0.25)
        axes.scatter(
            *train_set.features.T, c=train_set.labels, cmap="coolwarm", s=30, edgecolors="black"
        )
        accuracy = metrics[name]["test_accuracy"]
        axes.set_title(f"{name}\ntest accuracy {accuracy:.1%}", fontsize="medium")
    for axes in grid.flat[len(names) :]:
        axes.set_visible(False)
    for axes in grid[-1]:
        axes.set_xlabel("x1")
    for axes in grid[:, 0]:
        axes.set_ylabel("x2")
    figure.suptitle("Decision boundaries (large dots: train set; faint: test set)")
    return figure


def _seed_points(
    per_seed: Mapping[str, np.ndarray],
    schedules: Mapping[str, str] | None,
    label: Callable[[float, float | None], str],
) -> tuple[Figure, Axes]:
    """One row per run: each seed a dot, the mean with its 95% interval a black diamond.

    ``schedules`` maps a run to its schedule, so that a schedule has one color across a grid.
    Infinite values (a seed that never got there) are left out of the mean and counted instead.
    """
    from pipeline.core.stats import mean_interval

    names = list(per_seed)
    schedules = schedules or {name: name for name in names}
    palette = _palette({"": {schedules[name]: name for name in names}})
    figure, axes = plt.subplots(figsize=(9, 0.42 * len(names) + 1.6), layout="constrained")
    jitter = np.random.default_rng(0)  # fixed: the same inputs give the same picture
    for position, name in enumerate(names):
        values, color = np.asarray(per_seed[name], dtype=float), palette[schedules[name]]
        values = np.where(np.isfinite(values), values, np.nan)  # matplotlib skips NaN points
        offsets = jitter.uniform(-0.18, 0.18, len(values)) if len(values) > 1 else np.zeros(1)
        axes.scatter(values, position + offsets, s=10, color=color, alpha=0.35)
        reached = values[~np.isnan(values)]
        if not len(reached):
            axes.annotate("never", (0, position), xycoords=("axes fraction", "data"),
                          xytext=(4, 0), textcoords="offset points", va="center",
                          fontsize="x-small")  # fmt: skip
            continue
        mean, half = mean_interval(reached)
        whisker = None if np.isnan(half) else float(half)
        axes.errorbar(mean, position, xerr=whisker, fmt="D", color="black", ms=5, capsize=4)
        text = label(float(mean), whisker)
        if len(reached) < len(values):
            text += f" ({len(values) - len(reached)} never)"
        axes.annotate(text, (mean, position), xytext=(0, 9), textcoords="offset points",
                      ha="center", fontsize="x-small")  # fmt: skip
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()
    axes.grid(alpha=0.3, axis="x")
    return figure, axes


def _title(what: str, seeds: int) -> str:
    if seeds == 1:
        return f"{what} (one seed: no interval)"
    return f"{what}: dots are seeds, diamonds the mean of {seeds} with its 95% interval"


def accuracy_per_seed(
    per_seed: Mapping[str, np.ndarray], schedules: Mapping[str, str] | None = None
) -> Figure:
    """Final test accuracy per run, seed by seed, with the mean and its 95% interval."""
    figure, axes = _seed_points(
        per_seed,
        schedules,
        lambda mean, half: f"{mean:.1%}" + ("" if half is None else f" ± {half:.1%}"),
    )
    seeds = len(next(iter(per_seed.values())))
    axes.set(xlabel="test accuracy", title=_title("Final test accuracy", seeds))
    axes.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    return figure


def steps_to_target(
    per_seed: Mapping[str, np.ndarray],
    target: float,
    epochs: int,
    schedules: Mapping[str, str] | None = None,
) -> Figure:
    """Updates until the training loss first reaches ``target``, per run and seed (inf: never).

    The axis ends at ``epochs``: an interval of few seeds can reach past it, and is cut there.
    """
    figure, axes = _seed_points(
        per_seed,
        schedules,
        lambda mean, half: f"{mean:.0f}" + ("" if half is None else f" ± {half:.0f}"),
    )
    seeds = len(next(iter(per_seed.values())))
    axes.set(
        xlabel=f"updates until the training loss is at most {target:g}",
        title=_title(f"Steps to loss {target:g}", seeds),
    )
    axes.set_xlim(0, epochs)
    return figure


def final_metrics(metrics: Mapping[str, Mapping[str, float]]) -> Figure:
    names = list(metrics)
    positions = np.arange(len(names))
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(12, 0.45 * len(names) + 1.8), sharey=True, layout="constrained"
    )
    height = 0.38

    def bars(axes, key: str, offset: float, label: str) -> None:
        # With several seeds, whiskers show the 95% interval of the mean.
        spread = [metrics[n].get(f"{key}_ci95", 0.0) for n in names]
        values = [metrics[n][key] for n in names]
        whiskers = {"xerr": spread, "capsize": 3} if any(spread) else {}
        axes.barh(positions + offset, values, height, label=label, **whiskers)

    bars(left, "train_accuracy", -height / 2, "train")
    bars(left, "test_accuracy", height / 2, "test")
    left.set(xlabel="accuracy", xlim=(0, 1.12), title="Final accuracy")
    bars(right, "final_loss", -height / 2, "train")
    bars(right, "test_loss", height / 2, "test")
    right.set(xlabel="cross-entropy loss", title="Final loss")
    right.margins(x=0.15)
    for axes in (left, right):
        for container in axes.containers:
            if hasattr(container, "patches"):  # bars, not error-bar lines
                axes.bar_label(container, fmt="%.3g", padding=2, fontsize="x-small")
    figure.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=2)
    left.set_yticks(positions, names)
    left.invert_yaxis()
    for axes in (left, right):
        axes.grid(alpha=0.3, axis="x")
    return figure


_DRAW: dict[str, Callable[[], Figure]] = {}


def _png(name: str) -> bytes:
    return png_bytes(_DRAW[name]())


class Renderer:
    """Renders figures to PNG bytes in forked worker processes, one figure per task.

    Rendering is pure CPU in matplotlib; forked workers see the drawing closures without
    pickling their data, and the parent is free meanwhile. Bytes are the same as in-process.
    """

    def __init__(self, draw: dict[str, Callable[[], Figure]]) -> None:
        self.draw = draw
        workers = min(len(draw), units.usable_cpus())
        self.pool = None
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            _DRAW.clear()
            _DRAW.update(draw)
            context = multiprocessing.get_context("fork")
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
            self.futures = {name: self.pool.submit(_png, name) for name in draw}

    def results(self) -> dict[str, bytes]:
        if self.pool is None:
            return {name: png_bytes(draw()) for name, draw in self.draw.items()}
        return {name: future.result() for name, future in self.futures.items()}

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            _DRAW.clear()
