"""rate_tables.closed_form against schedules.trace, which steps torch's own schedulers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.comparison import search
from pipeline.config.params import load_params
from pipeline.schedules import rule_arrays
from pipeline.schedules.rate_tables import closed_form
from pipeline.schedules.specs import ScheduleSpec, parse_spec, trace
from tests.conftest import ROOT

POINTS = 32  # drawn per space; every one is compared at budgets 37 and 1000
# trace steps a real optimizer (about 30 µs an update), so the file's time is mostly trace's:
# the longest budget compares the first 8 of the 32 points, to keep the file near 20 s.
COMPARED = {1000: POINTS, 37: POINTS, 2000: 8}


def assert_same(
    spec: ScheduleSpec, epochs: int, lr: float, optimizer: str = "adam", momentum: float = 0.0
) -> None:
    """closed_form gives trace's rates and momenta: same shape, equal to a relative 1e-12."""
    got = closed_form(spec, epochs, lr, optimizer, momentum)
    assert got is not None, f"{spec.type} {dict(spec.kwargs)} is not covered"
    rates, momenta = trace(spec, epochs, lr, optimizer, momentum)
    for name, mine, torch_s in (("rates", got[0], rates), ("momenta", got[1], momenta)):
        assert mine.shape == torch_s.shape, name
        assert mine.dtype == np.float64, name
        np.testing.assert_allclose(mine, torch_s, rtol=1e-12, atol=0, err_msg=f"{name} {spec}")


def spec_of(raw: dict[str, Any], epochs: int) -> ScheduleSpec:
    return parse_spec("case", raw, epochs)


@pytest.mark.compute
@pytest.mark.parametrize("budget", list(COMPARED))
@pytest.mark.parametrize("name", list(search.DEFAULT_SPACES))
def test_every_default_space_matches_torch(name: str, budget: int) -> None:
    space = search.DEFAULT_SPACES[name]
    unit = search.draw(space, POINTS, 1, seed=0)[0]
    for point in search.points(space, unit)[: COMPARED[budget]]:
        resolved = space.resolve(point, budget)
        spec = parse_spec(name, resolved["scheduler"], budget)
        if spec.monitor is not None:  # ReduceLROnPlateau: its rates follow the losses
            assert closed_form(spec, budget, resolved["lr"]) is None
        else:
            assert_same(spec, budget, resolved["lr"])


@pytest.fixture(scope="module")
def params_schedules() -> tuple[ScheduleSpec, ...]:
    return load_params(ROOT / "params.yaml").schedules


def test_every_params_schedule_is_none_or_torch(params_schedules) -> None:
    covered = []
    for spec in params_schedules:
        if closed_form(spec, 1000, 0.01) is None:
            assert spec.type == "ReduceLROnPlateau", spec.name
            continue
        assert_same(spec, 1000, 0.01)
        covered.append(spec.type)
    # The file's own schedules: everything but ReduceLROnPlateau is covered.
    assert len(covered) == len(params_schedules) - 1


@pytest.mark.parametrize("name", ["constant", "manual", "LambdaLR", "warmup_cosine", "OneCycleLR"])
def test_params_schedules_with_sgd_momentum(params_schedules, name: str) -> None:
    (spec,) = [s for s in params_schedules if s.name == name]
    assert_same(spec, 1000, 0.01, "sgd", 0.9)


EDGE_CASES: dict[str, dict[str, Any]] = {
    "constant": {"type": "constant"},
    "manual every update": {"type": "manual", "every": 1, "factor": 0.9},
    "manual growing": {"type": "manual", "every": 3, "factor": 1.1},
    "batch_size": {"type": "batch_size", "initial": 4, "factor": 2, "every": 5},
    "StepLR every update": {"type": "StepLR", "step_size": 1, "gamma": 0.5},
    "StepLR default gamma": {"type": "StepLR", "step_size": 7},
    # torch counts a repeated milestone twice; one at 0 decays at construction; one past the
    # budget never; unsorted ones are fine (a Counter).
    "MultiStepLR repeated": {
        "type": "MultiStepLR",
        "milestones": [0, 0, 3, 3, 3, 5, 100_000],
        "gamma": 0.5,
    },
    "MultiStepLR unsorted": {"type": "MultiStepLR", "milestones": [5, 2, 2], "gamma": 0.7},
    "ExponentialLR": {"type": "ExponentialLR", "gamma": 0.9},
    "CosineAnnealingLR T_max 1": {"type": "CosineAnnealingLR", "T_max": 1},
    "CosineAnnealingLR periods": {"type": "CosineAnnealingLR", "T_max": 13},
    "CosineAnnealingLR eta_min": {"type": "CosineAnnealingLR", "T_max": 99, "eta_min": 0.004},
    "LinearLR default": {"type": "LinearLR"},
    "LinearLR part way": {
        "type": "LinearLR",
        "start_factor": 0.2,
        "end_factor": 0.5,
        "total_iters": 11,
    },
    "LinearLR decay to 0": {
        "type": "LinearLR",
        "start_factor": 1.0,
        "end_factor": 0.0,
        "total_iters": 9,
    },
    "LinearLR total_iters 0": {"type": "LinearLR", "total_iters": 0},
    "ConstantLR": {"type": "ConstantLR", "factor": 0.25, "total_iters": 30},
    "ConstantLR total_iters 0": {"type": "ConstantLR", "factor": 0.5, "total_iters": 0},
    "LambdaLR step rule": {"type": "LambdaLR", "lr_lambda": "0.95 ** (step // 3)"},
    "LambdaLR every function": {
        "type": "LambdaLR",
        "lr_lambda": "1 - exp(-step / 5) + min(step, 3) * max(0.1, step / 100)"
        " + log(step + 1, 2) + sqrt(step) % 0.7 + abs(sin(step)) + floor(step / 4)"
        " + ceil(step / 5) - -1 + +e + tanh(step / 10) + log(step + 2)",
    },
    "LambdaLR per layer": {
        "type": "LambdaLR",
        "lr_lambda": {"Liner1": "cos(pi * step / epochs) + 1", "Liner2": "1 / (1 + step)"},
    },
    "MultiplicativeLR per layer": {
        "type": "MultiplicativeLR",
        "lr_lambda": {"Liner1": "0.9 + 0.1 / (step + 1)", "Liner2": "1.01"},
    },
    "SequentialLR warm-up, cosine": {
        "type": "SequentialLR",
        "milestones": [5],
        "schedulers": [
            {"type": "LinearLR", "start_factor": 0.1, "total_iters": 5},
            {"type": "CosineAnnealingLR", "T_max": 95, "eta_min": 0.001},
        ],
    },
    "SequentialLR three children": {
        "type": "SequentialLR",
        "milestones": [3, 8],
        "schedulers": [
            {"type": "ExponentialLR", "gamma": 0.8},
            {"type": "StepLR", "step_size": 2, "gamma": 0.5},
            {"type": "MultiStepLR", "milestones": [0, 2, 4, 4], "gamma": 0.5},
        ],
    },
    "SequentialLR milestone 0": {
        "type": "SequentialLR",
        "milestones": [0, 4],
        "schedulers": [
            {"type": "ExponentialLR", "gamma": 0.8},
            {"type": "ConstantLR", "factor": 0.5, "total_iters": 2},
            {"type": "ConstantLR", "factor": 0.5, "total_iters": 0},
        ],
    },
    "SequentialLR repeated milestone": {
        "type": "SequentialLR",
        "milestones": [4, 4],
        "schedulers": [
            {"type": "ExponentialLR", "gamma": 0.8},
            {"type": "LinearLR"},
            {"type": "LinearLR", "start_factor": 0.5, "total_iters": 3},
        ],
    },
    "SequentialLR restarts MultiplicativeLR": {
        "type": "SequentialLR",
        "milestones": [4],
        "schedulers": [
            {"type": "ExponentialLR", "gamma": 0.8},
            {"type": "MultiplicativeLR", "lr_lambda": "0.9"},
        ],
    },
    "SequentialLR per layer": {
        "type": "SequentialLR",
        "milestones": [4],
        "schedulers": [
            {"type": "LambdaLR", "lr_lambda": {"Liner1": "0.5", "Liner2": "1 / (step + 1)"}},
            {"type": "LambdaLR", "lr_lambda": {"Liner1": "2 ** -step", "Liner2": "1"}},
        ],
    },
    "SequentialLR cosine periods": {
        "type": "SequentialLR",
        "milestones": [6],
        "schedulers": [
            {"type": "CosineAnnealingLR", "T_max": 2},
            {"type": "CosineAnnealingLR", "T_max": 3},
        ],
    },
    "OneCycleLR": {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 100},
    "OneCycleLR three_phase": {
        "type": "OneCycleLR",
        "max_lr": 0.1,
        "total_steps": 100,
        "three_phase": True,
    },
    "OneCycleLR three_phase linear": {
        "type": "OneCycleLR",
        "max_lr": 0.1,
        "total_steps": 100,
        "three_phase": True,
        "anneal_strategy": "linear",
        "div_factor": 10,
        "final_div_factor": 100,
        "base_momentum": 0.8,
        "max_momentum": 0.99,
    },
    "OneCycleLR linear": {
        "type": "OneCycleLR",
        "max_lr": [0.3],
        "total_steps": 100,
        "anneal_strategy": "linear",
        "pct_start": 0.5,
    },
    "OneCycleLR no momentum": {
        "type": "OneCycleLR",
        "max_lr": 0.1,
        "total_steps": 100,
        "cycle_momentum": False,
    },
    "OneCycleLR epochs": {"type": "OneCycleLR", "max_lr": 0.1, "epochs": 10, "steps_per_epoch": 10},
}


@pytest.mark.parametrize("optimizer, momentum", [("adam", 0.0), ("sgd", 0.0), ("sgd", 0.9)])
@pytest.mark.parametrize("epochs", [1, 2, 3, 100])
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_cases_match_torch(case: str, epochs: int, optimizer: str, momentum: float) -> None:
    assert_same(spec_of(EDGE_CASES[case], epochs), epochs, 0.05, optimizer, momentum)


def test_no_updates_gives_empty_tables() -> None:
    spec = spec_of({"type": "LambdaLR", "lr_lambda": {"Liner1": "1", "Liner2": "2"}}, 10)
    rates, momenta = closed_form(spec, 0, 0.1)
    assert rates.shape == momenta.shape == (0, 2)


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "ReduceLROnPlateau", "monitor": "loss"},
        {"type": "ChainedScheduler", "schedulers": [{"type": "ExponentialLR", "gamma": 0.9}]},
        {"type": "CyclicLR", "base_lr": 0.001, "max_lr": 0.1},
        {"type": "PolynomialLR"},
        {"type": "CosineAnnealingWarmRestarts", "T_0": 10},
        # Past T_max + 1 with eta_min, only torch's own loop gives torch's rounding.
        {"type": "CosineAnnealingLR", "T_max": 10, "eta_min": 0.001},
        {
            "type": "SequentialLR",
            "milestones": [5],
            "schedulers": [
                {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 200},
                {"type": "ExponentialLR", "gamma": 0.9},
            ],
        },
    ],
    ids=lambda raw: raw["type"],
)
def test_not_covered_is_none(raw: dict[str, Any]) -> None:
    assert closed_form(spec_of(raw, 100), 100, 0.05) is None


def test_where_torch_raises_it_is_none() -> None:
    # OneCycleLR refuses to step past total_steps; ConstantLR divides by a factor of 0.
    for raw in (
        {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 50},
        {"type": "ConstantLR", "factor": 0.0, "total_iters": 4},
    ):
        spec = spec_of(raw, 100)
        assert closed_form(spec, 100, 0.05) is None
        with pytest.raises((ValueError, ZeroDivisionError)):
            trace(spec, 100, 0.05)
    # A rule that fails within the budget, though not within the one it was checked on.
    spec = spec_of({"type": "LambdaLR", "lr_lambda": "1 / abs(step - 20)"}, 10)
    assert closed_form(spec, 100, 0.05) is None
    with pytest.raises(ValueError):
        trace(spec, 100, 0.05)


@pytest.mark.parametrize(
    "optimizer, lr, momentum", [("rmsprop", 0.1, 0.0), ("adam", -0.1, 0.0), ("sgd", 0.1, -0.5)]
)
def test_optimizer_errors_raise_as_trace_does(optimizer: str, lr: float, momentum: float) -> None:
    spec = spec_of({"type": "constant"}, 10)
    with pytest.raises(ValueError):
        trace(spec, 10, lr, optimizer, momentum)
    with pytest.raises(ValueError):
        closed_form(spec, 10, lr, optimizer, momentum)


def test_falls_back_to_libm_where_numpy_differs(monkeypatch) -> None:
    """On a machine whose numpy cos is one ulp off libm's (AVX-512 builds can be), the tables
    still follow torch's math.cos: 1 + cos near pi would otherwise be far off 1e-12."""
    exact_cos = np.cos
    monkeypatch.setattr(np, "cos", lambda x: np.nextafter(exact_cos(x), np.inf))
    rule_arrays.libm.cache_clear()
    try:
        assert rule_arrays.libm("cos") is not np.cos
        for raw in (
            {"type": "CosineAnnealingLR", "T_max": 300},
            {"type": "OneCycleLR", "max_lr": 0.1, "total_steps": 300},
        ):
            spec = spec_of(raw, 300)
            got = closed_form(spec, 300, 0.1)
            assert got is not None
            np.testing.assert_array_equal(got[0], trace(spec, 300, 0.1)[0])
    finally:
        monkeypatch.undo()
        rule_arrays.libm.cache_clear()
