"""Many runs as one computation, by either engine, and the runs of params from it.

:func:`train_batch` trains a batch of replicates (:mod:`pipeline.trainer.batch`): on the CPU by
the compiled kernels (:mod:`pipeline.trainer.fused`), elsewhere by batched torch operations
(here: stacked weights, autograd, one batched optimizer step). A replicate's weights start
exactly as :func:`pipeline.trainer.runtime.initial_model` draws them for its seed, and its
data come from that seed; only the arithmetic is batched, so each replicate equals its
``torch.optim`` + ``lr_scheduler`` twin (:func:`tests.reference.train_reference`) to float32
rounding. :func:`run_results` then groups the replicates back into the named runs of params.

Given validation sets, the batch also records each replicate's loss on its workload's validation
set after every update (the curve that "updates until the validation loss reaches a target"
reads), with the same portable arithmetic as training; without them it computes nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config.params import Params
from pipeline.core import portable
from pipeline.problems.architecture import Architecture
from pipeline.problems.data import Dataset
from pipeline.problems.model import FamilyNet, logits
from pipeline.trainer import minibatch
from pipeline.trainer.batch import (
    ADAM_BETAS,
    ADAM_EPS,
    BatchResult,
    Rates,
    Replicate,
    Setup,
    evaluated_updates,
    validation_rows,
)
from pipeline.trainer.results import RunResult
from pipeline.trainer.runtime import initial_model, tensors

ENGINES = ("auto", "kernels", "torch")


class _Stack:
    """The weights of every replicate, stacked on a leading axis."""

    def __init__(self, models: Sequence[FamilyNet], device: torch.device) -> None:
        def stacked(name: str) -> torch.Tensor:
            tensors = [m.state_dict()[name] for m in models]
            return torch.stack(tensors).to(device).requires_grad_(True)

        self.architecture = models[0].architecture
        self.names = self.architecture.parameter_names  # Liner1.weight, Liner1.bias, ...
        self.tensors = [stacked(name) for name in self.names]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return logits(self.architecture, self.tensors, x)

    def layer_of(self, index: int) -> int:
        return index // 2  # each layer's weight, then its bias

    def state_dicts(self) -> tuple[dict[str, torch.Tensor], ...]:
        """Each replicate's weights as its own module's state dict, on the CPU."""
        count = len(self.tensors[0])
        return tuple(
            {
                name: t[index].detach().cpu().clone()
                for name, t in zip(self.names, self.tensors, strict=True)
            }
            for index in range(count)
        )


def train_batch(
    replicates: Sequence[Replicate],
    setup: Setup,
    datasets: Mapping[tuple[int, float], Dataset],
    device: torch.device,
    on_step: Callable[[int], None] = lambda step: None,
    validation: Mapping[float, Dataset] | None = None,
    evaluate_every: int = 1,
    closed_forms: bool = False,
    engine: str = "auto",
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

    ``engine``: ``kernels`` (:mod:`pipeline.trainer.fused`, the CPU only), ``torch`` (batched
    torch operations, on any device) or ``auto``: the kernels on the CPU, torch elsewhere.
    Both compute the same arithmetic, to float32 rounding; the tests hold both to the torch
    reference, so the GPU's path is tested on machines without one.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}; allowed: {', '.join(ENGINES)}")
    if engine == "kernels" and device.type != "cpu":
        raise ValueError(f"the kernels engine runs on the CPU, not on {device.type}")
    if engine == "kernels" or (engine == "auto" and device.type == "cpu"):
        # Imported here: a run on CUDA never needs numba.
        from pipeline.trainer.fused import train_fused

        return train_fused(
            replicates, setup, datasets, on_step, validation, evaluate_every, closed_forms
        )
    return _train_torch(
        replicates, setup, datasets, device, on_step, validation, evaluate_every, closed_forms
    )


def _train_torch(
    replicates: Sequence[Replicate],
    setup: Setup,
    datasets: Mapping[tuple[int, float], Dataset],
    device: torch.device,
    on_step: Callable[[int], None],
    validation: Mapping[float, Dataset] | None,
    evaluate_every: int,
    closed_forms: bool,
) -> BatchResult:
    """The torch engine: stacked weights, autograd, and a batched optimizer step."""
    cpu = torch.device("cpu")
    models = [initial_model(setup.architecture, cpu, r.seed) for r in replicates]
    stack = _Stack(models, device)
    pairs = [tensors(datasets[replicate.data_key], device) for replicate in replicates]
    x = torch.stack([features for features, _ in pairs])
    y = torch.stack([labels for _, labels in pairs])
    count, samples = y.shape
    rates = Rates(replicates, setup, closed_forms)
    optimizer = _BatchedOptimizer(stack, setup.optimizer, device)

    epochs = setup.updates
    batches = _MiniBatches(replicates, epochs, samples, device)
    evaluated, row_of = evaluated_updates(evaluate_every, epochs)
    validating = (
        None if validation is None else _Validation(replicates, validation, len(evaluated), device)
    )

    losses = torch.empty(count, epochs, dtype=torch.float32, device=device)
    needs_values = rates.bank is not None
    for step in range(epochs):
        found, full_losses = _update(step, stack, x, y, rates, optimizer, batches)
        losses[:, step] = full_losses
        if needs_values:  # one device sync per step, only when a replicate watches its loss
            accuracy = (found.argmax(dim=2) == y).float().mean(dim=1)
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
        rows = validation_rows(replicates, sets)
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
            found = logits(stack.architecture, weights, x)  # (replicates, samples, classes)
            count, samples, classes = found.shape
            per_sample = F.cross_entropy(
                found.reshape(-1, classes), y.expand(count, samples).reshape(-1), reduction="none"
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


def _update(
    step: int,
    stack: _Stack,
    x: torch.Tensor,
    y: torch.Tensor,
    rates: Rates,
    optimizer: _BatchedOptimizer,
    batches: _MiniBatches,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of every replicate; returns the logits it started from and each replicate's
    loss on its whole train set, before the update (detached)."""
    count, samples = y.shape
    lr, momenta = rates.at(step)
    found = stack.logits(x)
    per_sample = F.cross_entropy(
        found.reshape(-1, found.shape[-1]), y.reshape(-1), reduction="none"
    )
    per_sample = per_sample.view(count, samples)
    full_losses = per_sample.mean(dim=1)
    for tensor in stack.tensors:
        tensor.grad = None
    objective = batches.objective(step, per_sample, full_losses)
    objective.sum().backward()  # replicates share no weights: each gets its own gradient
    optimizer.step(lr, momenta)
    return found, full_losses.detach()


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
                values = replicate_finals(batch, index, params.architecture, train_sets, test_sets)
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
    architecture: Architecture,
    train_sets: Mapping[tuple[int, float], Dataset],
    test_sets: Mapping[float, Dataset],
) -> dict[str, float]:
    """One replicate's final loss and accuracies on its train and test sets, and last rate."""
    from pipeline.trainer.runtime import evaluate

    cpu = torch.device("cpu")
    model = FamilyNet(architecture)
    model.load_state_dict(batch.state_dicts[index])
    replicate = batch.replicates[index]
    values = evaluate(
        model, *tensors(train_sets[replicate.data_key], cpu),
        *tensors(test_sets[replicate.noise], cpu),
    )  # fmt: skip
    values["final_lr"] = float(batch.rates[index, -1, 0])
    return values
