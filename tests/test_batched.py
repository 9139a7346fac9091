"""The batched trainer against torch.optim + lr_scheduler, run by run, over every step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import data
from pipeline.batched import Arm, train_batch
from pipeline.params import parse_params
from pipeline.training import make_deterministic, train_one
from tests.conftest import tiny_document

SEEDS = (42, 7, 1234)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_every_batched_run_equals_its_torch_twin(optimizer):
    make_deterministic()
    document = tiny_document(epochs=150)
    document["train"]["optimizer"] = optimizer
    if optimizer == "sgd":
        document["train"].update(lr=0.5, momentum=0.9)
        document["schedulers"]["OneCycleLR"]["max_lr"] = 1.0
    params = parse_params(document)
    datasets = {s: data.generate(params.data.n_samples, params.data.noise, s) for s in SEEDS}
    arms = [Arm(spec, seed) for spec in params.schedules for seed in SEEDS]
    batch = train_batch(arms, params, datasets, torch.device("cpu"))

    for index, arm in enumerate(arms):
        twin = train_one(
            arm.spec,
            dataclasses.replace(params, seed=arm.seed),
            datasets[arm.seed],
            datasets[arm.seed],
            torch.device("cpu"),
        )
        label = f"{arm.spec.name} seed {arm.seed}"
        layers = batch.rates[index] if twin.rates.shape[1] == 2 else batch.rates[index, :, :1]
        np.testing.assert_allclose(layers, twin.rates, rtol=1e-12, err_msg=label)
        np.testing.assert_allclose(
            batch.losses[index], twin.losses, rtol=0, atol=1e-6, err_msg=label
        )
        for name, value in twin.state_dict.items():
            torch.testing.assert_close(batch.state_dicts[index][name], value, rtol=0, atol=1e-5)


def test_batched_pipeline_runs_reproduce_the_tutorial():
    """What the train stage records for manual and StepLR, against the tutorial's own loops."""
    from tests.conftest import default_document
    from tests.test_tutorial import tutorial_script

    make_deterministic()
    params = parse_params(default_document())
    train_set = data.generate(params.data.n_samples, params.data.noise, params.seed)
    arms = [
        Arm(params.schedule("manual"), params.seed),
        Arm(params.schedule("StepLR"), params.seed),
    ]
    batch = train_batch(arms, params, {params.seed: train_set}, torch.device("cpu"))
    for index, use_step_lr in enumerate((False, True)):
        losses, _, used = tutorial_script(params, train_set, use_step_lr)
        np.testing.assert_array_equal(batch.rates[index, :, 0], used)
        np.testing.assert_allclose(batch.losses[index], losses, rtol=0, atol=1e-6)
