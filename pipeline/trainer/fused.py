"""The CPU engine: every replicate of a batch trained by compiled kernels, one update at a time.

The same replicates, rates, mini-batches and validation as the torch path of
:func:`pipeline.trainer.batched.train_batch` (which calls this on the CPU), the arithmetic in
:mod:`pipeline.kernels`: the runs on the arrays' last axis, one run per SIMD lane, and no
library call whose result depends on the CPU. Per update it makes a dozen kernel calls, whatever
the number of runs; torch's autograd made dozens of small operations per update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from pipeline.kernels import batches, dense, loss, optimizers
from pipeline.problems.architecture import Architecture
from pipeline.problems.data import Dataset
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
from pipeline.trainer.runtime import initial_model

F32 = np.float32
NO_WEIGHTS = np.zeros((0, 0), dtype=F32)


class _Layers:
    """Every replicate's weights in one ``(parameters, R)`` buffer, seen layer by layer as
    weights ``(outputs, inputs, R)`` (a convolution's inputs: its kernel's taps) and biases
    ``(outputs, R)``: the optimizer updates the whole buffer in one call, each row at its
    layer's rate."""

    def __init__(self, architecture: Architecture, runs: int) -> None:
        self.architecture = architecture
        shapes = [
            shape
            for layer in architecture.layers
            for shape in ((layer.fan_out, layer.fan_in), (layer.fan_out,))
        ]
        sizes = [math.prod(shape) for shape in shapes]
        self.flat = np.zeros((sum(sizes), runs), dtype=F32)
        ends = np.cumsum(sizes)
        self.views = [
            self.flat[end - size : end].reshape(*shape, runs)
            for shape, size, end in zip(shapes, sizes, ends, strict=True)
        ]
        self.weights, self.biases = self.views[0::2], self.views[1::2]
        # the layer (param group) of each row: the architecture's order, weight then bias
        self.layer_of = np.repeat(np.arange(len(sizes)) // 2, sizes).astype(np.int64)

    @classmethod
    def of(
        cls, architecture: Architecture, state_dicts: Sequence[Mapping[str, torch.Tensor]]
    ) -> _Layers:
        layers = cls(architecture, len(state_dicts))
        for view, name in zip(layers.views, architecture.parameter_names, strict=True):
            stacked = np.stack([sd[name].numpy() for sd in state_dicts], axis=-1)
            view[...] = stacked.reshape(view.shape)
        return layers

    def like(self) -> _Layers:
        """Zeros of the same shapes (gradients, optimizer state)."""
        return _Layers(self.architecture, self.flat.shape[1])

    def subset(self, rows: np.ndarray) -> _Layers:
        chosen = _Layers(self.architecture, len(rows))
        chosen.flat[...] = self.flat[:, rows]
        return chosen

    def state_dicts(self) -> tuple[dict[str, torch.Tensor], ...]:
        """Each replicate's weights, shaped as its torch module's state dict."""
        names = self.architecture.parameter_names
        shapes = [
            shape
            for layer in self.architecture.layers
            for shape in (layer.weight_shape, (layer.fan_out,))
        ]
        return tuple(
            {
                name: torch.from_numpy(np.ascontiguousarray(view[..., index]).reshape(shape))
                for name, view, shape in zip(names, self.views, shapes, strict=True)
            }
            for index in range(self.flat.shape[1])
        )


def _runs_last(dataset_arrays: Sequence[np.ndarray], dtype) -> np.ndarray:
    """Per-replicate arrays stacked on a last axis, or one ``(..., 1)`` copy when all are the
    same object (one data set shared by every replicate)."""
    first = dataset_arrays[0]
    if all(a is first for a in dataset_arrays):
        return np.ascontiguousarray(first[..., None], dtype=dtype)
    return np.ascontiguousarray(np.stack(dataset_arrays, axis=-1), dtype=dtype)


class _Pass:
    """The activations of one forward pass over a set of samples, and their gradients.

    A convolution is a dense layer over patches: its input, the features gathered once into
    ``(samples * positions, taps, R)``, and its output seen as ``(samples * positions,
    channels, R)``, which is the next layer's ``(samples, positions * channels, R)``.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, layers: _Layers) -> None:
        architecture = layers.architecture
        self.labels = labels
        samples, runs = features.shape[0], layers.flat.shape[1]
        self.activation_codes = [dense.ACTIVATIONS[a.activation] for a in architecture.layers]
        widths = [layer.fan_out for layer in architecture.layers]
        conv = architecture.conv
        if conv is not None:
            patches = features[:, conv.patches()]  # (samples, positions, taps, R or 1)
            self.inputs = np.ascontiguousarray(patches.reshape(-1, *patches.shape[2:]))
            widths[0] = conv.positions * conv.channels
        else:
            self.inputs = features
        self.activations = [np.empty((samples, width, runs), F32) for width in widths]
        self.gradients = [np.empty_like(a) for a in self.activations]
        # What each layer's kernels see: a convolution's rows are (sample, position) pairs.
        self.rows = list(self.activations)
        self.grad_rows = list(self.gradients)
        if conv is not None:
            shape = (samples * conv.positions, conv.channels, runs)
            self.rows[0] = self.activations[0].reshape(shape)
            self.grad_rows[0] = self.gradients[0].reshape(shape)
        self.losses = np.empty(runs, F32)
        self.correct = np.empty(runs, np.int64)

    def forward(self, layers: _Layers, weights: np.ndarray) -> None:
        """Logits, each replicate's mean loss and correct count; with ``weights``, the
        gradient of the weighted loss with respect to the logits."""
        previous = self.inputs
        for index, (weight, bias) in enumerate(zip(layers.weights, layers.biases, strict=True)):
            dense.forward(previous, weight, bias, self.rows[index], self.activation_codes[index])
            previous = self.activations[index]
        loss.cross_entropy(
            previous, self.labels, weights, self.losses, self.correct, self.gradients[-1]
        )

    def backward(self, layers: _Layers, grad_weights: _Layers) -> None:
        """Every layer's weight and bias gradients, after :meth:`forward` with weights."""
        for index in range(len(layers.weights) - 1, -1, -1):
            below = self.inputs if index == 0 else self.activations[index - 1]
            dense.backward(
                self.grad_rows[index], below, layers.weights[index],
                grad_weights.weights[index], grad_weights.biases[index],
            )  # fmt: skip
            if index > 0:
                dense.backward_input(
                    self.gradients[index], layers.weights[index], below,
                    self.activation_codes[index - 1], self.gradients[index - 1],
                )  # fmt: skip


class _Optimizer:
    """Adam or SGD over every replicate's weights, a rate and momentum per replicate and layer."""

    def __init__(self, layers: _Layers, kind: str) -> None:
        self.kind, self.count = kind, 0
        self.first, self.second = np.zeros_like(layers.flat), np.zeros_like(layers.flat)

    def step(self, layers: _Layers, grads: _Layers, lr: np.ndarray, momenta: np.ndarray) -> None:
        """``lr`` and ``momenta`` ``(R, layers)`` float64, as the schedules give them."""
        self.count += 1
        if self.kind == "sgd":
            optimizers.sgd(
                layers.flat, grads.flat, self.first, layers.layer_of,
                np.ascontiguousarray(momenta.T, dtype=F32), np.ascontiguousarray(lr.T, dtype=F32),
                self.count == 1,
            )  # fmt: skip
            return
        beta2 = ADAM_BETAS[1]
        optimizers.adam(
            layers.flat, grads.flat, self.first, self.second, layers.layer_of,
            np.ascontiguousarray((1 - momenta).T, dtype=F32),
            np.ascontiguousarray((lr / (1 - momenta**self.count)).T, dtype=F32),
            F32(beta2), F32(1 - beta2), F32(math.sqrt(1 - beta2**self.count)), F32(ADAM_EPS),
        )  # fmt: skip


class _BatchWeights:
    """Each sample's weight in each replicate's objective: ``1 / batch size`` where the
    replicate's update trains on it, else 0 (the whole set: ``1 / samples`` for every one)."""

    def __init__(self, replicates: Sequence[Replicate], epochs: int, samples: int) -> None:
        self.rows = np.array(
            [index for index, r in enumerate(replicates) if r.spec.mini_batch], np.int64
        )
        self.sizes = np.full((len(replicates), epochs), samples, dtype=np.int64)
        self.weights = np.full((samples, len(replicates)), F32(1) / F32(samples), dtype=F32)
        plans = []
        for row in self.rows:
            replicate = replicates[row]
            sampler = minibatch.Sampler(replicate.spec, epochs, samples, replicate.seed)
            self.sizes[row] = sampler.sizes
            plans.append(sampler.plan())
        if plans:
            self.passes = np.concatenate([passes for passes, _, _ in plans])
            self.first_pass = np.cumsum([0] + [len(p) for p, _, _ in plans[:-1]]).astype(np.int64)
            self.pass_of = np.stack([pass_of for _, pass_of, _ in plans])
            self.start = np.stack([start for _, _, start in plans])
            self.batch_sizes = np.ascontiguousarray(self.sizes[self.rows])

    def at(self, step: int) -> np.ndarray:
        if len(self.rows):
            batches.weights_at(
                step, self.weights, self.rows, self.passes, self.first_pass,
                self.pass_of, self.start, self.batch_sizes,
            )  # fmt: skip
        return self.weights


def train_fused(
    replicates: Sequence[Replicate],
    setup: Setup,
    datasets: Mapping[tuple[int, float], Dataset],
    on_step: Callable[[int], None] = lambda step: None,
    validation: Mapping[float, Dataset] | None = None,
    evaluate_every: int = 1,
    closed_forms: bool = False,
) -> BatchResult:
    """:func:`pipeline.trainer.batched.train_batch` on the CPU, by :mod:`pipeline.kernels`."""
    cpu = torch.device("cpu")
    initial = {  # a seed's weights, drawn once for all its replicates
        seed: initial_model(setup.architecture, cpu, seed).state_dict()
        for seed in dict.fromkeys(r.seed for r in replicates)
    }
    layers = _Layers.of(setup.architecture, [initial[r.seed] for r in replicates])
    grads = layers.like()
    sets = [datasets[r.data_key] for r in replicates]
    train = _Pass(
        _runs_last([s.features for s in sets], F32),
        _runs_last([s.labels for s in sets], np.int64),
        layers,
    )
    epochs, samples = setup.updates, train.labels.shape[0]
    rates = Rates(replicates, setup, closed_forms)
    optimizer = _Optimizer(layers, setup.optimizer)
    weights = _BatchWeights(replicates, epochs, samples)
    evaluated, row_of = evaluated_updates(evaluate_every, epochs)
    validating = None if validation is None else _Validation(replicates, validation, len(evaluated))

    losses = np.empty((len(replicates), epochs), dtype=F32)
    for step in range(epochs):
        lr, momenta = rates.at(step)
        train.forward(layers, weights.at(step))
        losses[:, step] = train.losses
        train.backward(layers, grads)
        optimizer.step(layers, grads, lr, momenta)
        if rates.bank is not None:
            accuracy = train.correct.astype(F32) / F32(samples)
            rates.advance(step, train.losses, accuracy)
        if validating is not None and row_of[step] >= 0:  # after the update and scheduler step
            validating.record(int(row_of[step]), layers)
        on_step(step)

    return BatchResult(
        tuple(replicates),
        rates.table.copy(),
        losses.astype(np.float64),
        layers.state_dicts(),
        weights.sizes,
        None if validating is None else validating.losses.astype(np.float64),
        None if validating is None else evaluated,
    )


class _Validation:
    """Each replicate's mean loss on its validation set (by noise level), without gradient."""

    def __init__(
        self, replicates: Sequence[Replicate], sets: Mapping[float, Dataset], evaluations: int
    ) -> None:
        rows = validation_rows(replicates, sets)
        self.everyone = len(rows) == 1  # one set for all: no gather of the weights
        self.groups = [
            (
                np.asarray(indices),
                np.ascontiguousarray(sets[noise].features[..., None], dtype=F32),
                np.ascontiguousarray(sets[noise].labels[..., None], dtype=np.int64),
            )
            for noise, indices in rows.items()
        ]
        self.passes: dict[int, _Pass] = {}
        self.losses = np.empty((len(replicates), evaluations), dtype=F32)

    def record(self, row: int, layers: _Layers) -> None:
        for number, (indices, features, labels) in enumerate(self.groups):
            weights = layers if self.everyone else layers.subset(indices)
            if number not in self.passes:
                self.passes[number] = _Pass(features, labels, weights)
            measured = self.passes[number]
            measured.forward(weights, NO_WEIGHTS)
            self.losses[indices, row] = measured.losses
