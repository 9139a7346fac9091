"""The model family: a deep perceptron and a small conv net, declared in params, trained as one
batch by either engine, each replicate equal to its torch.optim + lr_scheduler twin; the
family's forward pass equal to torch's own layers; a model the data cannot take refused at
its key."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config.params import parse_params
from pipeline.core.validation import ParamsError
from pipeline.problems import data, workloads
from pipeline.problems.architecture import LOGICNET, ModelParams
from pipeline.problems.model import FamilyNet, LogicNet, logits
from pipeline.trainer.batch import Replicate, Setup
from pipeline.trainer.batched import train_batch
from pipeline.trainer.runtime import initial_model, make_deterministic
from tests.conftest import tiny_document
from tests.reference import train_reference

CPU = torch.device("cpu")
SEEDS = (42, 7)
DEEP = {"hidden": [6, 5, 4], "activation": "relu"}
CONV = {"conv": {"channels": 3, "kernel": 3}, "hidden": [6], "activation": "tanh"}
DIGITS = workloads.Workload(
    name="digits_test", generator="digits", n_train=24, n_validation=20, n_test=20,
    noise=0.05, epochs=40, model=ModelParams.model_validate(CONV),
)  # fmt: skip


def _document(model: dict, epochs: int) -> dict:
    """Tiny params for ``model``: one schedule of each kind a batch steps differently (a
    closed form, per-layer rules, one that watches the loss, growing mini-batches)."""
    document = tiny_document(epochs=epochs)
    document["model"] = copy.deepcopy(model)
    layers = ModelParams.model_validate(model).architecture(
        *((64, 10) if "conv" in model else (2, 2))
    )
    schedulers = document["schedulers"]
    schedulers["LambdaLR"]["lr_lambda"] = _rules(layers.layer_names)
    keep = ("StepLR", "ReduceLROnPlateau", "LambdaLR", "OneCycleLR", "growing_batch")
    document["schedulers"] = {name: schedulers[name] for name in keep}
    document["schedulers"]["growing_batch"]["every"] = epochs // 4
    return document


def _rules(layers) -> dict[str, str]:
    """A rule per layer, each its own: a mix-up of layers would show in the rates."""
    return {name: f"0.9 ** (step // {5 + depth})" for depth, name in enumerate(layers)}


def _cases() -> dict[str, tuple[dict, object]]:
    return {"deep relu perceptron": (DEEP, None), "conv net on digits": (CONV, DIGITS)}


@pytest.mark.compute  # 2 models x 2 engines: 10 replicates batched, then each alone
@pytest.mark.parametrize("engine", ["kernels", "torch"])
@pytest.mark.parametrize("case", list(_cases()))
def test_every_replicate_of_a_family_model_equals_its_torch_twin(case, engine):
    make_deterministic()
    model, workload = _cases()[case]
    epochs = 40
    # The train stage refuses a conv net on the moons: its params are LogicNet's, its network
    # the workload's.
    params = parse_params(_document(model if workload is None else {"hidden": [3]}, epochs))
    if workload is not None:
        architecture = workload.architecture
        sets = {seed: workloads.generate(workload, 0, train_seed=seed).train for seed in SEEDS}
    else:
        architecture = params.architecture
        noise = params.data.noise
        sets = {seed: data.generate(params.data.n_samples, noise, seed) for seed in SEEDS}
    specs = list(params.schedules)
    if workload is not None:  # per-layer rules for the conv net's own layers
        specs = _relabelled(specs, architecture.layer_names, epochs)
    noise = params.data.noise
    replicates = [Replicate(spec, seed, params.train.lr, noise) for spec in specs for seed in SEEDS]
    datasets = {(seed, noise): sets[seed] for seed in SEEDS}
    setup = Setup(epochs, architecture, params.train.optimizer, params.train.momentum)
    batch = train_batch(replicates, setup, datasets, CPU, engine=engine)

    assert batch.rates.shape[2] == len(architecture.layers)
    for index, replicate in enumerate(replicates):
        twin = train_reference(
            replicate.spec, dataclasses.replace(params, seed=replicate.seed),
            sets[replicate.seed], sets[replicate.seed], CPU, architecture=architecture,
        )  # fmt: skip
        label = f"{case}: {replicate.spec.name} seed {replicate.seed}"
        groups = twin.rates.shape[1]
        np.testing.assert_allclose(
            batch.rates[index, :, :groups], twin.rates, rtol=1e-12, err_msg=label
        )
        np.testing.assert_allclose(batch.losses[index], twin.losses, atol=1e-6, err_msg=label)
        for name, value in twin.state_dict.items():
            got = batch.state_dicts[index][name]
            assert got.shape == value.shape, name
            torch.testing.assert_close(got, value, rtol=0, atol=1e-5, msg=f"{label}: {name}")
        assert twin.losses[-1] < twin.losses[0], label  # it learns: the twins are not both idle


def _relabelled(specs, layers, epochs):
    from pipeline.schedules.specs import parse_spec

    found = []
    for spec in specs:
        if spec.per_layer:
            entry = spec.as_params()
            entry["lr_lambda"] = _rules(layers)
            spec = parse_spec(spec.name, entry, epochs)
        found.append(spec)
    return found


def test_the_family_forward_pass_is_torch_layers_to_rounding():
    """Against torch's own conv2d and linear layers (MKL's, in their own order of sums)."""
    net = initial_model(DIGITS.architecture, CPU, 3)
    x = torch.from_numpy(workloads.generate(DIGITS, 0).train.features).float()
    hidden = torch.tanh(F.conv2d(x.view(-1, 1, 8, 8), net.Conv1.weight, net.Conv1.bias))
    hidden = hidden.permute(0, 2, 3, 1).reshape(len(x), -1)  # position by position
    expected = net.Liner2(torch.tanh(net.Liner1(hidden)))
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-6)
    # stacked weights of two seeds at once: each seed's own pass
    other = initial_model(DIGITS.architecture, CPU, 4)
    names = DIGITS.architecture.parameter_names
    stacked = [torch.stack([net.state_dict()[n], other.state_dict()[n]]) for n in names]
    both = logits(DIGITS.architecture, stacked, x)
    assert torch.equal(both[0], net(x)) and torch.equal(both[1], other(x))


def test_logicnet_is_the_family_member_with_one_tanh_layer_of_three():
    assert LOGICNET.layer_names == ("Liner1", "Liner2")
    torch.manual_seed(5)
    tutorial = LogicNet(inputdim=2, hiddendim=3, outputdim=2)
    member = initial_model(LOGICNET, CPU, 5)
    assert type(member) is FamilyNet
    assert list(tutorial.state_dict()) == ["Liner1.weight", "Liner1.bias", "Liner2.weight",
                                           "Liner2.bias"]  # fmt: skip
    for name, value in tutorial.state_dict().items():
        assert torch.equal(member.state_dict()[name], value), name


def test_a_deep_model_in_params_has_a_layer_and_a_group_per_layer():
    params = parse_params(_document(DEEP, 20))
    assert params.architecture.layer_names == ("Liner1", "Liner2", "Liner3", "Liner4")
    assert params.architecture.describe() == (
        "Liner1(2, 6) -> relu -> Liner2(6, 5) -> relu -> Liner3(5, 4) -> relu -> Liner4(4, 2)"
    )
    assert params.schedule("LambdaLR").groups == params.architecture.layer_names


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(model=CONV), "model.conv: a convolution needs square images"),
        (lambda d: d["model"].update(activation="gelu"), "model.activation"),
        (lambda d: d["model"].update(hidden=[0]), "model.hidden.0"),
        (lambda d: d["model"].update(hidden=[4] * 9), "model.hidden"),
        (
            lambda d: d["model"].update(hidden=[3, 3]),
            "schedulers.LambdaLR.lr_lambda: per-layer rules need exactly the layers of model"
            " (Liner1, Liner2, Liner3); got Liner1, Liner2",
        ),
    ],
    ids=["conv on points", "unknown activation", "zero width", "too deep", "rules per layer"],
)
def test_a_model_the_train_stage_cannot_train_is_refused_at_its_key(change, message):
    document = tiny_document(epochs=20)
    change(document)
    with pytest.raises(ParamsError, match=None) as raised:
        parse_params(document)
    assert message in str(raised.value)


def test_a_workload_whose_data_the_model_cannot_take_is_refused_at_its_key():
    document = tiny_document(epochs=20)
    entries = document["workloads"]
    entries[0]["model"] = CONV  # the moons are points, not images
    digits = next(index for index, w in enumerate(entries) if w["generator"] == "digits")
    entries[digits]["n_train"] = 1750
    with pytest.raises(ParamsError) as raised:
        workloads.parse_workloads(entries)
    text = str(raised.value)
    assert "workloads[0].model.conv: a convolution needs square images" in text
    assert f"workloads[{digits}].n_train: n_train + n_validation + n_test is 1840" in text


def test_digit_splits_are_disjoint_and_another_train_seed_keeps_validation_and_test():
    first, second = workloads.generate(DIGITS, 0), workloads.generate(DIGITS, 0, train_seed=1)
    assert first.train.features.shape == (24, 64) and set(first.test.labels) <= set(range(10))
    assert np.array_equal(first.test.features, second.test.features)
    assert np.array_equal(first.validation.features, second.validation.features)
    assert not np.array_equal(first.train.features, second.train.features)
    clean = DIGITS.model_copy(update={"noise": 0.0})
    splits = workloads.generate(clean, 0)
    rows = [{tuple(r) for r in s.features.tolist()} for _, s in splits.items()]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
