"""The tune stage's figures, from a synthetic score dict: no tuning runs here.

The stand-in has what :func:`pipeline.reporting.tuning_figures.write_all` reads: typed
:class:`~pipeline.comparison.scores.Scores` (with infinite times and NaN best
times, as a schedule that never reaches its target gives), and a result with ``chosen_rates``,
``targets`` and
``workloads``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline.comparison.scores import BudgetCurve, RerunScore, Scores
from pipeline.problems.workloads import TUTORIAL
from pipeline.reporting import tuning_figures

SCHEDULES = [
    "constant", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "OneCycleLR",
    "ReduceLROnPlateau", "CyclicLR", "warmup_cosine", "LambdaLR", "CosineAnnealingWarmRestarts",
]  # fmt: skip
R_MAX = 4.0
KS = list(range(1, 13))


def _workloads() -> tuple:
    return (
        TUTORIAL.model_copy(update={"epochs": 200}),
        TUTORIAL.model_copy(update={"name": "more_noise", "noise": 0.35, "epochs": 200}),
        TUTORIAL.model_copy(update={"name": "long_budget", "epochs": 600}),
        TUTORIAL.model_copy(update={"name": "wide_hidden", "epochs": 200, "held_out": True}),
    )


def _result_and_scores() -> tuple[SimpleNamespace, Scores]:
    rng = np.random.default_rng(0)
    workloads = _workloads()
    tuned = [w.name for w in workloads if not w.held_out]
    held_out = [w.name for w in workloads if w.held_out]
    targets = {
        w.name: {"target": 0.1 + 0.05 * i, "test_target": 0.12 + 0.05 * i, "how": "given"}
        for i, w in enumerate(workloads)
    }
    chosen_rates = {
        w.name: {
            s: np.concatenate([[0.0], 0.1 * (i + 1) * np.linspace(1.0, 0.01, w.epochs - 1)])
            for i, s in enumerate(SCHEDULES)
        }
        for w in workloads
    }
    taus = np.linspace(1.0, R_MAX, 100)
    profiles = {
        s: np.clip((taus - 1.0) * (i + 1) / 10, 0.0, 1.0).round(2).tolist()
        for i, s in enumerate(SCHEDULES)
    }
    benchmark = {s: round(1.0 - i / 20, 3) for i, s in enumerate(SCHEDULES)}
    benchmark["CyclicLR"] = 0.0  # its profile stays at zero: never within r_max
    profiles["CyclicLR"] = [0.0] * len(taus)

    budget = {}
    for w in tuned:
        budget[w] = {}
        for i, s in enumerate(SCHEDULES):
            never = s == "CyclicLR"
            best_time = [math.nan if never else 150.0 - k - i for k in KS]
            budget[w][s] = BudgetCurve(
                reached=[0.0 if never else 1 - 0.5**k for k in KS],
                best_time=best_time,
                best_loss=[0.2 + 0.01 * i + 0.3 / k for k in KS],
            )
    diverged = replace(budget["tutorial"]["ExponentialLR"], best_loss=[math.nan] * len(KS))
    budget["tutorial"]["ExponentialLR"] = diverged  # every trial diverged

    test = {}
    for w in workloads:
        test[w.name] = {}
        for i, s in enumerate(SCHEDULES):
            median = 40.0 + 10 * i + rng.uniform(0, 5)
            entry = RerunScore(
                median_time=median,
                time_low=median - 8,
                time_high=median + 12,
                reached=1.0,
                test_loss=0.2,
                test_loss_half=0.01,
                test_accuracy=0.9,
                test_accuracy_half=0.02,
            )
            if s == "CyclicLR":  # no re-run got there
                entry = replace(entry, median_time=math.inf, time_low=math.inf,
                                time_high=math.inf, reached=0.0)  # fmt: skip
            elif s == "StepLR":  # most did not: the median is inf, the interval starts inside
                entry = replace(entry, median_time=math.inf, time_low=90.0, time_high=math.inf,
                                reached=0.4)  # fmt: skip
            elif s == "OneCycleLR":  # most did: the interval's end is past the budget
                entry = replace(entry, time_high=math.inf, reached=0.8)
            test[w.name][s] = entry
    scores = Scores(
        schedules=list(SCHEDULES),
        tuned=tuned,
        held_out=held_out,
        validation_times={s: {w: 100.0 for w in tuned} for s in SCHEDULES},
        validation_ratios={s: {w: 1.0 for w in tuned} for s in SCHEDULES},
        taus=taus.tolist(),
        profiles=profiles,
        benchmark_score=benchmark,
        test=test,
        test_ratios={s: {w: 1.0 for w in tuned} for s in SCHEDULES},
        test_benchmark_score=dict(benchmark),
        held_out_ratios={s: {w: 1.0 for w in held_out} for s in SCHEDULES},
        budget_ks=KS,
        budget=budget,
        edges=["StepLR on tutorial"],
    )
    result = SimpleNamespace(chosen_rates=chosen_rates, targets=targets, workloads=workloads)
    return result, scores


def _params() -> SimpleNamespace:
    return SimpleNamespace(tuning=SimpleNamespace(r_max=R_MAX))


def _draw(folder: Path, result: SimpleNamespace, scores: Scores) -> dict[str, bytes]:
    paths = tuning_figures.write_all(_params(), result, scores, folder)
    return {path.name: path.read_bytes() for path in paths}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict[str, bytes]:
    result, scores = _result_and_scores()
    return _draw(tmp_path_factory.mktemp("baseline") / "nested" / "figures", result, scores)


def test_writes_four_readable_pngs(tmp_path):
    result, scores = _result_and_scores()
    folder = tmp_path / "a" / "b"  # created with its parents
    paths = tuning_figures.write_all(_params(), result, scores, folder)
    assert [p.name for p in paths] == list(tuning_figures.FILES)
    assert sorted(p.name for p in folder.iterdir()) == sorted(tuning_figures.FILES)
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
            assert width > 300 and height > 200


@pytest.mark.compute
def test_the_same_inputs_give_the_same_bytes(tmp_path, baseline):
    result, scores = _result_and_scores()
    assert _draw(tmp_path, result, scores) == baseline


def _profile_score(result, scores):
    scores.benchmark_score["OneCycleLR"] = 0.123


def _profile_value(result, scores):
    scores.profiles["constant"][40] = 0.9


def _budget_loss(result, scores):
    scores.budget["more_noise"]["StepLR"].best_loss[3] = 0.9


def _target(result, scores):
    result.targets["long_budget"]["target"] = 0.5


def _test_target(result, scores):
    result.targets["long_budget"]["test_target"] = 0.5


def _rate(result, scores):
    result.chosen_rates["wide_hidden"]["OneCycleLR"][50] = 5.0


def _test_time(result, scores):
    cells = scores.test["wide_hidden"]
    cells["LambdaLR"] = replace(cells["LambdaLR"], median_time=150.0)


def _never(result, scores):
    cells = scores.test["tutorial"]
    cells["constant"] = replace(cells["constant"], median_time=math.inf, reached=0.2)


@pytest.mark.compute
@pytest.mark.parametrize(
    ("change", "changed"),
    [
        (_profile_score, {"profiles.png"}),
        (_profile_value, {"profiles.png"}),
        (_budget_loss, {"budget_curves.png"}),
        (_target, {"budget_curves.png"}),  # the validation target: the budget curves' line
        (_test_target, {"test_times.png"}),  # the test target: the test times' titles
        (_rate, {"chosen_rates.png"}),
        (_test_time, {"test_times.png"}),
        (_never, {"test_times.png"}),
    ],
)
def test_a_changed_number_changes_only_the_figures_that_show_it(
    tmp_path, baseline, change, changed
):
    result, scores = _result_and_scores()
    scores = copy.deepcopy(scores)
    change(result, scores)
    drawn = _draw(tmp_path, result, scores)
    assert {name for name in drawn if drawn[name] != baseline[name]} == changed


def test_each_schedule_keeps_one_colour_and_light_shades_are_dashed():
    styles = tuning_figures.schedule_styles(SCHEDULES)
    colors = [style["color"] for style in styles.values()]
    assert len(set(colors)) == len(SCHEDULES)
    assert [style["linestyle"] for style in styles.values()][:3] == ["-", "--", "-"]
    few = tuning_figures.schedule_styles(SCHEDULES[:4])
    assert {style["linestyle"] for style in few.values()} == {"-"}
