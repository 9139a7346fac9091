"""Search spaces for tuning every schedule on an equal budget (after AlgoPerf's external tuning).

Each schedule declares a space: the peak learning rate ``lr``, log-uniform over ONE range that
every schedule shares (so no schedule wins by being given better rates), then its own shape
parameters. Every schedule gets the same number of trials in each of S studies. Trials are drawn
quasi-randomly: a scrambled Sobol' sequence per (schedule, study), seeded from the search seed
and a stable hash of the schedule's name, so the same params draw the same trials on any machine.

Shape parameters are relative to the workload's budget (``epochs``, the number of updates), so
one space serves workloads of every length: fractions of the budget become step counts, and a
decay is given as ``final_ratio`` = the rate after the budget's last update / the peak, from
which ``resolve`` computes the per-event factor (ExponentialLR's ``gamma = final_ratio **
(1 / epochs)``). A space's ``form`` (by default its type) says how its parameters become the
scheduler's arguments; parameters a form does not use pass through as arguments unchanged, and
the form ``direct`` uses none (any torch scheduler, its own arguments searched as they are).

The default spaces, as a ``search`` section of params.yaml would hold them (:func:`parse_search`
reads it; a dimension is a one-key mapping, anything else is a fixed value)::

    search:
      trials: 16               # per schedule and study; a power of two keeps Sobol's balance
      studies: 3               # independent studies, each its own scrambled sequence
      seed: 0                  # with each schedule's name, seeds its sequences
      lr: {log_uniform: [1.0e-3, 1.0]}  # the peak rate: one range shared by every schedule
      spaces:
        constant:
          type: constant
        manual:                # every = every_fraction * epochs; factor from final_ratio
          type: manual
          every_fraction: {log_uniform: [0.01, 0.5]}
          final_ratio: {log_uniform: [1.0e-3, 1.0]}
        StepLR:                # step_size = step_fraction * epochs; gamma from final_ratio
          type: StepLR
          step_fraction: {log_uniform: [0.01, 0.5]}
          final_ratio: {log_uniform: [1.0e-3, 1.0]}
        MultiStepLR:           # milestones at the fractions (sorted); gamma from final_ratio
          type: MultiStepLR
          milestone_1: {uniform: [0.1, 0.9]}
          milestone_2: {uniform: [0.1, 0.9]}
          milestone_3: {uniform: [0.1, 0.9]}
          final_ratio: {log_uniform: [1.0e-3, 1.0]}
        ExponentialLR:         # gamma = final_ratio ** (1 / epochs)
          type: ExponentialLR
          final_ratio: {log_uniform: [1.0e-3, 1.0]}
        CosineAnnealingLR:     # T_max = epochs
          type: CosineAnnealingLR
          eta_min: 0.0
        ReduceLROnPlateau:     # patience = patience_fraction * epochs
          type: ReduceLROnPlateau
          factor: {uniform: [0.1, 0.9]}
          patience_fraction: {log_uniform: [0.005, 0.1]}
          threshold: {log_uniform: [1.0e-4, 0.1]}
          monitor: loss
          mode: min
          threshold_mode: rel
        warmup_cosine:         # LinearLR over warmup_fraction * epochs, then cosine to the end
          type: SequentialLR
          form: warmup_cosine
          warmup_fraction: {uniform: [0.01, 0.25]}
          start_factor: 0.01
        OneCycleLR:            # max_lr = lr, total_steps = epochs
          type: OneCycleLR
          pct_start: {uniform: [0.05, 0.5]}
          anneal_strategy: {choice: [cos, linear]}
        LambdaLR:              # a rule per layer: each decays to its own ratio over the budget
          type: LambdaLR
          form: layer_decay
          first_final_ratio: {log_uniform: [1.0e-3, 1.0]}
          last_final_ratio: {log_uniform: [1.0e-3, 1.0]}
        growing_batch:         # the rate stays; the batch grows from initial points, x factor
          type: batch_size     # every every_fraction * epochs updates
          initial: {int_uniform: [1, 8]}
          factor: 2
          every_fraction: {log_uniform: [0.01, 0.5]}

Dimensions in YAML: ``{log_uniform: [low, high]}``, ``{uniform: [low, high]}``,
``{int_uniform: [low, high]}``, ``{int_log_uniform: [low, high]}`` (both inclusive),
``{choice: [a, b, ...]}``. Write ``1.0e-3``, not ``1e-3``: plain YAML 1.1 reads the latter as a
string.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from pipeline.core.seeds import name_words
from pipeline.problems.architecture import LOGICNET

FloatArray: TypeAlias = npt.NDArray[np.float64]
Scalar: TypeAlias = str | int | float | bool
LR = "lr"
# A budget on which every space is resolved when built, so a wrong space fails at once.
_CHECK_BUDGET = 100


class BalanceWarning(UserWarning):
    """Sobol' points are balanced only in runs of a power of two."""


def _unit(u: float) -> float:
    """A coordinate in [0, 1]; anything else is a caller's bug, never silently clipped."""
    u = float(u)
    if not 0.0 <= u <= 1.0:
        raise ValueError(f"a unit coordinate must lie in [0, 1], got {u!r}")
    return u


def _finite_pair(low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"need finite low < high, got [{low!r}, {high!r}]")


@dataclass(frozen=True)
class LogUniform:
    """Log-uniform on [low, high]: rates and ratios matter by their order of magnitude."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _finite_pair(self.low, self.high)
        if self.low <= 0:
            raise ValueError(f"a log-uniform range must be positive, got low={self.low!r}")

    def from_unit(self, u: float) -> float:
        u = _unit(u)
        if u in (0.0, 1.0):  # the ends exactly: exp(log(x)) may miss x by an ulp
            return self.low if u == 0.0 else self.high
        log_low, log_high = math.log(self.low), math.log(self.high)
        return min(max(math.exp(log_low + u * (log_high - log_low)), self.low), self.high)


@dataclass(frozen=True)
class Uniform:
    """Uniform on [low, high]: fractions of the budget, factors of similar size."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _finite_pair(self.low, self.high)

    def from_unit(self, u: float) -> float:
        value = self.low + _unit(u) * (self.high - self.low)
        return min(max(value, self.low), self.high)


@dataclass(frozen=True)
class IntUniform:
    """An integer in [low, high], both inclusive, each equally likely (or, with ``log``, each
    with the mass a log-uniform on [low, high + 1) gives its unit interval)."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        if type(self.low) is not int or type(self.high) is not int or self.low >= self.high:
            raise ValueError(f"need integers low < high, got [{self.low!r}, {self.high!r}]")
        if self.log and self.low < 1:
            raise ValueError(f"a log-uniform integer range starts at 1 or more, got {self.low}")

    def from_unit(self, u: float) -> int:
        u = _unit(u)
        if self.log:
            log_low, log_end = math.log(self.low), math.log(self.high + 1)
            value = math.floor(math.exp(log_low + u * (log_end - log_low)))
        else:
            value = self.low + math.floor(u * (self.high - self.low + 1))
        return min(max(value, self.low), self.high)  # u = 1 lands on high, not past it


@dataclass(frozen=True)
class Choice:
    """One of a few values, each on an equal share of the unit interval, in the order given."""

    values: tuple[Scalar, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("a choice needs at least one value")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"a choice lists each value once, got {list(self.values)!r}")

    def from_unit(self, u: float) -> Scalar:
        return self.values[min(math.floor(_unit(u) * len(self.values)), len(self.values) - 1)]


Dimension: TypeAlias = LogUniform | Uniform | IntUniform | Choice
DIMENSIONS = (LogUniform, Uniform, IntUniform, Choice)


# Forms: how a space's parameters become a scheduler's arguments for a budget. Each takes the
# drawn and fixed values (lr included), removes those it uses, and returns the arguments it made;
# what is left passes through as arguments.
Form: TypeAlias = Callable[..., dict[str, Any]]  # (values, epochs[, layers]) -> arguments


def _steps(fraction: float, epochs: int, least: int = 1, most: int | None = None) -> int:
    """A fraction of the budget as a count of updates, at least ``least``, at most the budget."""
    most = epochs if most is None else most
    return min(max(round(fraction * epochs), least), most)


def _per_event(final_ratio: float, events: int) -> float:
    """The factor that, applied ``events`` times, multiplies the rate by ``final_ratio``."""
    return float(final_ratio ** (1.0 / max(events, 1)))


def _constant(values: dict[str, Any], epochs: int) -> dict[str, Any]:
    return {}


def _manual(values: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The tutorial's loop multiplies after updates 0, every, 2 * every, ...: ceil(E / every)
    times within the budget."""
    every = _steps(values.pop("every_fraction"), epochs)
    return {"every": every, "factor": _per_event(values.pop("final_ratio"), -(-epochs // every))}


def _step_lr(values: dict[str, Any], epochs: int) -> dict[str, Any]:
    """StepLR decays after every ``step_size`` steps: epochs // step_size times in the budget."""
    step_size = _steps(values.pop("step_fraction"), epochs)
    return {
        "step_size": step_size,
        "gamma": _per_event(values.pop("final_ratio"), epochs // step_size),
    }


def _multi_step_lr(values: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Milestones from every ``milestone_*`` fraction, sorted; two that round to one step are
    one milestone (MultiStepLR would decay twice there), and gamma counts the distinct ones."""
    names = sorted(name for name in values if name.startswith("milestone_"))
    if not names:
        raise KeyError("milestone_1")
    milestones = sorted({_steps(values.pop(name), epochs) for name in names})
    gamma = _per_event(values.pop("final_ratio"), len(milestones))
    return {"milestones": milestones, "gamma": gamma}


def _exponential_lr(values: dict[str, Any], epochs: int) -> dict[str, Any]:
    return {"gamma": _per_event(values.pop("final_ratio"), epochs)}


def _cosine(values: dict[str, Any], epochs: int) -> dict[str, Any]:
    return {"T_max": epochs}


def _plateau(values: dict[str, Any], epochs: int) -> dict[str, Any]:
    return {"patience": _steps(values.pop("patience_fraction"), epochs)}


def _warmup_cosine(values: dict[str, Any], epochs: int) -> dict[str, Any]:
    """LinearLR up to the peak over the warm-up, then a cosine over the rest of the budget; the
    warm-up is at least one update and leaves at least one for the cosine."""
    if epochs < 2:
        raise ValueError(f"a warm-up and a cosine need a budget of 2 updates or more, got {epochs}")
    warmup = _steps(values.pop("warmup_fraction"), epochs, most=epochs - 1)
    linear = {"type": "LinearLR", "start_factor": values.pop("start_factor"), "total_iters": warmup}
    cosine = {"type": "CosineAnnealingLR", "T_max": epochs - warmup}
    return {"milestones": [warmup], "schedulers": [linear, cosine]}


def _one_cycle(values: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The peak ``lr`` is OneCycleLR's ``max_lr`` (it sets the optimizer's rate itself).

    torch ends the rising phase at update pct_start * epochs - 1 and divides by that length, so
    a rise of exactly one update divides by zero: on budgets so short that it could, pct_start
    is raised to 2 / epochs (0.75 at most, which avoids it for budgets of 1 and 2).
    """
    pct_start = max(float(values.pop("pct_start")), min(2.0 / epochs, 0.75))
    return {"max_lr": values[LR], "total_steps": epochs, "pct_start": pct_start}


def _layer_decay(
    values: dict[str, Any], epochs: int, layers: Sequence[str] = LOGICNET.layer_names
) -> dict[str, Any]:
    """LambdaLR with a rule per layer, the tutorial's fine-tuning case: each layer's rate decays
    exponentially, over the budget, to its own ratio of the peak: ``first_final_ratio`` for the
    first layer, ``last_final_ratio`` for the last, and for the layers between, ratios spaced
    geometrically by depth (layer-wise decay, as in fine-tuning deeper networks)."""
    first, last = float(values.pop("first_final_ratio")), float(values.pop("last_final_ratio"))
    rules = {}
    for depth, layer in enumerate(layers):
        ratio = _between(first, last, depth, len(layers))
        rules[layer] = f"{ratio!r} ** (step / epochs)"
    return {"lr_lambda": rules}


def _between(first: float, last: float, depth: int, count: int) -> float:
    """``first ** (1 - t) * last ** t`` at ``t = depth / (count - 1)``, rounded once (mpmath:
    glibc's pow picks its code by CPU); the ends exactly ``first`` and ``last``."""
    if depth == 0:
        return first
    if depth == count - 1:
        return last
    import mpmath

    with mpmath.workprec(96):
        share = mpmath.mpf(depth) / (count - 1)
        return float(mpmath.mpf(first) ** (1 - share) * mpmath.mpf(last) ** share)


def _batch_size(values: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The tutorial's alternative to decay: the rate stays at the peak while the mini-batch
    starts at ``initial`` points and grows by ``factor`` every ``every_fraction`` of the budget."""
    return {"every": _steps(values.pop("every_fraction"), epochs)}


def _direct(values: dict[str, Any], epochs: int) -> dict[str, Any]:
    return {}


LAYERED_FORMS = ("layer_decay",)  # they take the network's layers too
FORMS: dict[str, Form] = {
    "constant": _constant,
    "manual": _manual,
    "StepLR": _step_lr,
    "MultiStepLR": _multi_step_lr,
    "ExponentialLR": _exponential_lr,
    "CosineAnnealingLR": _cosine,
    "ReduceLROnPlateau": _plateau,
    "warmup_cosine": _warmup_cosine,
    "OneCycleLR": _one_cycle,
    "layer_decay": _layer_decay,
    "batch_size": _batch_size,
    "direct": _direct,
}


@dataclass(frozen=True)
class SearchSpace:
    """One schedule's space: ``dims`` (``lr`` first) are searched, ``fixed`` values are not.

    ``form`` names the entry of :data:`FORMS` that turns parameters into arguments; by default
    the type's own, else ``direct``. Built spaces are resolved once on a short budget, so a
    missing parameter or an unknown form fails here, not in the middle of a search.
    """

    name: str
    type: str
    dims: Mapping[str, Dimension]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    form: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", dict(self.dims))
        object.__setattr__(self, "fixed", dict(self.fixed))
        if not self.name:
            raise ValueError("a search space needs a name (its schedule's run name)")
        if next(iter(self.dims), None) != LR:
            raise ValueError(f"{self.name}: the first dimension must be {LR!r}, the shared peak")
        for name, dim in self.dims.items():
            if not isinstance(dim, DIMENSIONS):
                raise ValueError(f"{self.name}.{name}: not a dimension: {dim!r}")
        both = sorted(set(self.dims) & set(self.fixed))
        if both:
            raise ValueError(f"{self.name}: {both} both searched and fixed; give each once")
        if not isinstance(self.form, str | None) or self.form_name not in FORMS:
            raise ValueError(f"{self.name}: unknown form {self.form_name!r}; known: {list(FORMS)}")
        self.resolve(self.from_unit([0.5] * len(self.dims)), _CHECK_BUDGET)

    @property
    def form_name(self) -> str:
        if self.form is not None:
            return self.form
        return self.type if self.type in FORMS else "direct"

    @property
    def names(self) -> tuple[str, ...]:
        """The searched parameters, in the order of the unit points' last axis."""
        return tuple(self.dims)

    def from_unit(self, row: Sequence[float] | FloatArray) -> dict[str, Any]:
        """A point of the space (parameter -> value) from one row of unit coordinates."""
        coordinates = [float(u) for u in row]
        if len(coordinates) != len(self.dims):
            raise ValueError(
                f"{self.name}: {len(coordinates)} coordinates for {len(self.dims)} dimensions"
            )
        return {
            name: dim.from_unit(u)
            for (name, dim), u in zip(self.dims.items(), coordinates, strict=True)
        }

    def resolve(
        self, point: Mapping[str, Any], epochs: int, layers: Sequence[str] = LOGICNET.layer_names
    ) -> dict[str, Any]:
        """``{"lr": the peak rate (train.lr), "scheduler": a schedulers: entry}`` for a budget
        of ``epochs`` updates of a network of these ``layers`` (per-layer forms)."""
        if type(epochs) is not int or epochs < 1:
            raise ValueError(
                f"{self.name}: a budget is a positive number of updates, got {epochs!r}"
            )
        missing = sorted(set(self.dims) - set(point))
        if missing:
            raise ValueError(f"{self.name}: the point lacks {missing}")
        values = {**self.fixed, **point}
        lr = values[LR]
        try:
            form = FORMS[self.form_name]
            if self.form_name in LAYERED_FORMS:
                arguments = form(values, epochs, layers)
            else:
                arguments = form(values, epochs)
        except KeyError as error:
            raise ValueError(
                f"{self.name}: the form {self.form_name!r} needs the parameter {error.args[0]!r};"
                " to search the type's own arguments as they are, use form: direct"
            ) from None
        values.pop(LR)
        return {"lr": float(lr), "scheduler": {"type": self.type, **values, **arguments}}


def make_space(
    name: str,
    type: str,
    parameters: Mapping[str, Any] | None = None,
    lr: Dimension | None = None,
    form: str | None = None,
) -> SearchSpace:
    """A space from one mapping, as params.yaml writes it: dimensions are searched, other
    values fixed; ``lr`` (the shared peak range) goes first."""
    parameters = dict(parameters or {})
    dims: dict[str, Dimension] = {LR: lr or DEFAULT_LR}
    dims.update({k: v for k, v in parameters.items() if isinstance(v, DIMENSIONS)})
    fixed = {k: v for k, v in parameters.items() if not isinstance(v, DIMENSIONS)}
    return SearchSpace(name, type, dims, fixed, form)


def study_seed(seed: int, name: str, study: int) -> np.random.SeedSequence:
    """The seed of one (schedule, study) sequence: the search seed, the schedule's stable name
    words and the study index, always the same number of words, so no two keys collide."""
    if type(seed) is not int or seed < 0:
        raise ValueError(f"a search seed is a non-negative integer, got {seed!r}")
    return np.random.SeedSequence([seed, *name_words(name, 4, "little"), study])


def draw(space: SearchSpace, trials: int, studies: int, seed: int) -> FloatArray:
    """Unit points, shape (studies, trials, dims): one scrambled Sobol' sequence per study.

    A Sobol' run of 2**m points puts exactly 2**(m - k) points in each dyadic interval of width
    2**-k of every dimension; other lengths lose that balance, so they draw a
    :class:`BalanceWarning` (the points remain valid, only less evenly spread).
    """
    from scipy.stats import qmc  # a second to import: only the search pays it

    for label, count in (("trials", trials), ("studies", studies)):
        if type(count) is not int or count < 1:
            raise ValueError(f"{label} must be a positive integer, got {count!r}")
    balanced = trials & (trials - 1) == 0
    if not balanced:
        warnings.warn(
            f"{trials} trials is not a power of two: Sobol' points lose their balance",
            BalanceWarning,
            stacklevel=2,
        )
    runs = []
    for study in range(studies):
        rng = np.random.default_rng(study_seed(seed, space.name, study))
        sobol = qmc.Sobol(len(space.dims), scramble=True, rng=rng)
        with warnings.catch_warnings():  # scipy's own balance warning; ours is raised above
            warnings.simplefilter("ignore", UserWarning)
            runs.append(sobol.random(trials))
    return np.stack(runs).astype(np.float64)


def draw_all(
    spaces: Mapping[str, SearchSpace], trials: int, studies: int, seed: int
) -> dict[str, FloatArray]:
    """Every schedule's unit points: the same trials and studies for each, the equal budget."""
    return {name: draw(space, trials, studies, seed) for name, space in spaces.items()}


def points(space: SearchSpace, unit: FloatArray) -> list[dict[str, Any]]:
    """One study's unit points, shape (trials, dims), as points of the space."""
    unit = np.asarray(unit, dtype=np.float64)
    if unit.ndim != 2 or unit.shape[1] != len(space.dims):
        raise ValueError(
            f"{space.name}: expected unit points of shape (trials, {len(space.dims)}),"
            f" got {unit.shape}; pass one study at a time"
        )
    return [space.from_unit(row) for row in unit]


DEFAULT_LR = LogUniform(1e-3, 1.0)
FINAL_RATIO = LogUniform(1e-3, 1.0)  # the total decay: from none to a thousandfold
BUDGET_FRACTION = LogUniform(0.01, 0.5)  # how often a step schedule decays


def _default_spaces() -> dict[str, SearchSpace]:
    ratio = {"final_ratio": FINAL_RATIO}
    milestones = {f"milestone_{i}": Uniform(0.1, 0.9) for i in (1, 2, 3)}
    plateau = {
        "factor": Uniform(0.1, 0.9),
        "patience_fraction": LogUniform(0.005, 0.1),
        "threshold": LogUniform(1e-4, 0.1),
        "monitor": "loss",
        "mode": "min",
        "threshold_mode": "rel",  # relative: the same threshold for losses of any size
    }
    warmup = {"warmup_fraction": Uniform(0.01, 0.25), "start_factor": 0.01}
    one_cycle = {"pct_start": Uniform(0.05, 0.5), "anneal_strategy": Choice(("cos", "linear"))}
    layers = {"first_final_ratio": FINAL_RATIO, "last_final_ratio": FINAL_RATIO}
    growing = {"initial": IntUniform(1, 8), "factor": 2, "every_fraction": BUDGET_FRACTION}
    spaces = [
        make_space("constant", "constant"),
        make_space("manual", "manual", {"every_fraction": BUDGET_FRACTION, **ratio}),
        make_space("StepLR", "StepLR", {"step_fraction": BUDGET_FRACTION, **ratio}),
        make_space("MultiStepLR", "MultiStepLR", {**milestones, **ratio}),
        make_space("ExponentialLR", "ExponentialLR", ratio),
        make_space("CosineAnnealingLR", "CosineAnnealingLR", {"eta_min": 0.0}),
        make_space("ReduceLROnPlateau", "ReduceLROnPlateau", plateau),
        make_space("warmup_cosine", "SequentialLR", warmup, form="warmup_cosine"),
        make_space("OneCycleLR", "OneCycleLR", one_cycle),
        make_space("LambdaLR", "LambdaLR", layers, form="layer_decay"),
        make_space("growing_batch", "batch_size", growing),
    ]
    return {space.name: space for space in spaces}


DEFAULT_SPACES: Mapping[str, SearchSpace] = _default_spaces()


@dataclass(frozen=True)
class SearchPlan:
    """A ``search`` section: how many trials and studies, the seed, and every space."""

    trials: int
    studies: int
    seed: int
    spaces: Mapping[str, SearchSpace]

    def __post_init__(self) -> None:
        for key in _PLAN_DEFAULTS:
            value = getattr(self, key)
            least = 0 if key == "seed" else 1
            if type(value) is not int or value < least:
                raise ValueError(f".{key}: got {value!r}; must be an integer >= {least}")
        if not self.spaces:
            raise ValueError(".spaces: at least one space")

    def draw(self) -> dict[str, FloatArray]:
        return draw_all(self.spaces, self.trials, self.studies, self.seed)


_PLAN_DEFAULTS = {"trials": 16, "studies": 3, "seed": 0}
_YAML_DIMENSIONS: dict[str, Callable[[list[Any]], Dimension]] = {
    "log_uniform": lambda v: LogUniform(*_floats(v)),
    "uniform": lambda v: Uniform(*_floats(v)),
    "int_uniform": lambda v: IntUniform(*_ints(v)),
    "int_log_uniform": lambda v: IntUniform(*_ints(v), log=True),
    "choice": lambda v: Choice(tuple(v)),
}


def _floats(value: list[Any]) -> tuple[float, float]:
    if len(value) != 2 or not all(type(v) in (int, float) for v in value):
        raise ValueError(f"expected [low, high] numbers, got {value!r}")
    return float(value[0]), float(value[1])


def _ints(value: list[Any]) -> tuple[int, int]:
    if len(value) != 2 or not all(type(v) is int for v in value):
        raise ValueError(f"expected [low, high] integers, got {value!r}")
    return value[0], value[1]


def parse_dimension(value: Any) -> Dimension | None:
    """A one-key mapping such as ``{log_uniform: [0.001, 1.0]}`` is a dimension; any other
    value is fixed (None)."""
    if not isinstance(value, dict) or not set(value) & set(_YAML_DIMENSIONS):
        return None
    if len(value) != 1:
        raise ValueError(f"a dimension is a mapping with one key, got {value!r}")
    ((kind, bounds),) = value.items()
    if not isinstance(bounds, list):
        raise ValueError(f"{kind} takes a list, got {bounds!r}")
    return _YAML_DIMENSIONS[kind](bounds)


def parse_search(section: Mapping[str, Any]) -> SearchPlan:
    """The ``search`` section of params.yaml (see the module docstring), or ValueError naming
    the key at fault."""
    known = {"trials", "studies", "seed", "lr", "spaces"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"search: unknown keys {unknown}; allowed: {sorted(known)}")
    lr = _at("search.lr", parse_dimension, section.get("lr", {"log_uniform": [1e-3, 1.0]}))
    if lr is None:
        raise ValueError("search.lr: must be a dimension, such as {log_uniform: [1.0e-3, 1.0]}")
    raw_spaces = section.get("spaces")
    if not isinstance(raw_spaces, dict) or not raw_spaces:
        raise ValueError("search.spaces: a mapping of schedule name -> space is required")
    spaces = {}
    for name, raw in raw_spaces.items():
        spaces[name] = _at(f"search.spaces.{name}", _parse_space, name, raw, lr)
    counts = {key: section.get(key, default) for key, default in _PLAN_DEFAULTS.items()}
    return _at("search", lambda: SearchPlan(spaces=spaces, **counts))


def _parse_space(name: str, raw: Any, lr: Dimension) -> SearchSpace:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise ValueError(f"expected a mapping with a 'type', got {raw!r}")
    if LR in raw:
        raise ValueError("lr is shared: set it once, as search.lr")
    parameters = {}
    for key, value in raw.items():
        if key not in ("type", "form"):
            dim = _at(f".{key}", parse_dimension, value)
            parameters[key] = value if dim is None else dim
    return make_space(name, raw["type"], parameters, lr, raw.get("form"))


def _at(path: str, build: Callable[..., Any], *args: Any) -> Any:
    """``build(*args)``; a ValueError it raises is prefixed with the key path."""
    try:
        return build(*args)
    except ValueError as error:
        message = str(error)
        raise ValueError(
            path + message if message.startswith(".") else f"{path}: {message}"
        ) from None
