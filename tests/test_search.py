"""Search spaces: seeded Sobol' draws, their balance and marginals, and resolved entries that the
project's own validation accepts (torch steps each one)."""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
import warnings
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.comparison import search
from pipeline.comparison.search import (
    DEFAULT_SPACES,
    BalanceWarning,
    Choice,
    IntUniform,
    LogUniform,
    SearchSpace,
    Uniform,
    draw,
    draw_all,
    make_space,
    parse_search,
    points,
)
from pipeline.config.params import parse_params
from pipeline.schedules.specs import preview
from tests.conftest import ROOT, tiny_document

BUDGETS = (200, 1000)
DECAYING = ("manual", "StepLR", "MultiStepLR", "ExponentialLR")


def corners_and_draws(space: SearchSpace, trials: int, seed: int = 0) -> list[dict[str, Any]]:
    """The corners u = 0 and u = 1 (where a range's edge breaks a schedule, if anything does),
    then a study of Sobol' points."""
    unit = np.vstack([np.zeros(len(space.dims)), np.ones(len(space.dims))])
    unit = np.vstack([unit, draw(space, trials, 1, seed)[0]])
    return points(space, unit)


def validated(entry: dict[str, Any], name: str, epochs: int) -> Any:
    """The entry through the project's own parse_params, torch stepping it: its ScheduleSpec.

    First it must survive params.yaml: plain YAML types only (safe_dump refuses numpy's).
    """
    assert yaml.safe_load(yaml.safe_dump(entry)) == entry
    document = tiny_document(epochs=epochs)
    document["train"]["lr"] = entry["lr"]
    document["schedulers"] = {name: copy.deepcopy(entry["scheduler"])}
    return parse_params(document, schedules="trial").schedules[0]


def test_draws_repeat_from_the_seed_and_differ_for_another_seed():
    space = DEFAULT_SPACES["MultiStepLR"]
    first = draw(space, 16, 3, seed=7)
    assert np.array_equal(first, draw(space, 16, 3, seed=7))
    other = draw(space, 16, 3, seed=8)
    assert not np.isclose(first, other).any()  # another scrambling moves every coordinate


def test_draws_are_pinned():
    """Recorded trials are redrawn from the params alone: a change of the derivation (or of
    scipy's Sobol') that moves them must be seen, not discovered in old records."""
    unit = draw(DEFAULT_SPACES["StepLR"], 4, 2, seed=0)
    assert unit[0, 0] == pytest.approx([0.61126014, 0.46617669, 0.77877693], abs=1e-8)
    assert unit[1, 3] == pytest.approx([0.72384200, 0.12817999, 0.59926498], abs=1e-8)


def test_draws_do_not_depend_on_python_hash_nor_import_torch():
    """Two interpreters with different str hashes draw the same points, without torch."""
    script = (
        "import sys; from pipeline.comparison import search; "
        "u = search.draw(search.DEFAULT_SPACES['OneCycleLR'], 8, 2, 3); "
        "print(u.tobytes().hex(), 'torch' in sys.modules)"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            stdout=subprocess.PIPE,
            text=True,
        )
        for hash_seed in ("1", "2")
    ]
    outputs = [run.communicate(timeout=60)[0].split() for run in runs]
    here = draw(DEFAULT_SPACES["OneCycleLR"], 8, 2, 3).tobytes().hex()
    assert outputs == [[here, "False"], [here, "False"]]


def test_every_schedule_gets_the_same_trials_in_every_study():
    drawn = draw_all(DEFAULT_SPACES, trials=8, studies=3, seed=0)
    assert list(drawn) == list(DEFAULT_SPACES)
    for name, unit in drawn.items():
        assert unit.shape == (3, 8, len(DEFAULT_SPACES[name].dims)), name
        assert len(points(DEFAULT_SPACES[name], unit[0])) == 8


def test_studies_and_schedules_draw_their_own_sequences():
    drawn = draw_all(DEFAULT_SPACES, trials=16, studies=4, seed=0)
    for name, unit in drawn.items():
        for a in range(4):
            for b in range(a + 1, 4):
                assert not np.isclose(unit[a], unit[b]).any(), (name, a, b)
    # constant and CosineAnnealingLR both search lr alone: their names alone part them
    assert not np.isclose(drawn["constant"], drawn["CosineAnnealingLR"]).any()


def check_inside(dim: search.Dimension, value: Any) -> None:
    if isinstance(dim, LogUniform | Uniform):
        assert type(value) is float and dim.low <= value <= dim.high, (dim, value)
    elif isinstance(dim, IntUniform):
        assert type(value) is int and dim.low <= value <= dim.high, (dim, value)
    else:
        assert value in dim.values, (dim, value)


def test_values_stay_inside_their_ranges():
    for space in DEFAULT_SPACES.values():
        for point in corners_and_draws(space, 64):
            assert list(point) == list(space.dims)
            for name, dim in space.dims.items():
                check_inside(dim, point[name])
    extra: list[search.Dimension] = [
        LogUniform(1e-3, 1.0),
        Uniform(-2.0, 3.0),
        IntUniform(3, 9),
        IntUniform(1, 1000, log=True),
        Choice(("a", 2, 0.5)),
    ]
    for extra_dim in extra:
        for u in (0.0, 1e-12, 0.5, 1 - 1e-16, 1.0):
            check_inside(extra_dim, extra_dim.from_unit(u))
    assert LogUniform(1e-3, 1.0).from_unit(0.0) == 1e-3
    assert LogUniform(1e-3, 1.0).from_unit(1.0) == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Uniform(0.0, 1.0).from_unit(1.5)


def test_integers_and_choices_take_every_value_equally():
    """With 2**6 balanced points each of 4 integers (or choices) owns a dyadic quarter of the
    unit interval, so each gets exactly 16."""
    space = make_space("s", "constant", {"k": IntUniform(2, 5), "c": Choice(tuple("wxyz"))})
    unit = draw(space, 64, 1, 0)
    drawn = points(space, unit[0])
    assert sorted(np.unique([p["k"] for p in drawn], return_counts=True)[1]) == [16] * 4
    assert sorted(np.unique([p["c"] for p in drawn], return_counts=True)[1]) == [16] * 4
    # log integers: 1..1000 log-uniformly, so about a third of the mass below 10 (1 - 2 / 3)
    logs = [IntUniform(1, 999, log=True).from_unit(u) for u in unit[0, :, 1]]
    assert 0.3 <= np.mean(np.array(logs) < 10) <= 0.37


def test_log_uniform_marginals_look_log_uniform():
    """The share below each log-decile of lr's range equals the decile, within 1/256.

    Why 1/256: a scrambled Sobol' run of 2**8 points puts exactly one point in each interval
    [i/256, (i + 1)/256) of every coordinate, and the map to lr is monotone, so the count below
    any quantile q differs from 256 q by less than one point. (Independent uniform draws would
    need about 4 * sqrt(q (1 - q) / 256) = 0.125 at the midpoint.) A linear map instead of a
    log one would put 3% of the points, not 50%, below the geometric midpoint 0.0316.
    """
    dim = search.DEFAULT_LR
    for name, space in DEFAULT_SPACES.items():
        rates = np.array([p["lr"] for p in points(space, draw(space, 256, 1, 11)[0])])
        midpoint = math.sqrt(dim.low * dim.high)
        assert abs(np.mean(rates < midpoint) - 0.5) <= 1 / 256, name
        for q in np.arange(0.1, 1.0, 0.1):
            below = dim.low * (dim.high / dim.low) ** q
            assert abs(np.mean(rates < below) - q) <= 1 / 256, (name, q)


def test_powers_of_two_are_balanced():
    """With 2**m points each half of each dimension holds exactly half of them, and each of
    the 2**m strata of width 2**-m exactly one."""
    for m in (3, 5):
        for name, unit in draw_all(DEFAULT_SPACES, 2**m, 3, seed=5).items():
            assert ((unit < 0.5).sum(axis=1) == 2 ** (m - 1)).all(), name
            strata = np.sort(np.floor(unit * 2**m), axis=1)
            assert (strata == np.arange(2**m)[None, :, None]).all(), name


def test_other_trial_counts_warn_that_balance_is_lost():
    with pytest.warns(BalanceWarning, match="power of two"):
        draw(DEFAULT_SPACES["StepLR"], 10, 1, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        draw(DEFAULT_SPACES["StepLR"], 16, 1, 0)


@pytest.mark.parametrize("epochs", BUDGETS)
@pytest.mark.parametrize("name", list(DEFAULT_SPACES))
def test_resolved_entries_pass_the_projects_validation(name: str, epochs: int):
    """Corners and draws, through parse_params with torch stepping each; lr is every
    schedule's peak (OneCycleLR's rise may end between two updates, just short of it)."""
    space = DEFAULT_SPACES[name]
    for point in corners_and_draws(space, 8):
        entry = space.resolve(point, epochs)
        spec = validated(entry, name, epochs)
        rates = preview(spec, epochs, entry["lr"])[:, 0]
        assert rates.max() <= entry["lr"] * (1 + 1e-9)
        least = 0.8 if name == "OneCycleLR" else 1 - 1e-9
        assert rates.max() >= entry["lr"] * least, (point, entry)


@pytest.mark.parametrize("name", DECAYING)
def test_decays_reach_final_ratio_after_the_budget(name: str):
    """final_ratio is the rate after the budget's last update over the peak, however the
    schedule counts its decays (the manual loop after update 0, StepLR after step_size)."""
    space = DEFAULT_SPACES[name]
    for epochs in (37, *BUDGETS):
        for point in corners_and_draws(space, 4):
            entry = space.resolve(point, epochs)
            spec = validated(entry, name, epochs)
            after = preview(spec, epochs + 1, entry["lr"])[-1, 0]
            assert after == pytest.approx(entry["lr"] * point["final_ratio"], rel=1e-6), entry


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 5, 9])
def test_short_budgets_resolve_to_valid_entries(epochs: int):
    for name, space in DEFAULT_SPACES.items():
        if name == "warmup_cosine" and epochs < 2:
            with pytest.raises(ValueError, match="budget of 2"):
                space.resolve(space.from_unit([0.5] * len(space.dims)), epochs)
            continue
        for point in corners_and_draws(space, 2):
            validated(space.resolve(point, epochs), name, epochs)


def test_the_direct_form_searches_a_types_own_arguments():
    space = make_space(
        "cyclic",
        "CyclicLR",
        {
            "base_lr": LogUniform(1e-4, 1e-3),
            "step_size_up": IntUniform(5, 50, log=True),
            "max_lr": 0.01,
            "cycle_momentum": False,
        },
        form="direct",
    )
    for point in corners_and_draws(space, 4):
        entry = space.resolve(point, 200)
        drawn = {k: point[k] for k in list(space.dims)[1:]}
        assert entry["scheduler"] == {"type": "CyclicLR", **space.fixed, **drawn}
        validated(entry, "cyclic", 200)


def test_a_wrong_space_fails_when_built():
    with pytest.raises(ValueError, match=r"step_fraction.*form: direct"):
        make_space("s", "StepLR", {"step_size": IntUniform(1, 9)})
    with pytest.raises(ValueError, match="first dimension must be 'lr'"):
        SearchSpace("s", "constant", {"x": Uniform(0.0, 1.0), "lr": LogUniform(0.1, 1.0)})
    with pytest.raises(ValueError, match="unknown form"):
        make_space("s", "StepLR", form="steps")
    with pytest.raises(ValueError, match="low < high"):
        LogUniform(1.0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        LogUniform(0.0, 1.0)
    with pytest.raises(ValueError, match="once"):
        Choice(("a", "a"))
    with pytest.raises(ValueError, match="shape"):
        points(DEFAULT_SPACES["StepLR"], draw(DEFAULT_SPACES["StepLR"], 4, 2, 0))
    with pytest.raises(ValueError, match="non-negative"):
        draw(DEFAULT_SPACES["StepLR"], 4, 1, -1)


def docstring_section() -> dict[str, Any]:
    """The YAML snippet in the module docstring, which the lead pastes into params.yaml."""
    doc = search.__doc__ or ""
    block = re.search(r"::\n\n((?: {4}.*\n|\n)+)", doc)
    assert block is not None
    section: dict[str, Any] = yaml.safe_load(block.group(1))
    return section


def test_the_docstring_snippet_is_the_default_spaces():
    plan = parse_search(docstring_section()["search"])
    assert plan.spaces == dict(DEFAULT_SPACES)
    assert (plan.trials, plan.studies, plan.seed) == (16, 3, 0)
    assert plan.draw()["OneCycleLR"].shape == (3, 16, 3)


def test_the_search_section_names_the_key_at_fault():
    section = docstring_section()["search"]
    bad = copy.deepcopy(section)
    bad["spaces"]["StepLR"]["final_ratio"] = {"log_uniform": [0.0, 1.0]}
    with pytest.raises(ValueError, match=r"search\.spaces\.StepLR\.final_ratio: .*positive"):
        parse_search(bad)
    bad = copy.deepcopy(section)
    bad["spaces"]["constant"]["lr"] = 0.1
    with pytest.raises(ValueError, match=r"search\.spaces\.constant: lr is shared"):
        parse_search(bad)
    with pytest.raises(ValueError, match=r"search\.trials: got 0"):
        parse_search({**section, "trials": 0})


@pytest.mark.parametrize("epochs", [2, 3, 10])
def test_budget_fractions_become_valid_step_counts_at_their_edges(epochs: int):
    """A warm-up of the whole budget leaves the cosine one update (T_max = 0 divides by zero in
    torch); a step of nearly no fraction is still one update."""
    spaces = {
        "warmup": make_space(
            "warmup",
            "SequentialLR",
            {"warmup_fraction": Uniform(0.9, 1.0), "start_factor": 0.1},
            form="warmup_cosine",
        ),
        "steps": make_space(
            "steps", "StepLR", {"step_fraction": Uniform(0.0, 1.0), "final_ratio": 0.5}
        ),
    }
    for name, space in spaces.items():
        for point in corners_and_draws(space, 2):
            validated(space.resolve(point, epochs), name, epochs)
