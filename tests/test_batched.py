"""The batched trainer against the reference trainer (torch.optim + lr_scheduler), replicate by
replicate, over every step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import data, minibatch
from pipeline.batched import Replicate, train_batch
from pipeline.params import parse_params
from pipeline.reference import train_reference
from pipeline.training import make_deterministic
from tests.conftest import tiny_document

SEEDS = (42, 7, 1234)


@pytest.mark.slow  # trains 33 runs batched, then each one alone
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_every_batched_replicate_equals_its_torch_twin(optimizer):
    make_deterministic()
    document = tiny_document(epochs=150)
    document["train"]["optimizer"] = optimizer
    if optimizer == "sgd":
        # Not 0.5: with momentum 0.9 on batches of 4 points that is chaotic (the loss jumps to
        # 1.3), and float32 rounding (1e-7 here) grows to 6e-6 in the batch_size run.
        document["train"].update(lr=0.2, momentum=0.9)
        document["schedulers"]["OneCycleLR"]["max_lr"] = 1.0
    params = parse_params(document)
    noise = params.data.noise
    datasets = {(s, noise): data.generate(params.data.n_samples, noise, s) for s in SEEDS}
    replicates = [
        Replicate(spec, seed, params.train.lr, noise) for spec in params.schedules for seed in SEEDS
    ]
    batch = train_batch(replicates, params, datasets, torch.device("cpu"))

    for index, replicate in enumerate(replicates):
        twin = train_reference(
            replicate.spec,
            dataclasses.replace(params, seed=replicate.seed),
            datasets[replicate.data_key],
            datasets[replicate.data_key],
            torch.device("cpu"),
        )
        label = f"{replicate.spec.name} seed {replicate.seed}"
        layers = batch.rates[index] if twin.rates.shape[1] == 2 else batch.rates[index, :, :1]
        np.testing.assert_allclose(layers, twin.rates, rtol=1e-12, err_msg=label)
        np.testing.assert_allclose(
            batch.losses[index], twin.losses, rtol=0, atol=1e-6, err_msg=label
        )
        for name, value in twin.state_dict.items():
            torch.testing.assert_close(batch.state_dicts[index][name], value, rtol=0, atol=1e-5)


@pytest.mark.slow  # 1000 updates, batched and as the tutorial's loops
def test_batched_pipeline_runs_reproduce_the_tutorial():
    """What the train stage records for manual and StepLR, against the tutorial's own loops."""
    from tests.conftest import default_document
    from tests.test_tutorial import tutorial_script

    make_deterministic()
    params = parse_params(default_document())
    train_set = data.generate(params.data.n_samples, params.data.noise, params.seed)
    replicates = [
        Replicate(params.schedule("manual"), params.seed, params.train.lr, params.data.noise),
        Replicate(params.schedule("StepLR"), params.seed, params.train.lr, params.data.noise),
    ]
    batch = train_batch(
        replicates, params, {replicates[0].data_key: train_set}, torch.device("cpu")
    )
    for index, use_step_lr in enumerate((False, True)):
        losses, _, used = tutorial_script(params, train_set, use_step_lr)
        np.testing.assert_array_equal(batch.rates[index, :, 0], used)
        np.testing.assert_allclose(batch.losses[index], losses, rtol=0, atol=1e-6)


def test_mini_batches_follow_the_schedule_and_cover_each_pass_without_repeats():
    spec = parse_params(
        {"schedulers": {"b": {"type": "batch_size", "initial": 3, "factor": 1.5, "every": 10}}}
    ).schedules[0]
    samples, epochs = 20, 60
    sampler = minibatch.Sampler(spec, epochs, samples, seed=5)
    expected = [min(samples, int(3 * 1.5 ** (i // 10))) for i in range(epochs)]
    assert sampler.sizes.tolist() == expected  # 3, 4, 6, 10, 15, 20: the closed form
    seen: list[int] = []
    for step in range(epochs):
        batch = sampler.batch(step)
        assert len(batch) == expected[step] and len(set(batch.tolist())) == len(batch)
        if len(seen) + len(batch) > samples:
            seen = []  # a new pass starts
        assert not set(seen) & set(batch.tolist()), f"step {step} repeats a point of its pass"
        seen += batch.tolist()
    first, again = _batches(spec, epochs, samples, 5), _batches(spec, epochs, samples, 5)
    assert all((a == b).all() for a, b in zip(first, again, strict=True))  # the seed decides
    other = _batches(spec, epochs, samples, 6)
    assert any((a != b).any() for a, b in zip(first, other, strict=True))


def _batches(spec, epochs, samples, seed):
    sampler = minibatch.Sampler(spec, epochs, samples, seed)
    return [sampler.batch(step) for step in range(epochs)]


def test_a_batch_of_the_whole_set_trains_like_full_batch_and_a_small_one_does_not():
    make_deterministic()
    document = tiny_document(epochs=100)
    document["schedulers"] = {
        "constant": {"type": "constant"},
        "whole": {"type": "batch_size", "initial": 20, "factor": 1, "every": 1},
        "small": {"type": "batch_size", "initial": 4, "factor": 1, "every": 1},
    }
    params = parse_params(document)
    train_set = data.generate(params.data.n_samples, params.data.noise, params.seed)
    replicates = [
        Replicate(spec, params.seed, params.train.lr, params.data.noise)
        for spec in params.schedules
    ]
    batch = train_batch(
        replicates, params, {replicates[0].data_key: train_set}, torch.device("cpu")
    )
    np.testing.assert_allclose(batch.losses[1], batch.losses[0], rtol=0, atol=1e-6)
    assert np.abs(batch.losses[2] - batch.losses[0]).max() > 1e-3
    assert batch.batch_sizes[:, 0].tolist() == [20, 20, 4]


def test_every_point_of_a_grid_equals_a_separate_run_at_that_point():
    """A grid over train.lr and data.noise trains in one batch what separate runs would."""
    make_deterministic()
    document = tiny_document(epochs=60)
    document["train"]["lr"] = [0.05, 0.01]
    document["data"]["noise"] = [0.1, 0.3]
    document["schedulers"] = {
        name: document["schedulers"][name] for name in ("StepLR", "ReduceLROnPlateau")
    }
    params = parse_params(document)
    seeds = (3, 4)
    datasets = {
        (seed, v.noise): data.generate(params.data.n_samples, v.noise, seed)
        for v in params.grid
        for seed in seeds
    }
    replicates = [
        Replicate(r.spec, s, r.point.lr, r.point.noise) for r in params.runs for s in seeds
    ]
    assert len(replicates) == 2 * 2 * 2 * 2
    batch = train_batch(replicates, params, datasets, torch.device("cpu"))
    for index, replicate in enumerate(replicates):
        grid_point = next(
            p for p in params.grid if (p.lr, p.noise) == (replicate.lr, replicate.noise)
        )
        point = dataclasses.replace(params.at(grid_point), seed=replicate.seed)
        assert (point.train.lr, point.data.noise) == (replicate.lr, replicate.noise)
        # The separate run draws its own data from the point's params, not from the batch's.
        own_data = data.generate(point.data.n_samples, point.data.noise, replicate.seed)
        twin = train_reference(replicate.spec, point, own_data, own_data, torch.device("cpu"))
        np.testing.assert_allclose(batch.rates[index, :, 0], twin.rates[:, 0], rtol=1e-12)
        np.testing.assert_allclose(batch.losses[index], twin.losses, rtol=0, atol=1e-6)
