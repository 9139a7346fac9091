"""Many runs as one computation: stacked LogicNets, one batched optimizer step, rates per replicate.

The batch trains replicates: one seed of one named run each (:class:`Replicate`). A replicate's
weights start exactly as :func:`pipeline.trainer.runtime.initial_model` draws them for its seed, its
data come from that seed, and its learning rates are the very sequence torch's scheduler
produces: schedules that do not watch the loss are precomputed with
:func:`pipeline.schedules.specs.preview` (torch's own classes); ReduceLROnPlateau replicates
keep one
real torch scheduler each, fed their loss every step. Only the arithmetic is batched, so each
replicate equals its ``torch.optim`` + ``lr_scheduler`` twin
(:func:`tests.reference.train_reference`) to float32 rounding. :func:`run_results` then
groups the replicates back into the named runs of params.

Given validation sets, the batch also records each replicate's loss on its workload's validation
set after every update (the curve that "updates until the validation loss reaches a target"
reads), with the same portable arithmetic as training; without them it computes nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config.params import Params
from pipeline.core import portable
from pipeline.core.optim import make_optimizer
from pipeline.problems.data import Dataset
from pipeline.problems.model import LAYER_NAMES, LogicNet, logits, param_groups
from pipeline.schedules.specs import Schedule, ScheduleSpec, trace
from pipeline.trainer import minibatch
from pipeline.trainer.results import RunResult
from pipeline.trainer.runtime import initial_model, tensors

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which the tutorial uses


@dataclass(frozen=True)
class Replicate:
    """One seed of a named run, the unit the batch trains: a schedule, the seed of its weights
    and data, the rate it starts from and the noise of its data."""

    spec: ScheduleSpec
    seed: int
    lr: float  # the rate the schedule starts from (train.lr, or one value of its grid)
    noise: float  # the noise of its train set (data.noise, or one value of its grid)

    @property
    def data_key(self) -> tuple[int, float]:
        return self.seed, self.noise


@dataclass(frozen=True)
class Setup:
    """What a batch trains under: its budget in updates (``train.epochs`` in params: the
    tutorial's word), the hidden layer's width, the optimizer and its momentum (SGD's)."""

    updates: int
    hidden_dim: int
    optimizer: str
    momentum: float

    @classmethod
    def of(cls, params: Params) -> Setup:
        """The train stage's: ``train.epochs`` updates of a ``model.hidden_dim`` LogicNet."""
        train = params.train
        return cls(train.epochs, params.model.hidden_dim, train.optimizer, train.momentum)


@dataclass(frozen=True)
class BatchResult:
    replicates: tuple[Replicate, ...]
    rates: np.ndarray  # (replicates, epochs, 2): the rate of each layer's update i
    losses: np.ndarray  # (replicates, epochs): the whole train set's loss before update i
    state_dicts: tuple[dict[str, torch.Tensor], ...]
    batch_sizes: np.ndarray  # (replicates, epochs): points each update trained on
    # (replicates, evaluations): the validation set's loss after each evaluated update (and its
    # scheduler step); None when train_batch was given no validation sets.
    validation_losses: np.ndarray | None = None
    evaluated: np.ndarray | None = None  # (evaluations,): the 0-based updates evaluated
    # Each replicate's final metrics (:func:`replicate_finals`), where the process that trained
    # it already computed them (a shard); None: run_results computes them.
    finals: tuple[dict[str, float], ...] | None = None


class _Stack:
    """LogicNet weights of every replicate, stacked on a leading axis."""

    def __init__(self, models: Sequence[LogicNet], device: torch.device) -> None:
        def stacked(name: str) -> torch.Tensor:
            tensors = [m.state_dict()[name] for m in models]
            return torch.stack(tensors).to(device).requires_grad_(True)

        self.names = list(models[0].state_dict())  # Liner1.weight, Liner1.bias, Liner2...
        self.tensors = [stacked(name) for name in self.names]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return stacked_logits(self.tensors, x)

    def layer_of(self, index: int) -> int:
        return LAYER_NAMES.index(self.names[index].split(".")[0])

    def state_dicts(self) -> tuple[dict[str, torch.Tensor], ...]:
        """Each replicate's weights as its own LogicNet's state dict, on the CPU."""
        count = len(self.tensors[0])
        return tuple(
            {
                name: t[index].detach().cpu().clone()
                for name, t in zip(self.names, self.tensors, strict=True)
            }
            for index in range(count)
        )


def stacked_logits(weights: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """LogicNet.forward of stacked weights (replicates first); ``x`` per replicate or shared."""
    w1, b1, w2, b2 = weights
    return logits(w1, b1, w2, b2, x)


class _Rates:
    """Each replicate's rate and momentum per layer at each step, from torch's schedulers (or,
    with ``closed_forms``, their vectorised equivalents where one exists: same rates to 1e-12)."""

    def __init__(
        self, replicates: Sequence[Replicate], setup: Setup, closed_forms: bool = False
    ) -> None:
        self.epochs = setup.updates
        self.table = np.empty((len(replicates), setup.updates, 2))
        self.momenta = np.empty((len(replicates), setup.updates, 2))
        self.plateaus: list[tuple[int, Schedule]] = []
        for index, replicate in enumerate(replicates):
            if replicate.spec.monitor is not None:
                # A real optimizer, never stepped on real weights: only its rates are read.
                model = LogicNet(hiddendim=setup.hidden_dim)
                groups = param_groups(model, replicate.spec.per_layer)
                optimizer = make_optimizer(groups, setup.optimizer, replicate.lr, setup.momentum)
                self.plateaus.append((index, Schedule(replicate.spec, optimizer, setup.updates)))
                continue
            # trace() keeps each schedule's trace: the seeds of one schedule share it.
            spec, lr = replicate.spec, replicate.lr
            arguments = (spec, setup.updates, lr, setup.optimizer, setup.momentum)
            found = None
            if closed_forms:  # imported here: the train stage never needs it
                from pipeline.schedules import rate_tables

                found = rate_tables.closed_form(*arguments)
            rates, momenta = found if found is not None else trace(*arguments)
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
    replicates: Sequence[Replicate],
    setup: Setup,
    datasets: Mapping[tuple[int, float], Dataset],
    device: torch.device,
    on_step: Callable[[int], None] = lambda step: None,
    validation: Mapping[float, Dataset] | None = None,
    evaluate_every: int = 1,
    closed_forms: bool = False,
) -> BatchResult:
    """Train every replicate at once; ``datasets[replicate.data_key]`` is its train set.

    ``validation[replicate.noise]``, when given, is its validation set: keyed by noise, like the
    test sets of :func:`run_results`, since a noise level is a workload (one data distribution)
    whose every run (seed, rate, schedule) is measured on the same held-out points. After each
    update and scheduler step, every replicate's loss on the whole of its validation set (also
    for a ``batch_size`` schedule) is computed without gradient and returned as
    ``validation_losses``: after every ``evaluate_every``-th update and after the last (the
    updates listed in ``evaluated``). Without ``validation`` nothing more is computed.
    ``closed_forms`` replaces torch's scheduler loop by :mod:`pipeline.schedules.rate_tables`
    where it can.
    """
    models = [initial_model(setup.hidden_dim, torch.device("cpu"), r.seed) for r in replicates]
    stack = _Stack(models, device)
    pairs = [tensors(datasets[replicate.data_key], device) for replicate in replicates]
    x = torch.stack([features for features, _ in pairs])
    y = torch.stack([labels for _, labels in pairs])
    count, samples = y.shape
    rates = _Rates(replicates, setup, closed_forms)
    optimizer = _BatchedOptimizer(stack, setup.optimizer, device)

    epochs = setup.updates
    batches = _MiniBatches(replicates, epochs, samples, device)
    evaluated, row_of = _evaluated_updates(evaluate_every, epochs)
    validating = (
        None if validation is None else _Validation(replicates, validation, len(evaluated), device)
    )

    losses = torch.empty(count, epochs, dtype=torch.float32, device=device)
    needs_values = bool(rates.plateaus)
    for step in range(epochs):
        logits, full_losses = _update(step, stack, x, y, rates, optimizer, batches)
        losses[:, step] = full_losses
        if needs_values:  # one device sync per step, only when a replicate watches its loss
            accuracy = (logits.argmax(dim=2) == y).float().mean(dim=1)
            rates.advance(step, full_losses.cpu().numpy(), accuracy.cpu().numpy())
        if validating is not None and row_of[step] >= 0:  # after the update and scheduler step
            validating.record(int(row_of[step]), stack)
        on_step(step)

    return BatchResult(
        tuple(replicates),
        rates.table.copy(),
        losses.cpu().numpy().astype(np.float64),
        stack.state_dicts(),
        batches.sizes,
        None if validating is None else validating.losses.cpu().numpy().astype(np.float64),
        None if validating is None else evaluated,
    )


class _Validation:
    """Each replicate's loss on its validation set, the arithmetic of the training loss.

    The replicates of one validation set (one noise level) are evaluated together, the set's
    points broadcast against their stacked weights rather than copied once per replicate.
    """

    def __init__(
        self,
        replicates: Sequence[Replicate],
        sets: Mapping[float, Dataset],
        evaluations: int,
        device: torch.device,
    ) -> None:
        rows: dict[float, list[int]] = {}
        for index, replicate in enumerate(replicates):
            rows.setdefault(replicate.noise, []).append(index)
        missing = sorted(set(rows) - set(sets))
        if missing:
            raise ValueError(f"validation lacks the sets of noise {missing}")
        everyone = len(rows) == 1  # one set for all: no gather of the weights each step
        self.groups = [
            (
                *tensors(sets[noise], device),
                None if everyone else torch.tensor(indices, dtype=torch.long, device=device),
            )
            for noise, indices in rows.items()
        ]
        self.losses = torch.empty(len(replicates), evaluations, dtype=torch.float32, device=device)

    @torch.no_grad()
    def record(self, row: int, stack: _Stack) -> None:
        for x, y, rows in self.groups:
            weights = stack.tensors if rows is None else [t[rows] for t in stack.tensors]
            logits = stacked_logits(weights, x)  # (replicates, samples, 2): x broadcasts
            count, samples = logits.shape[:2]
            per_sample = F.cross_entropy(
                logits.reshape(-1, 2), y.expand(count, samples).reshape(-1), reduction="none"
            )
            means = per_sample.view(count, samples).mean(dim=1)
            if rows is None:
                self.losses[:, row] = means
            else:
                self.losses[rows, row] = means


class _MiniBatches:
    """The points each replicate's update trains on: all, or its ``batch_size`` schedule's."""

    def __init__(
        self, replicates: Sequence[Replicate], epochs: int, samples: int, device: torch.device
    ):
        self.rows = [index for index, r in enumerate(replicates) if r.spec.mini_batch]
        self.samplers = [
            minibatch.Sampler(replicates[index].spec, epochs, samples, replicates[index].seed)
            for index in self.rows
        ]
        self.sizes = np.full((len(replicates), epochs), samples, dtype=np.int64)
        for row, sampler in zip(self.rows, self.samplers, strict=True):
            self.sizes[row] = sampler.sizes
        self.index = torch.tensor(self.rows, dtype=torch.long, device=device)
        self.device = device

    def objective(
        self, step: int, per_sample: torch.Tensor, full_batch: torch.Tensor
    ) -> torch.Tensor:
        """Each replicate's loss to minimise: the whole set's mean, or the mean over its batch."""
        if not self.rows:
            return full_batch
        # Gathered in the batch's own order and averaged, as the twin's criterion on x[batch]
        # sums: rows of one size at a time, since a tensor is rectangular.
        chosen = [sampler.batch(step) for sampler in self.samplers]
        objective = full_batch
        for size in sorted({len(batch) for batch in chosen}):
            positions = [p for p, batch in enumerate(chosen) if len(batch) == size]
            rows = self.index[positions]
            picked = torch.from_numpy(np.stack([chosen[p] for p in positions])).to(self.device)
            means = per_sample[rows].gather(1, picked).mean(dim=1)
            objective = objective.index_copy(0, rows, means)
        return objective


class _BatchedOptimizer:
    """torch.optim.Adam (or SGD) arithmetic, with a rate per replicate and layer."""

    def __init__(self, stack: _Stack, optimizer: str, device: torch.device) -> None:
        self.stack, self.kind, self.device = stack, optimizer, device
        self.count = 0
        self.first = [torch.zeros_like(t) for t in stack.tensors]
        self.second = [torch.zeros_like(t) for t in stack.tensors]
        self.buffers: list[torch.Tensor | None] = [None] * len(stack.tensors)

    def _per_replicate(self, values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
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
            assert grad is not None, "step() follows backward(): every weight has a gradient"
            if self.kind == "sgd":
                if momentum.any():
                    buffer = self.buffers[index]
                    if buffer is None:
                        buffer = grad.clone()
                    else:
                        buffer.mul_(self._per_replicate(momentum, grad)).add_(grad)
                    self.buffers[index] = grad = buffer
                tensor.sub_(grad * self._per_replicate(rate, tensor))
                continue
            # Adam as torch computes it, beta1 per replicate (OneCycleLR and CyclicLR cycle it).
            first, second = self.first[index], self.second[index]
            first.lerp_(grad, self._per_replicate(1 - momentum, grad))
            second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (portable.sqrt(second) / correction2_sqrt).add_(ADAM_EPS)
            step_size = rate / (1 - momentum**self.count)
            tensor.sub_(first / denom * self._per_replicate(step_size, tensor))


def _evaluated_updates(evaluate_every: int, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """The updates after which validation is measured (every ``evaluate_every``-th and the
    last), and for each update its row in the validation table (-1: none)."""
    if type(evaluate_every) is not int or evaluate_every < 1:
        raise ValueError(f"evaluate_every must be a positive integer, got {evaluate_every!r}")
    evaluated = np.unique(np.r_[np.arange(evaluate_every - 1, epochs, evaluate_every), epochs - 1])
    row_of = np.full(epochs, -1, dtype=np.int64)
    row_of[evaluated] = np.arange(len(evaluated))
    return evaluated, row_of


def _update(
    step: int,
    stack: _Stack,
    x: torch.Tensor,
    y: torch.Tensor,
    rates: _Rates,
    optimizer: _BatchedOptimizer,
    batches: _MiniBatches,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of every replicate; returns the logits it started from and each replicate's
    loss on its whole train set, before the update (detached)."""
    count, samples = y.shape
    lr, momenta = rates.at(step)
    logits = stack.logits(x)
    per_sample = F.cross_entropy(logits.reshape(-1, 2), y.reshape(-1), reduction="none")
    per_sample = per_sample.view(count, samples)
    full_losses = per_sample.mean(dim=1)
    for tensor in stack.tensors:
        tensor.grad = None
    objective = batches.objective(step, per_sample, full_losses)
    objective.sum().backward()  # replicates share no weights: each gets its own gradient
    optimizer.step(lr, momenta)
    return logits, full_losses.detach()


def run_results(
    batch: BatchResult,
    params: Params,
    train_sets: Mapping[tuple[int, float], Dataset],
    test_sets: Mapping[float, Dataset],
) -> list[RunResult]:
    """Group a batch's replicates into the named runs of ``params.runs``, with final metrics.

    ``test_sets[noise]`` is the test set of a noise level.
    """
    results = []
    for run in params.runs:
        spec, point = run.spec, run.point
        indices = [
            i
            for i, r in enumerate(batch.replicates)
            if (r.spec.name, r.lr, r.noise) == (spec.name, point.lr, point.noise)
        ]
        finals: dict[str, list[float]] = {}
        for index in indices:
            if batch.finals is not None:
                values = batch.finals[index]
            else:
                values = replicate_finals(
                    batch, index, params.model.hidden_dim, train_sets, test_sets
                )
            for key, value in values.items():
                finals.setdefault(key, []).append(value)
        groups = spec.groups
        results.append(
            RunResult(
                name=run.name,
                schedule=spec.name,
                lr=point.lr,
                noise=point.noise,
                groups=groups,
                seeds=tuple(batch.replicates[i].seed for i in indices),
                rates=batch.rates[indices][:, :, : len(groups)],
                losses=batch.losses[indices],
                state_dicts=tuple(batch.state_dicts[i] for i in indices),
                finals={key: np.array(values) for key, values in finals.items()},
                batch_sizes=batch.batch_sizes[indices[0]] if spec.mini_batch else None,
            )
        )
    return results


def replicate_finals(
    batch: BatchResult,
    index: int,
    hidden_dim: int,
    train_sets: Mapping[tuple[int, float], Dataset],
    test_sets: Mapping[float, Dataset],
) -> dict[str, float]:
    """One replicate's final loss and accuracies on its train and test sets, and last rate."""
    from pipeline.trainer.runtime import evaluate

    cpu = torch.device("cpu")
    model = LogicNet(hiddendim=hidden_dim)
    model.load_state_dict(batch.state_dicts[index])
    replicate = batch.replicates[index]
    values = evaluate(
        model, *tensors(train_sets[replicate.data_key], cpu),
        *tensors(test_sets[replicate.noise], cpu),
    )  # fmt: skip
    values["final_lr"] = float(batch.rates[index, -1, 0])
    return values
