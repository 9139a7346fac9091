"""Many runs as one computation: stacked LogicNets, one batched optimizer step, per-run rates.

Run ``r`` is a schedule spec and a seed. Its weights start exactly as
:func:`pipeline.training.initial_model` draws them for that seed, its data come from that seed,
and its learning rates are the very sequence torch's scheduler produces: schedules that do not
watch the loss are precomputed with :func:`pipeline.schedules.preview` (torch's own classes);
ReduceLROnPlateau runs keep one real torch scheduler each, fed the run's loss every step. Only
the arithmetic is batched, so each run equals its ``torch.optim`` + ``lr_scheduler`` twin
(:func:`pipeline.training.train_one`) to float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data import Dataset
from pipeline.model import LAYER_NAMES, LogicNet, param_groups
from pipeline.optim import make_optimizer
from pipeline.params import Params
from pipeline.schedules import Schedule, ScheduleSpec, trace
from pipeline.training import initial_model, tensors

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which the tutorial uses


@dataclass(frozen=True)
class Arm:
    """One run of a batch: a schedule, the seed of its weights and of its data."""

    spec: ScheduleSpec
    seed: int


@dataclass(frozen=True)
class BatchResult:
    arms: tuple[Arm, ...]
    rates: np.ndarray  # (runs, epochs, 2): the rate of each layer's update i
    losses: np.ndarray  # (runs, epochs): the loss update i minimised
    state_dicts: tuple[dict[str, torch.Tensor], ...]


class _Stack:
    """LogicNet weights of every run, stacked on a leading run axis."""

    def __init__(self, models: Sequence[LogicNet], device: torch.device) -> None:
        def stacked(name: str) -> torch.Tensor:
            tensors = [m.state_dict()[name] for m in models]
            return torch.stack(tensors).to(device).requires_grad_(True)

        self.names = list(models[0].state_dict())  # Liner1.weight, Liner1.bias, Liner2...
        self.tensors = [stacked(name) for name in self.names]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = self.tensors
        hidden = torch.tanh(torch.baddbmm(b1.unsqueeze(1), x, w1.transpose(1, 2)))
        return torch.baddbmm(b2.unsqueeze(1), hidden, w2.transpose(1, 2))

    def layer_of(self, index: int) -> int:
        return LAYER_NAMES.index(self.names[index].split(".")[0])


class _Rates:
    """Each run's rate and momentum per layer at each step, from torch's schedulers."""

    def __init__(self, arms: Sequence[Arm], params: Params) -> None:
        train = params.train
        self.epochs = train.epochs
        self.table = np.empty((len(arms), train.epochs, 2))
        self.momenta = np.empty((len(arms), train.epochs, 2))
        self.plateaus: list[tuple[int, Schedule]] = []
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for index, arm in enumerate(arms):
            if arm.spec.monitor is not None:
                # A real optimizer, never stepped on real weights: only its rates are read.
                model = LogicNet(hiddendim=params.model.hidden_dim)
                groups = param_groups(model, arm.spec.per_layer)
                optimizer = make_optimizer(groups, train.optimizer, train.lr, train.momentum)
                self.plateaus.append((index, Schedule(arm.spec, optimizer, train.epochs)))
                continue
            if arm.spec.name not in cache:
                cache[arm.spec.name] = trace(
                    arm.spec, train.epochs, train.lr, train.optimizer, train.momentum
                )
            rates, momenta = cache[arm.spec.name]
            self.table[index] = np.repeat(rates, 2 // rates.shape[1], axis=1)
            self.momenta[index] = np.repeat(momenta, 2 // momenta.shape[1], axis=1)

    def at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        for index, schedule in self.plateaus:
            rates, momenta = schedule.rates(), schedule.momenta()
            self.table[index, step] = rates if len(rates) == 2 else rates * 2
            self.momenta[index, step] = momenta if len(momenta) == 2 else momenta * 2
        return self.table[:, step], self.momenta[:, step]

    def advance(self, step: int, losses: np.ndarray, accuracies: np.ndarray) -> None:
        for index, schedule in self.plateaus:
            schedule.step(step, float(losses[index]), float(accuracies[index]))


def train_batch(
    arms: Sequence[Arm],
    params: Params,
    datasets: dict[int, Dataset],
    device: torch.device,
    on_step: Callable[[int], None] = lambda step: None,
) -> BatchResult:
    """Train every arm at once, full batch; ``datasets[seed]`` is the train set of that seed."""
    models = [initial_model(params, torch.device("cpu"), seed=arm.seed) for arm in arms]
    stack = _Stack(models, device)
    pairs = [tensors(datasets[arm.seed], device) for arm in arms]
    x = torch.stack([features for features, _ in pairs])
    y = torch.stack([labels for _, labels in pairs])
    runs, samples = y.shape
    rates = _Rates(arms, params)
    optimizer = _BatchedOptimizer(stack, params, device)

    losses = torch.empty(runs, params.train.epochs, dtype=torch.float32, device=device)
    needs_values = bool(rates.plateaus)
    for step in range(params.train.epochs):
        lr, momenta = rates.at(step)
        logits = stack.logits(x)
        per_sample = F.cross_entropy(logits.reshape(-1, 2), y.reshape(-1), reduction="none")
        run_losses = per_sample.view(runs, samples).mean(dim=1)
        losses[:, step] = run_losses.detach()
        for tensor in stack.tensors:
            tensor.grad = None
        run_losses.sum().backward()  # runs share no weights: each gets its own gradient
        optimizer.step(lr, momenta)
        if needs_values:  # one device sync per step, only when a run watches its loss
            accuracy = (logits.argmax(dim=2) == y).float().mean(dim=1)
            rates.advance(step, run_losses.detach().cpu().numpy(), accuracy.cpu().numpy())
        on_step(step)

    state_dicts = tuple(
        {
            name: t[index].detach().cpu().clone()
            for name, t in zip(stack.names, stack.tensors, strict=True)
        }
        for index in range(runs)
    )
    return BatchResult(
        tuple(arms), rates.table.copy(), losses.cpu().numpy().astype(np.float64), state_dicts
    )


class _BatchedOptimizer:
    """torch.optim.Adam (or SGD) arithmetic, with a rate per run and layer."""

    def __init__(self, stack: _Stack, params: Params, device: torch.device) -> None:
        self.stack, self.kind, self.device = stack, params.train.optimizer, device
        self.count = 0
        self.first = [torch.zeros_like(t) for t in stack.tensors]
        self.second = [torch.zeros_like(t) for t in stack.tensors]
        self.buffers: list[torch.Tensor | None] = [None] * len(stack.tensors)

    def _per_run(self, values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (like.dim() - 1)
        return torch.as_tensor(values, dtype=like.dtype, device=self.device).view(shape)

    @torch.no_grad()
    def step(self, lr: np.ndarray, momenta: np.ndarray) -> None:
        self.count += 1
        beta2 = ADAM_BETAS[1]
        correction2_sqrt = math.sqrt(1 - beta2**self.count)
        for index, tensor in enumerate(self.stack.tensors):
            layer = self.stack.layer_of(index)
            rate, momentum, grad = lr[:, layer], momenta[:, layer], tensor.grad
            if self.kind == "sgd":
                if momentum.any():
                    buffer = self.buffers[index]
                    if buffer is None:
                        buffer = grad.clone()
                    else:
                        buffer.mul_(self._per_run(momentum, grad)).add_(grad)
                    self.buffers[index] = grad = buffer
                tensor.sub_(grad * self._per_run(rate, tensor))
                continue
            # Adam as torch computes it, with beta1 per run (OneCycleLR and CyclicLR cycle it).
            first, second = self.first[index], self.second[index]
            first.lerp_(grad, self._per_run(1 - momentum, grad))
            second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (second.sqrt() / correction2_sqrt).add_(ADAM_EPS)
            step_size = rate / (1 - momentum**self.count)
            tensor.sub_(first / denom * self._per_run(step_size, tensor))


@dataclass(frozen=True)
class ScheduleResult:
    """Every seed of one schedule; ``final`` holds means (and ``*_ci95`` with several seeds)."""

    name: str
    groups: tuple[str, ...]
    seeds: tuple[int, ...]
    rates: np.ndarray  # (seeds, epochs, groups)
    losses: np.ndarray  # (seeds, epochs)
    state_dicts: tuple[dict[str, torch.Tensor], ...]
    finals: dict[str, np.ndarray]  # metric -> (seeds,)

    @property
    def final(self) -> dict[str, float]:
        from pipeline.stats import mean_interval

        summary: dict[str, float] = {}
        for key, values in self.finals.items():
            mean, half_width = mean_interval(values)
            summary[key] = float(mean)
            if len(self.seeds) > 1:
                summary[f"{key}_ci95"] = float(half_width)
        return summary


def by_schedule(
    batch: BatchResult, params: Params, train_sets: dict[int, Dataset], test_set: Dataset
) -> list[ScheduleResult]:
    """Group a batch's runs by schedule, in params order, with each run's final metrics."""
    from pipeline.training import evaluate

    results = []
    for spec in params.schedules:
        indices = [i for i, arm in enumerate(batch.arms) if arm.spec.name == spec.name]
        finals: dict[str, list[float]] = {}
        for index in indices:
            model = LogicNet(hiddendim=params.model.hidden_dim)
            model.load_state_dict(batch.state_dicts[index])
            seed = batch.arms[index].seed
            values = evaluate(
                model, *tensors(train_sets[seed], torch.device("cpu")),
                *tensors(test_set, torch.device("cpu")),
            )  # fmt: skip
            values["final_lr"] = float(batch.rates[index, -1, 0])
            for key, value in values.items():
                finals.setdefault(key, []).append(value)
        groups = spec.groups
        results.append(
            ScheduleResult(
                name=spec.name,
                groups=groups,
                seeds=tuple(batch.arms[i].seed for i in indices),
                rates=batch.rates[indices][:, :, : len(groups)],
                losses=batch.losses[indices],
                state_dicts=tuple(batch.state_dicts[i] for i in indices),
                finals={key: np.array(values) for key, values in finals.items()},
            )
        )
    return results
