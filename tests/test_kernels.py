"""The CPU engine's parts, each against a reference computed another way: the elementary
functions against float64, the plateau bank against torch's ReduceLROnPlateau, the planned
mini-batches against the sampler's own draws, and the compiled code for what would make its
bits depend on the CPU."""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest
import torch

from pipeline.config.params import parse_params
from pipeline.kernels import batches, dense, elementary, loss, optimizers
from pipeline.trainer import minibatch
from pipeline.trainer.plateau import PlateauBank

F32 = np.float32


@numba.njit(error_model="numpy")
def _apply(kind, values, out):
    for i in range(values.size):
        if kind == 0:
            out[i] = elementary.exp(values[i])
        elif kind == 1:
            out[i] = elementary.log(values[i])
        else:
            out[i] = elementary.tanh(values[i])


def _ulps(ours: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Distance in units in the last place between float32 values (both finite, one sign)."""
    rounded = exact.astype(F32)
    return np.abs(ours.view(np.int32).astype(np.int64) - rounded.view(np.int32).astype(np.int64))


def _inputs(kind: str) -> np.ndarray:
    rng = np.random.default_rng(2026)
    if kind == "log":  # positive normal floats, every binade, and the ends of [1, 2)
        spread = np.exp(rng.uniform(np.log(1.2e-38), np.log(3e38), 400_000))
        return np.concatenate([spread, [1.0, 2.0 - 2**-23, 0.7071067, 0.7071068]]).astype(F32)
    if kind == "exp":  # the softmax's range (at most 0) and beyond, where it stays normal
        values = np.concatenate([rng.uniform(-87.3, 88.0, 400_000), rng.normal(0, 1e-3, 50_000)])
        return values.astype(F32)
    values = np.concatenate([rng.uniform(-12, 12, 400_000), rng.normal(0, 0.05, 50_000)])
    return np.concatenate([values, [0.0, -0.0, 0.625, -0.625, 9.0, 20.0]]).astype(F32)


@pytest.mark.parametrize("kind", ["exp", "log", "tanh"])
def test_elementary_functions_are_within_one_ulp_of_the_exact_value(kind):
    values = _inputs(kind)
    ours = np.empty_like(values)
    _apply(["exp", "log", "tanh"].index(kind), values, ours)
    exact = getattr(np, kind)(values.astype(np.float64))
    distance = _ulps(ours, exact)
    worst = int(np.argmax(distance))
    assert distance.max() <= 1, f"{kind}({values[worst]!r}) = {ours[worst]!r}, not {exact[worst]!r}"
    assert (distance == 0).mean() > 0.75  # most are the correctly rounded value itself


def test_exp_ends_as_its_docstring_says():
    values = np.array([-1e4, -87.34, 88.0, 88.5, np.float32(np.inf)], dtype=F32)
    ours = np.empty_like(values)
    _apply(0, values, ours)
    assert ours[0] == 0 and ours[1] == 0 and np.isfinite(ours[2]) and np.isinf(ours[3:]).all()


def test_the_compiled_kernels_contain_no_fused_multiply_add():
    """A fused multiply-add rounds once where a multiply and an add round twice: code that
    used it on a CPU with FMA and not on one without would give different bits."""
    runs = 8
    x = np.ones((4, 2, runs), F32)
    w, b, out = np.ones((3, 2, runs), F32), np.ones((3, runs), F32), np.empty((4, 3, runs), F32)
    dense.forward(x, w, b, out, dense.TANH)
    dense.backward(out, x, w, w.copy(), b.copy())
    dense.backward_input(out, w, x, dense.TANH, x.copy())
    labels, weights = np.zeros((4, 1), np.int64), np.full((4, runs), F32(0.25))
    loss.cross_entropy(out, labels, weights, np.empty(runs, F32), np.empty(runs, np.int64), out)
    flat, layer_of, rates = np.ones((6, runs), F32), np.zeros(6, np.int64), np.ones((1, runs), F32)
    optimizers.adam(flat, flat, flat.copy(), flat.copy(), layer_of, rates, rates,
                    F32(0.999), F32(0.001), F32(1.0), F32(1e-8))  # fmt: skip
    optimizers.sgd(flat, flat, flat.copy(), layer_of, rates, rates, True)
    kernels = [dense.forward, dense.backward, dense.backward_input, loss.cross_entropy,
               optimizers.adam, optimizers.sgd]  # fmt: skip
    for kernel in kernels:
        # compiled afresh with the kernel's own options: numba cannot show cached code
        options = {k: v for k, v in kernel.targetoptions.items() if k != "cache"}
        fresh = numba.njit(**options)(kernel.py_func)
        for signature in kernel.signatures:
            fresh.compile(signature)
        for assembly in fresh.inspect_asm().values():
            fused = re.findall(r"\bv?f(?:n)?m(?:add|sub)\w*", assembly)
            assert not fused, f"{kernel.__name__} compiles to fused multiply-adds: {fused[:3]}"


PLATEAU_SETTINGS = [
    {},
    {"mode": "max", "factor": 0.5, "patience": 2},
    {"threshold_mode": "abs", "threshold": 0.01, "patience": 1, "cooldown": 3},
    {"mode": "max", "threshold_mode": "abs", "threshold": 0.05, "min_lr": 0.004},
    {"factor": 0.2, "patience": 0, "eps": 0.003, "min_lr": [0.001, 0.02]},
]


def test_the_plateau_bank_steps_every_run_as_torch_does():
    rng = np.random.default_rng(3)
    updates = 400
    schedulers, metrics = [], []
    for index, settings in enumerate(PLATEAU_SETTINGS * 3):
        groups = [{"params": [torch.zeros(1, requires_grad=True)]} for _ in range(2 - index % 2)]
        optimizer = torch.optim.SGD(groups, lr=0.1 * (1 + index % 3))
        if len(groups) == 1 and isinstance(settings.get("min_lr"), list):
            settings = {**settings, "min_lr": settings["min_lr"][0]}
        schedulers.append(torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **settings))
        # a noisy fall with long plateaus and exact repeats: every branch of the rule
        steps = np.repeat(rng.normal(-0.01, 0.02, updates // 4), 4)
        metrics.append(np.round(np.cumsum(steps) + 1.0, 3))
    bank = PlateauBank(schedulers)
    metrics_by_step = np.stack(metrics, axis=1)
    reductions = 0
    for step in range(updates):
        bank.step(metrics_by_step[step])
        for index, scheduler in enumerate(schedulers):
            scheduler.step(float(metrics_by_step[step, index]))
            expected = [group["lr"] for group in scheduler.optimizer.param_groups]
            got = bank.rates[index, : len(expected)].tolist()
            assert got == expected, f"run {index} ({PLATEAU_SETTINGS[index % 5]}), step {step}"
    reductions = sum(s.optimizer.param_groups[0]["lr"] < 0.1 for s in schedulers)
    assert reductions >= len(schedulers) // 2  # the rule was exercised, not just its start


def _sampler(initial: int, factor: float, every: int, seed: int) -> minibatch.Sampler:
    spec = parse_params(
        {"schedulers": {"b": {"type": "batch_size", "initial": initial, "factor": factor,
                              "every": every}}}
    ).schedules[0]  # fmt: skip
    return minibatch.Sampler(spec, 90, 20, seed)


@pytest.mark.parametrize("initial, factor, every", [(3, 1.5, 10), (7, 1, 5), (1, 2, 4)])
def test_planned_batches_are_the_samplers_own_draws(initial, factor, every):
    drawn = _sampler(initial, factor, every, seed=11)
    passes, pass_of, start = _sampler(initial, factor, every, seed=11).plan()
    weights = np.zeros((20, 1), F32)
    for step in range(90):
        batch = drawn.batch(step)
        size = len(batch)
        assert passes[pass_of[step], start[step] : start[step] + size].tolist() == batch.tolist()
        batches.weights_at(
            step, weights, np.array([0]), passes, np.array([0]), pass_of[None],
            start[None], drawn.sizes[None],
        )  # fmt: skip
        expected = np.zeros(20, F32)
        expected[batch] = F32(1) / F32(size)
        np.testing.assert_array_equal(weights[:, 0], expected)
