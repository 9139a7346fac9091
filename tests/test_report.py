"""The claims report on results whose answer is known by construction."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from pipeline.config.params import parse_params
from pipeline.reporting import report
from pipeline.trainer.results import RunResult

EPOCHS, SEEDS = 100, 8


def params_for(lrs, seeds=SEEDS):
    return parse_params(
        {
            "train": {"lr": lrs, "epochs": EPOCHS, "seeds": seeds},
            "analysis": {"target_loss": 0.1},
            "schedulers": {
                "constant": {"type": "constant"},
                "StepLR": {"type": "StepLR", "step_size": 10, "gamma": 0.5},
                "growing_batch": {"type": "batch_size", "initial": 4, "factor": 2, "every": 25},
            },
        }
    )


def result(name, lr, reach_at, final, seeds=SEEDS):
    """Losses falling linearly to 0.1 at step ``reach_at`` (per seed), then to ``final``."""
    rng = np.random.default_rng(len(name) + int(lr * 1000))
    reach = np.atleast_1d(reach_at) + rng.integers(0, 3, seeds)
    finals = final + rng.uniform(0, 1e-3, seeds)
    losses = np.empty((seeds, EPOCHS))
    for seed in range(seeds):
        losses[seed] = np.interp(np.arange(EPOCHS), [0, reach[seed] - 0.5, EPOCHS - 1],
                                 [1.0, 0.1001, finals[seed]])  # fmt: skip
    schedule = name.split("@")[0]
    return RunResult(
        name=name, schedule=schedule, lr=lr, noise=0.2, groups=("all",),
        seeds=tuple(range(seeds)), rates=np.full((seeds, EPOCHS, 1), lr), losses=losses,
        state_dicts=(), finals={"final_loss": finals, "test_accuracy": np.full(seeds, 0.9)},
    )  # fmt: skip


def verdicts(claims):
    return [claim.verdict for claim in claims]


def test_a_run_that_behaves_as_the_tutorial_says_holds_every_claim():
    params = params_for([0.1, 0.001])
    results = [
        result("constant@lr=0.1", 0.1, 10, 0.05),  # fast, imprecise
        result("StepLR@lr=0.1", 0.1, 10, 0.001),  # as fast, precise
        result("growing_batch@lr=0.1", 0.1, 12, 0.002),  # like decay: lower than constant
        result("constant@lr=0.001", 0.001, 80, 0.01),  # slow, precise
        result("StepLR@lr=0.001", 0.001, 90, 0.02),
        result("growing_batch@lr=0.001", 0.001, 90, 0.02),
    ]
    claims = report.check_claims(results, params)
    assert verdicts(claims) == [
        "held",
        "held for 1 of 1 decaying schedules (StepLR@lr=0.1)",
        "held",
    ]
    text = report.markdown(claims, "| ranking |\n", params, "../figures")
    assert "![losses.png](../figures/losses.png)" in text and "| ranking |" in text


def test_the_opposite_behaviour_contradicts_the_claims():
    params = params_for([0.1, 0.001])
    results = [
        result("constant@lr=0.1", 0.1, 80, 0.001),  # slow and precise: the reverse
        result("StepLR@lr=0.1", 0.1, 95, 0.05),  # slower and less precise than constant
        result("growing_batch@lr=0.1", 0.1, 12, 0.0001),  # lower, while decay was higher
        result("constant@lr=0.001", 0.001, 10, 0.05),
        result("StepLR@lr=0.001", 0.001, 90, 0.02),
        result("growing_batch@lr=0.001", 0.001, 90, 0.02),
    ]
    claims = report.check_claims(results, params)
    assert verdicts(claims) == [
        "did not hold",
        "did not hold for any of 1 decaying schedules",
        "did not hold",
    ]


def test_without_a_rate_grid_the_first_claim_is_not_tested_and_one_seed_gives_directions():
    params = params_for(0.01, seeds=1)
    results = [
        result("constant", 0.01, 10, 0.05, seeds=1),
        result("StepLR", 0.01, 10, 0.001, seeds=1),
        result("growing_batch", 0.01, 10, 0.001, seeds=1),
    ]
    claims = report.check_claims(results, params)
    assert claims[0].verdict == "not tested" and "train.lr" in claims[0].evidence[0]
    assert claims[1].verdict.endswith("(direction only: one seed)")
    assert claims[2].verdict == "held (direction only: one seed)"


def test_differences_too_small_for_the_seeds_are_inconclusive():
    params = params_for([0.1, 0.001], seeds=8)
    same = [result(f"{n}@lr={lr:g}", lr, 50, 0.02) for lr in (0.1, 0.001)
            for n in ("constant", "StepLR", "growing_batch")]  # fmt: skip
    claims = report.check_claims(same, params)
    assert claims[0].verdict == "inconclusive"


def test_the_readers_of_results_do_not_import_the_trainer():
    """curves.py and report.py read ``RunResult``s: importing them costs no torch."""
    code = (
        "import sys, pipeline.reporting.curves, pipeline.reporting.report;"
        " print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_both_reports_count_a_miss_one_update_past_the_last_a_run_could_show():
    from pipeline.reporting.claims import capped, is_decaying

    # Training losses precede their update (0 to 99 updates for 100); validation ones follow
    # it (1 to 100): a miss is 100 in the first and 101 in the second, never inf or NaN.
    np.testing.assert_array_equal(capped([3.0, np.inf], last=99), [3.0, 100.0])
    np.testing.assert_array_equal(capped([3.0, np.inf], last=100), [3.0, 101.0])
    assert not is_decaying("constant") and not is_decaying("batch_size")
    assert is_decaying("StepLR") and is_decaying("warmup_cosine")
