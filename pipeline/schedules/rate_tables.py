"""Rate tables in closed form: what :func:`pipeline.schedules.specs.trace` records, without torch.

Why: a tuning stage resolves some 2,000 distinct schedules of 1,000-2,000 updates each, and
``trace`` steps a real torch optimizer and scheduler once per update (about 35 µs each), which
makes minutes of pure bookkeeping. :func:`closed_form` computes the same ``(rates, momenta)``
table with a few numpy array operations, a loop at most over milestones or phases.

"The same" means equal to ``trace`` to a relative 1e-12, most entries bit for bit; the tests in
``tests/test_rate_tables.py`` check it against torch's own schedulers. To get there each
schedule replays torch's own update rule rather than the textbook formula: torch's recursive
``lr *= factor`` becomes a cumulative product of the same factors in the same order, and
CosineAnnealingLR's ratio recursion (with its restarts past ``T_max``) is replayed likewise.

A schedule this module does not cover, arguments torch would refuse, or a schedule that would
fail while stepping give None, and the caller falls back to ``trace``: ReduceLROnPlateau (its
rates depend on the losses of training), ChainedScheduler, nested SequentialLR, OneCycleLR
inside SequentialLR, CyclicLR, PolynomialLR, CosineAnnealingWarmRestarts, CosineAnnealingLR
with eta_min != 0 past T_max + 1 (see there), and rules of the step that would raise, or pass
through a nan or an infinity.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from pipeline.schedules.rule_arrays import NotOnArrays, libm, vector_rule
from pipeline.schedules.specs import ScheduleSpec

FloatArray: TypeAlias = npt.NDArray[np.float64]
# Adam's default betas[0]: what trace reads as the momentum of an Adam group.
ADAM_BETA1 = 0.9


class _NotCovered(Exception):
    """This schedule, or these arguments, are left to ``trace``."""


def closed_form(
    spec: ScheduleSpec,
    epochs: int,
    lr: float,
    optimizer: str = "adam",
    momentum: float = 0.0,
) -> tuple[FloatArray, FloatArray] | None:
    """``schedules.trace(spec, epochs, lr, optimizer, momentum)`` as arrays of shape
    ``(epochs, len(spec.groups))``, or None where it is not covered (then call ``trace``).

    Raises ValueError where building the optimizer would: an unknown optimizer, a negative
    rate, a negative SGD momentum, or a negative number of updates.
    """
    resting = _resting_momentum(optimizer, lr, momentum)
    if epochs < 0:
        raise ValueError(f"a number of updates is >= 0, got {epochs}")
    groups = len(spec.groups)
    # trace steps the scheduler once more after recording the last update: torch evaluates
    # last_epoch 0..epochs, and a schedule that fails at the last one fails trace too.
    steps = epochs + 1
    try:
        if spec.type == "OneCycleLR":
            rates, momenta = _one_cycle(spec, steps, groups, resting)
        else:
            rates = _rates(spec, steps, float(lr), groups, epochs)
            momenta = np.full((steps, groups), float(resting))
    except (_NotCovered, NotOnArrays):
        return None
    return rates[:epochs], momenta[:epochs]


def _resting_momentum(optimizer: str, lr: float, momentum: float) -> float:
    """The momentum trace reads when no schedule cycles it, checking what the optimizer's
    constructor checks (see :func:`pipeline.core.optim.make_optimizer`)."""
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: adam, sgd")
    if lr < 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if optimizer == "adam":
        return ADAM_BETA1
    if momentum < 0.0:
        raise ValueError(f"Invalid momentum value: {momentum}")
    return float(momentum)


def _rates(spec: ScheduleSpec, steps: int, lr: float, groups: int, epochs: int) -> FloatArray:
    if spec.type in ("constant", "batch_size"):  # batch_size grows the batch, not the rate
        return np.full((steps, groups), lr)
    if spec.type == "manual":
        return _manual(spec, steps, lr, groups)
    base = np.full(groups, lr)
    if spec.type == "SequentialLR":
        return _sequential(spec, steps, base, epochs)
    # A lone scheduler starts as torch's constructor starts it: last_epoch 0, initial mode.
    return _law(spec)(spec, _Segment(steps, base, base, restart=False, epochs=epochs))


def _manual(spec: ScheduleSpec, steps: int, lr: float, groups: int) -> FloatArray:
    """Schedule.step multiplies after update i where i % every == 0, so update i's rate has
    been multiplied at updates 0 .. i - 1."""
    every, factor = _whole(spec.kwargs["every"]), _real(spec.kwargs["factor"])
    if every < 1:
        raise _NotCovered
    factors = np.ones(steps)
    factors[1::every] = factor  # update i's row multiplies by the factor of update i - 1
    return _cumulate(np.full(groups, lr), factors)


def _cumulate(first: FloatArray, factors: FloatArray) -> FloatArray:
    """Rows ``first, first * factors[1], (first * factors[1]) * factors[2], ...``: the same
    multiplications in the same order as torch's ``group["lr"] * factor``, so bit for bit."""
    table = np.empty((len(factors), len(first)))
    table[0] = first
    table[1:] = factors[1:, None] if factors.ndim == 1 else factors[1:]
    return np.cumprod(table, axis=0, out=table)


# -- torch's schedulers, one law each --------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    """Where a scheduler runs: ``steps`` values of last_epoch from 0, per group its ``base``
    (initial_lr) and ``current`` rate (group["lr"] when it takes over), whether it takes over
    by SequentialLR's restart (``_update_lr(0)``: the closed form at 0) rather than by its
    constructor's initial step, and the budget rules see as ``epochs``."""

    steps: int
    base: FloatArray
    current: FloatArray
    restart: bool
    epochs: int


Law: TypeAlias = Callable[[ScheduleSpec, _Segment], FloatArray]


def _step_lr(spec: ScheduleSpec, segment: _Segment) -> FloatArray:
    step_size, gamma = _whole(spec.kwargs["step_size"]), _real(spec.kwargs.get("gamma", 0.1))
    if step_size < 1:
        raise _NotCovered
    first = segment.base * gamma ** (0 // step_size) if segment.restart else segment.current
    factors = np.ones(segment.steps)
    factors[step_size::step_size] = gamma  # get_lr decays where last_epoch % step_size == 0
    return _cumulate(first, factors)


def _multi_step_lr(spec: ScheduleSpec, segment: _Segment) -> FloatArray:
    """torch keeps the milestones in a Counter: a milestone given twice decays twice."""
    milestones = Counter(_whole(m) for m in _sequence(spec.kwargs["milestones"]))
    gamma = _real(spec.kwargs.get("gamma", 0.1))
    factors = np.ones(segment.steps)
    for milestone, count in milestones.items():
        if 0 <= milestone < segment.steps:
            factors[milestone] = gamma**count
    if segment.restart:  # the closed form: gamma ** (milestones <= 0, with multiplicity)
        first = segment.base * gamma ** sum(c for m, c in milestones.items() if m <= 0)
    else:  # get_lr at last_epoch 0: decays only if 0 is itself a milestone
        first = segment.current * factors[0] if 0 in milestones else segment.current
    return _cumulate(first, factors)


def _exponential_lr(spec: ScheduleSpec, segment: _Segment) -> FloatArray:
    gamma = _real(spec.kwargs["gamma"])
    first = segment.base * gamma**0 if segment.restart else segment.current
    return _cumulate(first, np.full(segment.steps, gamma))


def _linear_lr(spec: ScheduleSpec, segment: _Segment) -> FloatArray:
    start = _real(spec.kwargs.get("start_factor", 1.0 / 3))
    end = _real(spec.kwargs.get("end_factor", 1.0))
    total = _whole(spec.kwargs.get("total_iters", 5))
    if not (0 < start <= 1 and 0 <= end <= 1):
        raise _NotCovered  # the constructor refuses them
    if segment.restart:
        if total == 0:
            raise _NotCovered  # the closed form divides by total_iters
        first = segment.base * (start + (end - start) * min(total, 0) / total)
    else:
        first = segment.current * start
    epoch = np.arange(segment.steps, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # rows past total_iters: unused
        growth = 1.0 + (end - start) / (total * start + (epoch - 1) * (end - start))
    return _cumulate(first, np.where((epoch >= 1) & (epoch <= total), growth, 1.0))


def _constant_lr(spec: ScheduleSpec, segment: _Segment) -> FloatArray:
    factor = _real(spec.kwargs.get("factor", 1.0 / 3))
    total = _whole(spec.kwargs.get("total_iters", 5))
    if not 0 <= factor <= 1 or (factor == 0 and 0 < total < segment.steps):
        raise _NotCovered  # refused, or 1 / factor at total_iters would divide by zero
    if segment.restart:
        first = segment.base * (factor + (total <= 0) * (1 - factor))
    else:
        first = segment.current * factor
    factors = np.ones(segment.steps)
    if 0 < total < segment.steps:
        factors[total] = 1.0 / factor
    return _cumulate(first, factors)


def _cosine_annealing_lr(spec: ScheduleSpec, segment: _Segment) -> FloatArray:
    """torch's recursion, not the closed form (they differ by rounding, and past T_max the
    recursion restarts a period): for last_epoch e >= 1,

    * e - 1 - T_max a multiple of 2 T_max: lr = previous + (base - eta_min)(1 - cos(pi / T)) / 2;
    * otherwise lr - eta_min = (previous - eta_min) (1 + cos(pi e / T)) / (1 + cos(pi (e-1) / T)).

    The first period runs e = 0 .. T_max, each later one 2 T_max updates from T_max + 1 + 2 k
    T_max. Each period ends where cos is exactly -1, so at exactly eta_min: the periods are
    independent, one cumulative product each, computed side by side. With eta_min = 0 the
    products are torch's own multiplications, bit for bit; otherwise torch re-rounds
    lr - eta_min each update, which the product matches to about 1e-13 while the rate decays.
    """
    period = _whole(spec.kwargs["T_max"])
    eta = _real(spec.kwargs.get("eta_min", 0.0))
    if period < 1:
        raise _NotCovered
    base, steps = segment.base, segment.steps
    if eta != 0 and steps > period + 2:
        # Past T_max + 1 the rate climbs back from eta_min, and torch's recursion re-rounds
        # lr - eta_min every update: errors made near eta_min grow with the climb, to 1e-12 and
        # more, and only torch's own sequential loop reproduces them.
        raise _NotCovered
    epoch = np.arange(steps, dtype=np.float64)
    cos = libm("cos")(math.pi * epoch / period)  # torch: math.cos(math.pi * e / T_max)
    # Where cos is exactly -1 must be the odd multiples of T_max, or the recursion would divide
    # by zero, or a period would not end at exactly eta_min.
    odd_multiples = np.zeros(steps, dtype=bool)
    odd_multiples[period :: 2 * period] = True
    if not np.array_equal(cos == -1.0, odd_multiples):
        raise _NotCovered
    if segment.restart:
        first = eta + (base - eta) * (1 + math.cos(math.pi * 0 / period)) / 2
    else:
        first = segment.current
    ratio = np.ones(steps)
    with np.errstate(divide="ignore", invalid="ignore"):  # only in restart rows, replaced below
        ratio[1:] = (1 + cos[1:]) / (1 + cos[:-1])
    head = min(steps, period + 1)
    table = np.empty((steps, len(base)))
    table[:head] = _cumulate(first - eta, ratio[:head]) + eta
    tail = steps - head
    if tail > 0:
        width = 2 * period
        count = -(-tail // width)
        factors = np.ones((count * width, 1))
        factors[:tail, 0] = ratio[head:]
        blocks = np.repeat(factors.reshape(count, width, 1), len(base), axis=2)
        # torch: the previous rate (exactly eta_min) plus the restart's step
        restart = eta + (base - eta) * (1 - math.cos(math.pi / period)) / 2
        blocks[:, 0, :] = restart - eta
        table[head:] = np.cumprod(blocks, axis=1).reshape(count * width, -1)[:tail] + eta
    return table


def _lambda_lr(spec: ScheduleSpec, segment: _Segment) -> FloatArray:
    """base_lr * rule(last_epoch), from restart or not (it has no closed form; get_lr is one)."""
    epoch = np.arange(segment.steps, dtype=np.float64)
    return segment.base * _rule_columns(spec, epoch, segment)


def _multiplicative_lr(spec: ScheduleSpec, segment: _Segment) -> FloatArray:
    """group["lr"] * rule(last_epoch), except in the constructor's initial step, which leaves
    the rate as it is (so the rule is not evaluated there); a restart multiplies by rule(0)."""
    epoch = np.arange(segment.steps, dtype=np.float64)
    skip = 0 if segment.restart else 1
    factors = np.ones((segment.steps, len(segment.base)))
    factors[skip:] = _rule_columns(spec, epoch[skip:], segment)
    return _cumulate(segment.current * factors[0], factors)


def _rule_columns(spec: ScheduleSpec, epoch: FloatArray, segment: _Segment) -> FloatArray:
    """Each group's rule at each epoch, shape (len(epoch), groups)."""
    rules = list(spec.rules.values())
    if not spec.per_layer:
        rules = rules * len(segment.base)
    if len(rules) != len(segment.base):
        raise _NotCovered
    columns = [vector_rule(rule.source)(epoch, float(segment.epochs)) for rule in rules]
    return np.stack([np.broadcast_to(c, epoch.shape) for c in columns], axis=1)


_LAWS: Mapping[str, Law] = {
    "StepLR": _step_lr,
    "MultiStepLR": _multi_step_lr,
    "ExponentialLR": _exponential_lr,
    "LinearLR": _linear_lr,
    "ConstantLR": _constant_lr,
    "CosineAnnealingLR": _cosine_annealing_lr,
    "LambdaLR": _lambda_lr,
    "MultiplicativeLR": _multiplicative_lr,
}
"""torch schedulers covered alone and as SequentialLR's children (OneCycleLR is covered alone)."""
COVERED = ("constant", "manual", "batch_size", *_LAWS, "SequentialLR", "OneCycleLR")
"""Every type closed_form may cover; within these, some arguments still give None."""


def _law(spec: ScheduleSpec) -> Law:
    law = _LAWS.get(spec.type)
    if law is None or spec.monitor is not None:
        raise _NotCovered
    return law


def _sequential(spec: ScheduleSpec, steps: int, base: FloatArray, epochs: int) -> FloatArray:
    """SequentialLR at its own last_epoch t runs child bisect_right(milestones, t): the child
    whose milestone t is restarts with ``_update_lr(0)``, the others step. Its constructor
    resets the rates to initial_lr and gives the child for t = 0 its initial step again."""
    milestones = [_whole(m) for m in _sequence(spec.kwargs["milestones"])]
    children = spec.children
    if len(milestones) != len(children) - 1 or milestones != sorted(milestones):
        raise _NotCovered  # refused by torch, or bisect on an unsorted list
    table = np.empty((steps, len(base)))
    starts, ends = [0, *milestones], [*milestones, steps]
    for child, start, end in zip(children, starts, ends, strict=True):
        low, high = max(start, 0), min(end, steps)
        if low >= high:
            continue  # a child whose turn is empty or past the budget never runs
        current = table[low - 1] if low > 0 else base
        segment = _Segment(high - low, base, current, restart=low > 0, epochs=epochs)
        table[low:high] = _law(child)(child, segment)
    return table


def _one_cycle(
    spec: ScheduleSpec, steps: int, groups: int, resting: float
) -> tuple[FloatArray, FloatArray]:
    """OneCycleLR's phases, as torch's get_lr finds them for each step, vectorised. It sets
    every rate itself (from max_lr), and, with cycle_momentum, Adam's beta1 or SGD's momentum:
    both optimizers have one, so torch never refuses it here."""
    kwargs = spec.kwargs
    total = _total_steps(kwargs)
    pct_start = kwargs.get("pct_start", 0.3)
    anneal = kwargs.get("anneal_strategy", "cos")
    if type(pct_start) is not float or not 0 <= pct_start <= 1 or anneal not in ("cos", "linear"):
        raise _NotCovered  # refused by the constructor
    if steps - 1 > total:
        raise _NotCovered  # torch refuses to step past total_steps
    div_factor = _real(kwargs.get("div_factor", 25.0))
    final_div_factor = _real(kwargs.get("final_div_factor", 1e4))
    peak = _per_group(kwargs["max_lr"], groups)
    initial = [m / div_factor for m in peak]
    lows = [i / final_div_factor for i in initial]
    cycle = kwargs.get("cycle_momentum", True)
    # Without cycle_momentum torch reads neither momentum argument, nor may we refuse them.
    high_m = _per_group(kwargs.get("max_momentum", 0.95), groups) if cycle else [resting] * groups
    low_m = _per_group(kwargs.get("base_momentum", 0.85), groups) if cycle else [resting] * groups
    if kwargs.get("three_phase", False):
        ends = [float(pct_start * total) - 1, float(2 * pct_start * total) - 2, total - 1]
        lr_ends = [(initial, peak), (peak, initial), (initial, lows)]
        momentum_ends = [(high_m, low_m), (low_m, high_m), (high_m, high_m)]
    else:
        ends = [float(pct_start * total) - 1, total - 1]
        lr_ends = [(initial, peak), (peak, lows)]
        momentum_ends = [(high_m, low_m), (low_m, high_m)]

    step = np.arange(steps, dtype=np.float64)
    phase = np.full(steps, len(ends) - 1)
    for index in reversed(range(len(ends) - 1)):  # the first phase whose end is not passed
        phase[step <= ends[index]] = index
    begins = np.array([0.0, *ends[:-1]])[phase]
    lengths = np.array(ends, dtype=np.float64)[phase] - begins
    if np.any(lengths == 0):
        raise _NotCovered  # torch's pct divides by zero
    pct = ((step - begins) / lengths)[:, None]
    curve = _annealing_cos if anneal == "cos" else _annealing_linear
    rates = curve(*_phase_values(lr_ends, phase), pct)
    if cycle:
        momenta = curve(*_phase_values(momentum_ends, phase), pct)
    else:
        momenta = np.full((steps, groups), resting)
    return rates, momenta


def _total_steps(kwargs: Mapping[str, Any]) -> int:
    """total_steps, or epochs * steps_per_epoch, as OneCycleLR's constructor checks them."""
    total = kwargs.get("total_steps")
    if total is not None:
        if type(total) is not int or total <= 0:
            raise _NotCovered
        return total
    epochs, per_epoch = kwargs.get("epochs"), kwargs.get("steps_per_epoch")
    if type(epochs) is not int or type(per_epoch) is not int or epochs <= 0 or per_epoch <= 0:
        raise _NotCovered
    return epochs * per_epoch


def _phase_values(
    ends: Sequence[tuple[list[float], list[float]]], phase: npt.NDArray[np.intp]
) -> tuple[FloatArray, FloatArray]:
    """Each step's (start, end) per group, from its phase's pair."""
    starts = np.array([start for start, _ in ends], dtype=np.float64)
    finishes = np.array([end for _, end in ends], dtype=np.float64)
    return starts[phase], finishes[phase]


def _annealing_cos(start: FloatArray, end: FloatArray, pct: FloatArray) -> FloatArray:
    cos_out = libm("cos")(math.pi * pct) + 1  # torch's own order of operations
    return end + (start - end) / 2.0 * cos_out


def _annealing_linear(start: FloatArray, end: FloatArray, pct: FloatArray) -> FloatArray:
    return (end - start) * pct + start


# -- arguments --------------------------------------------------------------------------------


def _real(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _NotCovered
    return float(value)


def _whole(value: Any) -> int:
    if type(value) is not int:
        raise _NotCovered
    return value


def _sequence(value: Any) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise _NotCovered
    return value


def _per_group(value: Any, groups: int) -> list[float]:
    """torch's _format_param: one value for every group, or a list of one per group."""
    values = list(value) if isinstance(value, list | tuple) else [value] * groups
    if len(values) != groups:
        raise _NotCovered
    return [_real(v) for v in values]
