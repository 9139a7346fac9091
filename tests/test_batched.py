"""The batched trainer against the reference trainer (torch.optim + lr_scheduler), replicate by
replicate, over every step."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.problems import data
from pipeline.trainer import minibatch
from pipeline.trainer.batch import Replicate, Setup
from pipeline.trainer.batched import train_batch
from pipeline.trainer.runtime import make_deterministic
from tests.conftest import tiny_document
from tests.reference import train_reference

SEEDS = (42, 7, 1234)


@pytest.mark.compute  # trains 33 runs batched, then each one alone
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("engine", ["kernels", "torch"])  # the CPU's, and the GPU's on the CPU
def test_every_batched_replicate_equals_its_torch_twin(optimizer, engine):
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
    batch = train_batch(replicates, Setup.of(params), datasets, torch.device("cpu"), engine=engine)

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


@pytest.mark.compute  # 1000 updates, batched and as the tutorial's loops
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
        replicates, Setup.of(params), {replicates[0].data_key: train_set}, torch.device("cpu")
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
        replicates, Setup.of(params), {replicates[0].data_key: train_set}, torch.device("cpu")
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
    batch = train_batch(replicates, Setup.of(params), datasets, torch.device("cpu"))
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


# The validation loss after every update (train_batch's and train_reference's ``validation``).
VALIDATION_SCHEDULES = ("StepLR", "ReduceLROnPlateau", "LambdaLR", "OneCycleLR", "growing_batch")


def _validation_params(epochs: int, noise=None, trained_epochs: int | None = None):
    """Tiny params with the schedules above; ``trained_epochs`` shortens the run, its schedules
    (their step counts fixed by ``epochs``) unchanged."""
    document = tiny_document(epochs=epochs)
    document["schedulers"] = {name: document["schedulers"][name] for name in VALIDATION_SCHEDULES}
    if noise is not None:
        document["data"]["noise"] = noise
    if trained_epochs is not None:
        document["train"]["epochs"] = trained_epochs
    return parse_params(document)


def _validation_sets(params, noises):
    """One held-out set per noise level, drawn as the test sets are (their own seed)."""
    test = params.data.test
    return {noise: data.generate(test.n_samples, noise, test.seed) for noise in noises}


def _plain_loss(state_dict, dataset) -> float:
    """The loss of weights on a set with plain torch ops (matmul, float64), no pipeline code."""
    x = torch.from_numpy(dataset.features)
    names = ("Liner1.weight", "Liner1.bias", "Liner2.weight", "Liner2.bias")
    w1, b1, w2, b2 = (state_dict[name].double() for name in names)
    logits = torch.tanh(x @ w1.T + b1) @ w2.T + b2
    return torch.nn.functional.cross_entropy(logits, torch.from_numpy(dataset.labels)).item()


@pytest.mark.compute  # 16 runs batched, then each one alone
def test_batched_validation_losses_equal_the_torch_twins():
    """Over two noise levels (two validation sets) and schedules incl. ReduceLROnPlateau, per-layer
    LambdaLR and the growing batch: the same standard as the training losses."""
    make_deterministic()
    params = _validation_params(epochs=100, noise=[0.1, 0.3])
    seeds = (42, 7)
    noises = [point.noise for point in params.grid]
    datasets = {
        (seed, noise): data.generate(params.data.n_samples, noise, seed)
        for noise in noises
        for seed in seeds
    }
    validation = _validation_sets(params, noises)
    replicates = [
        Replicate(r.spec, s, r.point.lr, r.point.noise) for r in params.runs for s in seeds
    ]
    batch = train_batch(
        replicates, Setup.of(params), datasets, torch.device("cpu"), validation=validation
    )
    assert batch.validation_losses is not None
    assert batch.validation_losses.shape == (len(replicates), 100)
    assert batch.validation_losses.dtype == np.float64
    for index, replicate in enumerate(replicates):
        point = next(p for p in params.grid if p.noise == replicate.noise)
        twin = train_reference(
            replicate.spec,
            dataclasses.replace(params.at(point), seed=replicate.seed),
            datasets[replicate.data_key],
            datasets[replicate.data_key],
            torch.device("cpu"),
            validation=validation[replicate.noise],
        )
        label = f"{replicate.spec.name} seed {replicate.seed} noise {replicate.noise}"
        assert twin.validation_losses is not None
        np.testing.assert_allclose(batch.losses[index], twin.losses, rtol=0, atol=1e-6)
        np.testing.assert_allclose(
            batch.validation_losses[index], twin.validation_losses, rtol=0, atol=1e-6, err_msg=label
        )
    # Each set is its own: the two noise levels' validation losses are not the same curves.
    by_noise = [batch.validation_losses[[r.noise == n for r in replicates]] for n in noises]
    assert np.abs(by_noise[0] - by_noise[1]).max() > 1e-2


def test_the_validation_loss_after_update_i_is_the_train_loss_before_update_i_plus_1():
    """With the train set as validation set, the loss after update i is, bit for bit, the train
    loss recorded before update i + 1, in the batch and in its twin: recorded after the update
    (and the scheduler step), with the training loss's own arithmetic, and of the whole set even
    where the update trained on a mini-batch."""
    make_deterministic()
    params = _validation_params(epochs=60)
    noise = params.data.noise
    train_set = data.generate(params.data.n_samples, noise, params.seed)
    replicates = [Replicate(spec, params.seed, params.train.lr, noise) for spec in params.schedules]
    batch = train_batch(
        replicates,
        Setup.of(params),
        {replicates[0].data_key: train_set},
        torch.device("cpu"),
        validation={noise: train_set},
    )
    assert batch.validation_losses is not None
    np.testing.assert_array_equal(batch.validation_losses[:, :-1], batch.losses[:, 1:])
    assert (batch.batch_sizes[-1] < len(train_set)).any()  # the growing batch's mini-batches
    for spec in params.schedules:
        twin = train_reference(
            spec, params, train_set, train_set, torch.device("cpu"), validation=train_set
        )
        assert twin.validation_losses is not None
        np.testing.assert_array_equal(twin.validation_losses[:-1], twin.losses[1:])


def test_the_validation_loss_at_update_t_is_the_loss_of_the_weights_after_t_updates():
    """A run re-trained for exactly t updates ends with the weights of update t: the loss of those
    weights on the validation set, computed with plain torch, is the validation loss at t."""
    make_deterministic()
    epochs, seeds = 90, (42, 7)
    params = _validation_params(epochs=epochs)
    noise = params.data.noise
    datasets = {(s, noise): data.generate(params.data.n_samples, noise, s) for s in seeds}
    validation = _validation_sets(params, [noise])
    replicates = [
        Replicate(spec, s, params.train.lr, noise)
        for spec in params.schedules
        if spec.name in ("ReduceLROnPlateau", "LambdaLR", "growing_batch")
        for s in seeds
    ]
    full = train_batch(
        replicates, Setup.of(params), datasets, torch.device("cpu"), validation=validation
    )
    assert full.validation_losses is not None
    for updates in (1, 37, epochs):
        short_params = _validation_params(epochs=epochs, trained_epochs=updates)
        short = train_batch(
            replicates, Setup.of(short_params), datasets, torch.device("cpu"), validation=validation
        )
        assert short.validation_losses is not None
        # The same trajectory for its first t updates, the validation losses included.
        np.testing.assert_array_equal(short.losses, full.losses[:, :updates])
        np.testing.assert_array_equal(short.validation_losses, full.validation_losses[:, :updates])
        for index, replicate in enumerate(replicates):
            direct = _plain_loss(short.state_dicts[index], validation[noise])
            label = f"{replicate.spec.name} seed {replicate.seed} after {updates} updates"
            assert full.validation_losses[index, updates - 1] == pytest.approx(
                direct, rel=1e-6, abs=1e-7
            ), label
            if updates == epochs:  # the full run's own final weights, too
                assert _plain_loss(full.state_dicts[index], validation[noise]) == pytest.approx(
                    direct, rel=1e-6, abs=1e-7
                ), label


def test_without_validation_the_batch_and_the_twin_are_unchanged():
    """No validation: no validation array; with it, training itself is bit for bit the same."""
    make_deterministic()
    params = _validation_params(epochs=50)
    noise = params.data.noise
    seeds = (42, 7)
    datasets = {(s, noise): data.generate(params.data.n_samples, noise, s) for s in seeds}
    validation = _validation_sets(params, [noise])
    replicates = [
        Replicate(spec, s, params.train.lr, noise) for spec in params.schedules for s in seeds
    ]
    plain = train_batch(replicates, Setup.of(params), datasets, torch.device("cpu"))
    validated = train_batch(
        replicates, Setup.of(params), datasets, torch.device("cpu"), validation=validation
    )
    assert plain.validation_losses is None
    assert validated.validation_losses is not None
    for field in ("rates", "losses", "batch_sizes"):
        assert getattr(plain, field).tobytes() == getattr(validated, field).tobytes(), field
    for a, b in zip(plain.state_dicts, validated.state_dicts, strict=True):
        assert all(torch.equal(a[name], b[name]) for name in a)

    spec = params.schedule("ReduceLROnPlateau")  # its loss feeds the scheduler: still the train's
    train_set = datasets[(params.seed, noise)]
    alone = train_reference(spec, params, train_set, train_set, torch.device("cpu"))
    checked = train_reference(
        spec, params, train_set, train_set, torch.device("cpu"), validation=validation[noise]
    )
    assert alone.validation_losses is None
    np.testing.assert_array_equal(alone.rates, checked.rates)
    np.testing.assert_array_equal(alone.losses, checked.losses)
    assert alone.final == checked.final
    assert all(torch.equal(alone.state_dict[n], checked.state_dict[n]) for n in alone.state_dict)


def test_a_noise_level_without_a_validation_set_is_a_clear_error():
    params = _validation_params(epochs=5)
    noise = params.data.noise
    replicates = [Replicate(params.schedules[0], params.seed, params.train.lr, noise)]
    datasets = {replicates[0].data_key: data.generate(params.data.n_samples, noise, params.seed)}
    with pytest.raises(ValueError, match=r"validation lacks the sets of noise \[0\.2\]"):
        train_batch(
            replicates,
            Setup.of(params),
            datasets,
            torch.device("cpu"),
            validation={0.3: datasets[replicates[0].data_key]},
        )


def test_deterministic_mode_is_on_without_importing_the_compiler():
    """What torch.use_deterministic_algorithms(True) turns on, set without torch._inductor."""
    script = (
        "import sys, torch\n"
        "from pipeline.trainer.runtime import make_deterministic\n"
        "assert not torch.are_deterministic_algorithms_enabled()\n"
        "make_deterministic()\n"
        "print(torch.are_deterministic_algorithms_enabled(), 'torch._inductor' in sys.modules)\n"
    )
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert shown.stdout.split() == ["True", "False"], shown.stderr
