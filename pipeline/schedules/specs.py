"""Learning-rate schedules: parse a params entry into a spec, build it on an optimizer, preview it.

Two schedules are ours: ``constant`` (the baseline) and ``manual`` (the tutorial's hand-written
loop: after update ``i``, if ``i % every == 0``, multiply every group's rate by ``factor``).
Every public class of :mod:`torch.optim.lr_scheduler` is usable by its name with its own keyword
arguments. ``LambdaLR`` and ``MultiplicativeLR`` take ``lr_lambda`` as an arithmetic rule of
``step`` (see :mod:`pipeline.schedules.expressions`), or a mapping from layer name to rule,
which trains
each layer as its own param group. ``SequentialLR`` and ``ChainedScheduler`` take ``schedulers``
as a list of nested entries. ``ReduceLROnPlateau`` takes ``monitor``: ``loss`` or ``accuracy``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.optim import lr_scheduler

from pipeline.core.optim import make_optimizer
from pipeline.problems.architecture import LAYER_NAME
from pipeline.schedules import expressions, rule_arrays

BUILTIN_TYPES = {
    "constant": "the rate never changes (the baseline)",
    "manual": "the tutorial's loop: after update i, if i % every == 0, multiply the rate by factor",
    "batch_size": "the rate stays put; the mini-batch grows instead: initial points, times factor"
    " every `every` updates, up to the whole train set (the tutorial's alternative to decay)",
}
MANUAL_DEFAULTS: dict[str, float] = {"every": 50, "factor": 0.99}
BATCH_DEFAULTS: dict[str, float] = {"initial": 4, "factor": 2, "every": 250}
BUILTIN_DEFAULTS: dict[str, dict[str, float]] = {
    "constant": {},
    "manual": MANUAL_DEFAULTS,
    "batch_size": BATCH_DEFAULTS,
}
RULE_ARGUMENT = "lr_lambda"
NESTING_TYPES = ("SequentialLR", "ChainedScheduler")
MONITORS = ("loss", "accuracy")
# Arguments the pipeline supplies itself; a params entry may not set them.
_SUPPLIED = {"self", "optimizer", "last_epoch", "verbose"}
# Rules are evaluated over every step at validation; beyond this, a sample is checked.
_FULL_CHECK_STEPS = 200_000


class SpecError(ValueError):
    """A scheduler entry is wrong; ``path`` locates the key inside the entry (".gamma")."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class ScheduleSpec:
    """A validated scheduler entry: its run name, type, and keyword arguments as given."""

    name: str
    type: str
    kwargs: Mapping[str, Any]
    per_layer: bool = False
    monitor: str | None = None
    children: tuple[ScheduleSpec, ...] = ()
    rules: Mapping[str, expressions.Expression] = field(default_factory=dict)

    @property
    def mini_batch(self) -> bool:
        """Whether updates train on growing mini-batches rather than the whole train set."""
        return self.type == "batch_size"

    @property
    def groups(self) -> tuple[str, ...]:
        """The param groups it drives: ``all``, or the layers its rules name, in the model's
        order (the convolution, then Liner1, Liner2, ...)."""
        if not self.per_layer:
            return ("all",)
        return tuple(self.rules) if self.rules else self.children[0].groups

    def as_params(self) -> dict[str, Any]:
        """The entry as it reads in params.yaml, for logging."""
        return {"type": self.type, **self.kwargs}


def torch_types() -> dict[str, type]:
    """Every public scheduler class in torch.optim.lr_scheduler, by name."""
    found = {}
    for name, value in vars(lr_scheduler).items():
        if name.startswith("_") or not inspect.isclass(value) or name == "LRScheduler":
            continue
        if issubclass(value, lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau):
            found[name] = value
    return dict(sorted(found.items()))


def available_types() -> list[dict[str, str]]:
    """One row per schedule type: name, where it comes from, its arguments, a summary."""
    rows = [
        {
            "type": kind,
            "source": "lrsched",
            "arguments": ", ".join(f"{k}={v}" for k, v in BUILTIN_DEFAULTS[kind].items()),
            "summary": summary,
        }
        for kind, summary in BUILTIN_TYPES.items()
    ]
    for name, cls in torch_types().items():
        arguments = []
        for parameter in _arguments(cls).values():
            if parameter.default is inspect.Parameter.empty:
                arguments.append(parameter.name)
            else:
                arguments.append(f"{parameter.name}={parameter.default!r}")
        if name == "ReduceLROnPlateau":
            arguments.insert(0, "monitor='loss'")
        doc = inspect.getdoc(cls) or ""
        rows.append(
            {
                "type": name,
                "source": "torch",
                "arguments": ", ".join(arguments),
                "summary": doc.split("\n\n")[0].replace("\n", " "),
            }
        )
    return rows


def parse_spec(name: str, raw: Any, epochs: int) -> ScheduleSpec:
    """Validate one ``schedulers`` entry: its type and arguments (``try_spec`` then steps it)."""
    return _parse(name, raw, epochs, nested=False)


def _parse(name: str, raw: Any, epochs: int, nested: bool) -> ScheduleSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"expected a mapping with a 'type' key, got {raw!r}")
    kind = raw.get("type")
    kwargs = {k: v for k, v in raw.items() if k != "type"}
    _refuse_non_finite(kwargs, "")
    torch_classes = torch_types()
    if not isinstance(kind, str) or (kind not in BUILTIN_TYPES and kind not in torch_classes):
        allowed = ", ".join([*BUILTIN_TYPES, *torch_classes])
        raise SpecError(f"unknown scheduler type {kind!r}; allowed: {allowed}", ".type")
    if kind in BUILTIN_TYPES:
        if nested:
            raise SpecError(f"{kind!r} cannot be nested; use a torch scheduler", ".type")
        return _parse_builtin(name, kind, kwargs)

    cls = torch_classes[kind]
    accepted = _arguments(cls)
    monitor = None
    if kind == "ReduceLROnPlateau":
        if nested:
            raise SpecError("ReduceLROnPlateau cannot be nested", ".type")
        monitor = kwargs.pop("monitor", "loss")
        if monitor not in MONITORS:
            raise SpecError(f"got {monitor!r}; allowed: {', '.join(MONITORS)}", ".monitor")
    for key in kwargs:
        if key not in accepted:
            allowed = ", ".join(accepted) or "none"
            raise SpecError(f"{kind} takes no argument {key!r}; allowed: {allowed}", f".{key}")
    missing = [
        p.name
        for p in accepted.values()
        if p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise SpecError(f"{kind} needs {', '.join(repr(m) for m in missing)}", f".{missing[0]}")

    rules: dict[str, expressions.Expression] = {}
    per_layer = False
    if RULE_ARGUMENT in kwargs:
        rules, per_layer = _parse_rules(kwargs[RULE_ARGUMENT], epochs)
    children: tuple[ScheduleSpec, ...] = ()
    if kind in NESTING_TYPES:
        entries = kwargs.get("schedulers")
        if not isinstance(entries, list) or not entries:
            raise SpecError("a non-empty list of scheduler entries is required", ".schedulers")
        parsed = []
        for index, entry in enumerate(entries):
            try:
                parsed.append(_parse(f"{name}[{index}]", entry, epochs, nested=True))
            except SpecError as error:
                raise SpecError(str(error), f".schedulers[{index}]{error.path}") from None
        if len({child.per_layer for child in parsed}) > 1:
            raise SpecError("nested schedulers must all be per-layer or all not", ".schedulers")
        if len({child.groups for child in parsed}) > 1:
            raise SpecError("nested per-layer schedulers must name the same layers", ".schedulers")
        children, per_layer = tuple(parsed), parsed[0].per_layer
    return ScheduleSpec(name, kind, kwargs, per_layer, monitor, children, rules)


def _refuse_non_finite(value: Any, path: str) -> None:
    """A NaN or infinite number anywhere in an entry is refused at its own key, before torch
    would turn it into a rate that goes bad steps later."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"got {value!r}; must be a finite number (not nan or inf)", path)
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_non_finite(item, f"{path}[{index}]")


def _parse_builtin(name: str, kind: str, kwargs: dict[str, Any]) -> ScheduleSpec:
    allowed = BUILTIN_DEFAULTS[kind]
    for key, value in kwargs.items():
        if key not in allowed:
            names = ", ".join(allowed) or "none"
            raise SpecError(f"{kind} takes no argument {key!r}; allowed: {names}", f".{key}")
        if key in ("every", "initial") and not (type(value) is int and value > 0):
            raise SpecError(f"got {value!r}; must be a positive integer", f".{key}")
        if key == "factor" and not (
            type(value) in (int, float) and math.isfinite(value) and value > 0
        ):
            raise SpecError(f"got {value!r}; must be a positive finite number", ".factor")
        if kind == "batch_size" and key == "factor" and value < 1:
            raise SpecError(f"got {value!r}; a batch grows: factor must be >= 1", ".factor")
    return ScheduleSpec(name, kind, {**allowed, **kwargs})


def _parse_rules(value: Any, epochs: int) -> tuple[dict[str, expressions.Expression], bool]:
    per_layer = isinstance(value, dict)
    sources = value if per_layer else {"all": value}
    if per_layer:
        wrong = [str(name) for name in sources if not LAYER_NAME.match(str(name))]
        if wrong or not sources:
            raise SpecError(
                f"per-layer rules are keyed by layer: Conv1, Liner1, Liner2, ... (the model's;"
                f" LogicNet's are Liner1, Liner2); got {', '.join(wrong) or 'none'}",
                f".{RULE_ARGUMENT}",
            )
    rules = {}
    for group, source in sources.items():
        path = f".{RULE_ARGUMENT}" + (f".{group}" if per_layer else "")
        try:
            rule = expressions.parse(source)
            _check_factors(rule, epochs)
        except expressions.ExpressionError as error:
            raise SpecError(str(error), path) from None
        rules[group] = rule
    return dict(sorted(rules.items(), key=lambda item: layer_order(item[0]))), per_layer


def _check_factors(rule: expressions.Expression, epochs: int) -> None:
    """A rule's factor is a finite number >= 0 at every step, or an ExpressionError names the
    first step where it is not. On every step at once where numpy can (a tuning parses
    thousands of rules), else step by step, which also finds the step to name."""
    steps = _steps_to_check(epochs)
    try:
        factors = rule_arrays.vector_rule(rule.source)(np.asarray(steps, np.float64), float(epochs))
        if np.all(np.asarray(factors) >= 0):
            return
    except rule_arrays.NotOnArrays:
        pass
    for step in steps:
        factor = rule(step, epochs)
        if factor < 0:
            raise expressions.ExpressionError(
                f"{rule.source!r} is {factor} at step {step}; a rate factor must be >= 0"
            )


def layer_order(name: str) -> tuple[int, int]:
    """Where a layer comes in a network of the family: the convolution, then the dense layers."""
    found = LAYER_NAME.match(name)
    if found is None:
        return (-1, 0)  # "all"
    return (found.group(1) == "Liner", int(found.group(2)))


def _steps_to_check(epochs: int) -> Sequence[int]:
    if epochs + 1 <= _FULL_CHECK_STEPS:
        return range(epochs + 1)
    return np.unique(np.linspace(0, epochs, _FULL_CHECK_STEPS, dtype=np.int64)).tolist()


def _arguments(cls: type) -> dict[str, inspect.Parameter]:
    signature = inspect.signature(cls)  # the constructor's parameters, without self
    return {
        name: p
        for name, p in signature.parameters.items()
        if name not in _SUPPLIED and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


class Schedule:
    """Drives one optimizer's rates; call :meth:`step` after every ``optimizer.step()``."""

    def __init__(self, spec: ScheduleSpec, optimizer: torch.optim.Optimizer, epochs: int) -> None:
        self.spec = spec
        self.optimizer = optimizer
        self._torch = None if spec.type in BUILTIN_TYPES else _build_torch(spec, optimizer, epochs)

    def step(self, index: int, loss: float, accuracy: float) -> None:
        """Advance after update ``index``, whose loss and accuracy are given."""
        if self.spec.type == "manual":
            if index % self.spec.kwargs["every"] == 0:
                for group in self.optimizer.param_groups:
                    group["lr"] *= self.spec.kwargs["factor"]
        elif self._torch is not None:
            if self.spec.monitor is not None:  # ReduceLROnPlateau
                self._torch.step(loss if self.spec.monitor == "loss" else accuracy)
            else:
                self._torch.step()

    @property
    def torch_scheduler(self) -> Any:
        """torch's scheduler object (None for the schedules built here, such as ``manual``)."""
        return self._torch

    def rates(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def momenta(self) -> list[float]:
        """Adam's beta1 or SGD's momentum per group, which some schedules cycle."""
        return [
            group["betas"][0] if "betas" in group else group["momentum"]
            for group in self.optimizer.param_groups
        ]


def _build_torch(spec: ScheduleSpec, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    cls = torch_types()[spec.type]
    kwargs = dict(spec.kwargs)
    if spec.rules:
        callables = [_bind(rule, epochs) for rule in spec.rules.values()]
        kwargs[RULE_ARGUMENT] = callables if spec.per_layer else callables[0]
    if spec.children:
        kwargs["schedulers"] = [_build_torch(child, optimizer, epochs) for child in spec.children]
    if spec.monitor == "accuracy":
        kwargs.setdefault("mode", "max")
    return cls(optimizer=optimizer, **kwargs)


def _bind(rule: expressions.Expression, epochs: int):
    return lambda step: rule(step, epochs)


def try_spec(spec: ScheduleSpec, epochs: int, lr: float, optimizer: str, momentum: float) -> None:
    """Build the schedule on a throwaway model and step it, so bad arguments fail now."""
    try:
        rates = preview(spec, min(epochs, 2000), lr, optimizer, momentum)
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError) as error:
        raise SpecError(f"{spec.type} rejects these arguments: {error}") from None
    bad = ~np.isfinite(rates) | (rates < 0)
    if bad.any():
        step = int(np.argwhere(bad)[0][0])
        raise SpecError(f"the learning rate becomes {rates[bad][0]} at step {step}")


def preview(
    spec: ScheduleSpec,
    epochs: int,
    lr: float,
    optimizer: str = "adam",
    momentum: float = 0.0,
) -> np.ndarray:
    """The rate each update would use, shape (epochs, groups), without training.

    ReduceLROnPlateau sees a loss that never improves, so its preview is the fastest decay it
    can make; in training it decays only when the loss stalls.
    """
    return trace(spec, epochs, lr, optimizer, momentum)[0]


def trace(
    spec: ScheduleSpec,
    epochs: int,
    lr: float,
    optimizer: str = "adam",
    momentum: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Rates and momenta (Adam's beta1, or SGD's momentum) of each update, per group.

    OneCycleLR and CyclicLR cycle the momentum too, so a faithful replay needs both. A trace is
    kept for the process: validation traces every schedule, and training reads the same again.
    """
    key = (id(spec), epochs, lr, optimizer, momentum)
    kept = _TRACES.get(key)
    if kept is not None and kept[0] is spec:  # the very spec: an id is reused only once freed
        return kept[1].copy(), kept[2].copy()
    opt = make_optimizer(stand_in_groups(spec), optimizer, lr, momentum)
    schedule = Schedule(spec, opt, epochs)
    rates = np.empty((epochs, len(opt.param_groups)))
    momenta = np.empty_like(rates)
    for index in range(epochs):
        rates[index] = schedule.rates()
        momenta[index] = schedule.momenta()
        opt.step()  # no gradients: the weights stay put, but schedulers see a real step
        schedule.step(index, loss=1.0, accuracy=0.5)
    _TRACES[key] = (spec, rates.copy(), momenta.copy())
    return rates, momenta


_TRACES: dict[tuple, tuple[ScheduleSpec, np.ndarray, np.ndarray]] = {}


def stand_in_groups(spec: ScheduleSpec) -> list[dict]:
    """Param groups of one weight each, named as the spec's groups: a scheduler reads only the
    groups' rates, so its rates are those it would give the model's own groups."""
    return [{"params": [torch.zeros(1, requires_grad=True)], "name": g} for g in spec.groups]
