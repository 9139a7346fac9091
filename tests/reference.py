"""The reference trainer: one run, one seed, ``torch.optim`` and ``lr_scheduler`` step by step.

No stage runs it. It is the plain loop of the tutorial that the batched trainer
(:mod:`pipeline.trainer.batched`) must equal run by run; the tests hold each to the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config.params import Params
from pipeline.core.optim import make_optimizer
from pipeline.problems.architecture import Architecture
from pipeline.problems.data import Dataset
from pipeline.problems.model import param_groups
from pipeline.schedules.specs import Schedule, ScheduleSpec
from pipeline.trainer import minibatch
from pipeline.trainer.runtime import evaluate, initial_model, tensors


@dataclass(frozen=True)
class ReferenceResult:
    """What one reference run produced; ``rates[i]`` and ``losses[i]`` belong to update ``i``."""

    name: str
    groups: tuple[str, ...]
    rates: np.ndarray  # (epochs, groups): the rate update i used
    losses: np.ndarray  # (epochs,): the whole train set's loss before update i
    state_dict: dict[str, torch.Tensor]
    final: dict[str, float]
    # (epochs,): the validation set's loss after update i (and its scheduler step); None when
    # train_reference was given no validation set.
    validation_losses: np.ndarray | None = None


def train_reference(
    spec: ScheduleSpec,
    params: Params,
    train_set: Dataset,
    test_set: Dataset,
    device: torch.device,
    validation: Dataset | None = None,
    architecture: Architecture | None = None,
) -> ReferenceResult:
    """Train one model under ``spec`` from ``params.seed``, as a plain torch loop would: the
    network ``architecture`` (default: params' ``model`` on the moons).

    With a ``validation`` set (the batch's ``validation[noise]``), the loss of the whole set is
    computed without gradient after each update and scheduler step: ``validation_losses``.
    """
    epochs = params.train.epochs
    lr = params.train.lr
    if isinstance(lr, tuple):
        raise ValueError(f"train_reference trains at one grid point; train.lr is a grid: {lr}")
    network = params.architecture if architecture is None else architecture
    model = initial_model(network, device, params.seed)
    optimizer = make_optimizer(
        param_groups(model, spec.per_layer),
        params.train.optimizer,
        lr,
        params.train.momentum,
    )
    schedule = Schedule(spec, optimizer, epochs)
    x, y = tensors(train_set, device)

    sampler = (
        minibatch.Sampler(spec, epochs, len(train_set), params.seed) if spec.mini_batch else None
    )

    rates = np.empty((epochs, len(optimizer.param_groups)))
    losses = torch.empty(epochs, device=device)
    needs_values = spec.monitor is not None
    # The validation set's features, labels and the loss after each update.
    validating = None
    if validation is not None:
        validating = (*tensors(validation, device), torch.empty(epochs, device=device))
    for index in range(epochs):
        rates[index] = schedule.rates()
        logits = model(x)
        loss = model.criterion(logits, y)
        losses[index] = loss.detach()
        if sampler is not None:  # train on the mini-batch; record the whole set's loss
            chosen = torch.from_numpy(sampler.batch(index)).to(device)
            loss = model.criterion(model(x[chosen]), y[chosen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if needs_values:  # only ReduceLROnPlateau reads them: avoid a device sync per step
            accuracy = (logits.argmax(dim=1) == y).float().mean().item()
            schedule.step(index, loss.item(), accuracy)
        else:
            schedule.step(index, 0.0, 0.0)
        if validating is not None:  # after the update and the scheduler step, as the batch does
            valid_x, valid_y, valid_losses = validating
            with torch.no_grad():
                valid_losses[index] = model.criterion(model(valid_x), valid_y)

    final = evaluate(model, x, y, *tensors(test_set, device))
    final["final_lr"] = float(rates[-1, 0])
    return ReferenceResult(
        name=spec.name,
        groups=spec.groups,
        rates=rates,
        losses=losses.cpu().numpy().astype(np.float64),
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        final=final,
        validation_losses=(
            None if validating is None else validating[2].cpu().numpy().astype(np.float64)
        ),
    )
