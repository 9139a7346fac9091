"""Train LogicNet under one schedule, recording the rate and loss of every update."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from pipeline import minibatch
from pipeline.data import Dataset
from pipeline.model import LogicNet, param_groups
from pipeline.optim import make_optimizer
from pipeline.params import Params
from pipeline.schedules import Schedule, ScheduleSpec


@dataclass(frozen=True)
class RunResult:
    """What one run produced; ``rates[i]`` and ``losses[i]`` belong to update ``i``."""

    name: str
    groups: tuple[str, ...]
    rates: np.ndarray  # (epochs, groups): the rate update i used
    losses: np.ndarray  # (epochs,): the whole train set's loss before update i
    state_dict: dict[str, torch.Tensor]
    final: dict[str, float]


def select_device(requested: str) -> torch.device:
    """``cpu``, ``cuda`` (an error without a GPU) or ``auto`` (CUDA when there is one)."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device; use cpu or auto")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def make_deterministic() -> None:
    """Same inputs, same bits: deterministic kernels and one CPU thread."""
    # cuBLAS needs a fixed workspace to be deterministic; it must be set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    # A 2-3-2 network is far too small to gain from threads, and one thread fixes the order of
    # every floating-point reduction whatever the machine's core count.
    torch.set_num_threads(1)


def tensors(dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's conversion: float32 features, int64 labels."""
    features = torch.from_numpy(dataset.features).type(torch.FloatTensor).to(device)
    labels = torch.from_numpy(dataset.labels).type(torch.LongTensor).to(device)
    return features, labels


def initial_model(params: Params, device: torch.device, seed: int | None = None) -> LogicNet:
    """Every run of a seed starts from the same weights, drawn from it (``seed`` by default)."""
    torch.manual_seed(params.seed if seed is None else seed)
    return LogicNet(inputdim=2, hiddendim=params.model.hidden_dim, outputdim=2).to(device)


def train_one(
    spec: ScheduleSpec,
    params: Params,
    train_set: Dataset,
    test_set: Dataset,
    device: torch.device,
) -> RunResult:
    epochs = params.train.epochs
    model = initial_model(params, device)
    optimizer = make_optimizer(
        param_groups(model, spec.per_layer),
        params.train.optimizer,
        params.train.lr,
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

    final = evaluate(model, x, y, *tensors(test_set, device))
    final["final_lr"] = float(rates[-1, 0])
    return RunResult(
        name=spec.name,
        groups=spec.groups,
        rates=rates,
        losses=losses.cpu().numpy().astype(np.float64),
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        final=final,
    )


@torch.no_grad()
def evaluate(
    model: LogicNet,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
) -> dict[str, float]:
    """Loss and accuracy of the trained model on both sets."""
    return {
        "final_loss": model.getloss(train_x, train_y).item(),
        "train_accuracy": _accuracy(model, train_x, train_y),
        "test_loss": model.getloss(test_x, test_y).item(),
        "test_accuracy": _accuracy(model, test_x, test_y),
    }


def _accuracy(model: LogicNet, x: torch.Tensor, y: torch.Tensor) -> float:
    # Counted, then divided in float64: 0.948, not float32's 0.9480000138282776.
    return (model.predict(x) == y).sum().item() / len(y)
