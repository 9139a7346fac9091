"""Recorded learning rates against closed-form formulas, and ReduceLROnPlateau against torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.problems import data
from pipeline.schedules.specs import preview
from pipeline.trainer.runtime import make_deterministic
from tests.reference import train_reference

LR = 0.01


@pytest.fixture(scope="module")
def trained():
    from tests.conftest import tiny_document

    make_deterministic()
    params = parse_params(tiny_document(epochs=120))
    train_set = data.generate(params.data.n_samples, params.data.noise, params.seed)
    device = torch.device("cpu")
    results = {
        s.name: train_reference(s, params, train_set, train_set, device) for s in params.schedules
    }
    return params, results


def closed_forms(epochs: int) -> dict[str, np.ndarray]:
    """Each schedule's rate for update i, written from its definition, not from torch."""
    i = np.arange(epochs)
    warmup = 20
    cosine = np.where(
        i < warmup,
        LR * (0.1 + 0.9 * np.minimum(i, warmup) / warmup),
        LR * (1 + np.cos(np.pi * (i - warmup) / (epochs - warmup))) / 2,
    )
    return {
        "constant": np.full(epochs, LR),
        # the tutorial's loop multiplies after updates 0, 10, 20, ...: ceil(i / 10) decays
        "manual": LR * 0.99 ** np.ceil(i / 10),
        "StepLR": LR * 0.99 ** (i // 10),
        "MultiStepLR": LR * 0.5 ** np.searchsorted([30, 60, 90], i, side="right"),
        "ExponentialLR": LR * 0.997**i,
        "CosineAnnealingLR": LR * (1 + np.cos(np.pi * i / epochs)) / 2,
        "LambdaLR/Liner1": LR * 0.9 ** (i // 10),
        "LambdaLR/Liner2": LR / (1 + 0.005 * i),
        "warmup_cosine": cosine,
    }


def test_recorded_rates_equal_their_closed_form(trained):
    params, results = trained
    for name, expected in closed_forms(params.train.epochs).items():
        run, _, group = name.partition("/")
        result = results[run]
        column = result.groups.index(group) if group else 0
        np.testing.assert_allclose(result.rates[:, column], expected, rtol=1e-9, err_msg=name)


def test_one_cycle_starts_low_peaks_at_max_lr_and_ends_lower_still(trained):
    params, results = trained
    rates = results["OneCycleLR"].rates[:, 0]
    max_lr, total = 0.05, params.train.epochs
    assert rates[0] == pytest.approx(max_lr / 25)  # torch's div_factor
    peak = int(0.3 * total) - 1  # torch's pct_start, counted from step 0
    assert rates.argmax() == peak and rates[peak] == pytest.approx(max_lr)
    assert rates[-1] < rates[0] / 100  # final_div_factor drives it far below the start


def test_plateau_rates_equal_torch_replaying_the_same_losses(trained):
    params, results = trained
    result = results["ReduceLROnPlateau"]
    spec = params.schedule("ReduceLROnPlateau")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **spec.kwargs)
    expected = []
    for loss in result.losses:
        expected.append(optimizer.param_groups[0]["lr"])
        reference.step(float(loss))
    np.testing.assert_array_equal(result.rates[:, 0], expected)
    assert result.rates[-1, 0] < LR, "the tiny run should plateau at least once"


def test_preview_equals_what_training_recorded(trained):
    params, results = trained
    for spec in params.schedules:
        if spec.monitor is not None:
            continue  # its preview assumes a loss that never improves
        rates = preview(spec, params.train.epochs, LR)
        np.testing.assert_array_equal(rates, results[spec.name].rates, err_msg=spec.name)


def test_every_torch_scheduler_type_is_usable_by_name():
    from pipeline.schedules.specs import parse_spec, torch_types, try_spec

    minimal = {
        "LambdaLR": {"lr_lambda": "1 / (1 + step)"},
        "MultiplicativeLR": {"lr_lambda": "0.99"},
        "StepLR": {"step_size": 3},
        "MultiStepLR": {"milestones": [2, 4]},
        "ExponentialLR": {"gamma": 0.9},
        "CosineAnnealingLR": {"T_max": 10},
        "CosineAnnealingWarmRestarts": {"T_0": 3},
        "CyclicLR": {"base_lr": 0.001, "max_lr": 0.01, "cycle_momentum": False},
        "OneCycleLR": {"max_lr": 0.05, "total_steps": 10},
        "SequentialLR": {
            "schedulers": [{"type": "ConstantLR"}, {"type": "ExponentialLR", "gamma": 0.9}],
            "milestones": [3],
        },
        "ChainedScheduler": {"schedulers": [{"type": "ConstantLR"}, {"type": "LinearLR"}]},
        "SWALR": {"swa_lr": 0.005},
    }
    for name in torch_types():
        spec = parse_spec(name, {"type": name, **minimal.get(name, {})}, epochs=10)
        try_spec(spec, 10, LR, "adam", 0.0)
        rates = preview(spec, 10, LR)
        assert rates.shape[0] == 10 and np.isfinite(rates).all(), name


def test_closed_form_sanity():
    # The references themselves: the manual loop decays once after update 0.
    assert closed_forms(20)["manual"][1] == pytest.approx(LR * 0.99)
    assert math.isclose(closed_forms(20)["StepLR"][10], LR * 0.99)
