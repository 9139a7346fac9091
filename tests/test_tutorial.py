"""Our `manual` and `StepLR` runs against literal transcriptions of the tutorial's two scripts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.problems import data
from pipeline.problems.model import LogicNet
from pipeline.trainer.runtime import make_deterministic
from tests.reference import train_reference

pytestmark = pytest.mark.compute  # the tutorial's 1000 updates, six times over
EPOCHS = 1000  # the tutorial's own numbers, whole


@pytest.fixture(scope="module")
def setting():
    from tests.conftest import default_document

    make_deterministic()
    params = parse_params(default_document())
    train_set = data.generate(params.data.n_samples, params.data.noise, params.seed)
    return params, train_set


def tutorial_script(params, train_set, use_step_lr: bool):
    """The tutorial's loop, line for line; `used` also keeps the rate each update used."""
    X, Y = train_set.features, train_set.labels
    torch.manual_seed(params.seed)  # the tutorial draws no seed; we fix the same one as ours
    model = LogicNet(inputdim=2, hiddendim=3, outputdim=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    xt = torch.from_numpy(X).type(torch.FloatTensor)
    yt = torch.from_numpy(Y).type(torch.LongTensor)
    epochs = EPOCHS
    losses, lr_list, used = [], [], []
    if use_step_lr:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=50, gamma=0.99)
    for i in range(epochs):
        used.append(optimizer.param_groups[0]["lr"])
        loss = model.getloss(xt, yt)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if use_step_lr:
            scheduler.step()
        elif i % 50 == 0:
            for p in optimizer.param_groups:
                p["lr"] *= 0.99
        lr_list.append(optimizer.state_dict()["param_groups"][0]["lr"])
    return np.array(losses), np.array(lr_list), np.array(used)


@pytest.mark.parametrize("name, use_step_lr", [("manual", False), ("StepLR", True)])
def test_run_equals_the_tutorial_step_for_step(setting, name, use_step_lr):
    params, train_set = setting
    ours = train_reference(params.schedule(name), params, train_set, train_set, torch.device("cpu"))
    losses, lr_list, used = tutorial_script(params, train_set, use_step_lr)

    # The same updates in the same order: the losses agree bit for bit.
    np.testing.assert_array_equal(ours.losses, losses)
    # Ours records the rate update i used; the tutorial appends the rate after update i.
    np.testing.assert_array_equal(ours.rates[:, 0], used)
    np.testing.assert_array_equal(ours.rates[1:, 0], lr_list[:-1])


def test_manual_and_step_lr_are_different_sequences(setting):
    params, train_set = setting
    _, manual, _ = tutorial_script(params, train_set, use_step_lr=False)
    _, step_lr, _ = tutorial_script(params, train_set, use_step_lr=True)
    # Manual decays right after update 0, StepLR after update 49: one decay apart until the end.
    assert manual[0] == pytest.approx(0.01 * 0.99)
    assert step_lr[0] == 0.01
    assert step_lr[49] == pytest.approx(0.01 * 0.99)
    assert not np.array_equal(manual, step_lr)
    np.testing.assert_allclose(
        manual[:-1] / step_lr[:-1], np.where(np.arange(EPOCHS - 1) % 50 == 49, 1, 0.99)
    )
