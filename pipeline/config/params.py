"""params.yaml, validated at the edge into frozen typed objects.

Every problem is reported with the key path, the value found and what is allowed, before any
stage does work. Nothing read here is ever executed: scheduler rules go through
:mod:`pipeline.schedules.expressions`.

Each stage checks the sections it reads. This module checks every section but two, which need
code that only the tune stage imports: ``workloads`` (:mod:`pipeline.problems.workloads`) and
``search`` (:mod:`pipeline.comparison.search`); :mod:`pipeline.comparison.plan` checks them,
and ``lrsched validate`` checks the whole file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
)

from pipeline.core.validation import RUN_NAME, Frozen, ParamsError, raise_problems
from pipeline.problems.architecture import Architecture, ModelParams

if TYPE_CHECKING:  # importing schedules imports torch: only the stages that need it pay
    from pipeline.schedules.specs import ScheduleSpec

MOONS_FEATURES, MOONS_CLASSES = 2, 2  # the train stage's data: points in the plane, two moons
# How far scheduler entries are checked: "trial" builds and steps each on a throwaway optimizer
# (train, validate, preview); "parse" checks types and arguments (plot, which only needs the
# names); "skip" leaves them to the stages that read them (generate, which reads none).
ScheduleCheck = Literal["trial", "parse", "skip"]

MAX_PARAMS_BYTES = 1_000_000
MAX_YAML_NODES = 100_000  # far above any real params file, far below a YAML alias bomb
# A Ray cluster's GCS address, HOST:PORT (a name, IPv4 or [IPv6]), or "auto".
RAY_ADDRESS = re.compile(
    r"^(auto|([A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5})$"
)


PositiveInt = Annotated[StrictInt, Field(gt=0)]
MAX_SHARDS = 10_000
MAX_GRID = 50  # values of one grid axis (train.lr, data.noise)
Rate = Annotated[StrictFloat, Field(gt=0, le=100)]
Noise = Annotated[StrictFloat, Field(ge=0, le=10)]


def _grid_axis(values: Any) -> Any:
    """A list of values is a grid axis: at least one value, each once."""
    if isinstance(values, list):
        if not values:
            raise ValueError("an empty list; give one value or a list of values to sweep")
        if len(values) > MAX_GRID:
            raise ValueError(f"{len(values)} values; a grid axis has at most {MAX_GRID}")
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise ValueError(f"{repeated} repeated; each value of a grid axis once")
    return values


class TestSetParams(Frozen):
    n_samples: Annotated[StrictInt, Field(gt=0, le=1_000_000)] = 500
    seed: StrictInt = 2026


class DataParams(Frozen):
    n_samples: Annotated[StrictInt, Field(ge=2, le=1_000_000)] = 20
    noise: Noise | tuple[Noise, ...] = 0.2  # a list is a grid: every run at every noise
    test: TestSetParams = TestSetParams()

    _axis = field_validator("noise", mode="before")(_grid_axis)


class TrainParams(Frozen):
    lr: Rate | tuple[Rate, ...] = 0.01  # a list is a grid: every schedule from every rate
    epochs: Annotated[StrictInt, Field(gt=0, le=1_000_000)] = 1000
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    seeds: Annotated[StrictInt, Field(ge=1, le=10_000)] = 1

    _axis = field_validator("lr", mode="before")(_grid_axis)


class AnalysisParams(Frozen):
    target_loss: Annotated[StrictFloat, Field(gt=0)] = 0.1
    alpha: Annotated[StrictFloat, Field(gt=0, lt=1)] = 0.05


class MlflowParams(Frozen):
    experiment: Annotated[str, Field(min_length=1, max_length=200)] = "lr-schedulers"
    # Where each train registers its best run's model (alias `champion`: the best so far);
    # null: register nothing.
    registered_model: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")] | None = (
        "lrsched-logicnet"
    )


class TargetParams(Frozen):
    # The schedule whose tuning with a larger budget sets each workload's target: the median
    # over studies of its best validation loss.
    reference: Annotated[str, Field(min_length=1)] = "constant"
    trials: Annotated[StrictInt, Field(ge=1, le=4096)] = 32  # per study, >= search.trials


class TuningParams(Frozen):
    eval_every: Annotated[StrictInt, Field(ge=1, le=100_000)] = 10  # updates between evaluations
    target: TargetParams = TargetParams()
    reruns: Annotated[StrictInt, Field(ge=1, le=1000)] = 10  # seeds the chosen settings re-run on
    r_max: Annotated[StrictFloat, Field(gt=1, le=1000)] = 4.0  # AlgoPerf's profile limit
    edge: Annotated[StrictFloat, Field(ge=0, lt=0.5)] = 0.05  # share of the lr range at each end
    bootstrap: Annotated[StrictInt, Field(ge=10, le=1_000_000)] = 1000  # draws per budget curve


def _ray_address(value: Any) -> Any:
    if isinstance(value, str) and RAY_ADDRESS.match(value):
        return value
    raise ValueError("'auto' or the HOST:PORT of a Ray cluster's head, such as 10.0.0.5:6379")


def _shard_count(value: Any) -> Any:
    if value == "auto" or (type(value) is int and 1 <= value <= MAX_SHARDS):
        return value
    raise ValueError(f"'auto' or a whole number of shards from 1 to {MAX_SHARDS}")


class ExecutionParams(Frozen):
    # Where the train and tune stages train: in this process ("local") or as Ray tasks on a
    # cluster ("ray", docs/cluster.md). The outputs are the same bytes either way, so no stage
    # lists this section among its params and switching engines re-runs nothing.
    engine: Literal["local", "ray"] = "local"
    # "auto": $RAY_ADDRESS, else the cluster `ray start --head` started on this host.
    address: str = "auto"
    # How many batched computations the train stage's runs are cut into. "auto": one in this
    # process (local); one per CPU of the cluster, or per GPU where the runs train on GPUs (ray).
    shards: Literal["auto"] | int = "auto"

    _address = field_validator("address", mode="before")(_ray_address)
    _shards = field_validator("shards", mode="before")(_shard_count)


class _RawParams(Frozen):
    seed: StrictInt = 42
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    mlflow: MlflowParams = MlflowParams()
    analysis: AnalysisParams = AnalysisParams()
    schedulers: Annotated[dict[str, dict[str, Any]], Field(min_length=1)]
    workloads: Any = None  # checked by pipeline.comparison.plan; absent: its defaults
    search: Any = None  # checked by pipeline.comparison.plan; absent: its defaults
    tuning: TuningParams = TuningParams()
    execution: ExecutionParams = ExecutionParams()


@dataclass(frozen=True)
class GridPoint:
    """One point of the grid: the rate every schedule starts from and the data's noise."""

    lr: float
    noise: float
    label: str  # "" without a grid; else "@lr=0.05", "@noise=0.3" or "@lr=0.05,noise=0.3"


@dataclass(frozen=True)
class Run:
    """One named run of the pipeline: a schedule at a grid point (over every seed)."""

    name: str
    spec: ScheduleSpec
    point: GridPoint


def _axis_values(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)


@dataclass(frozen=True)
class Params:
    """The whole, validated params.yaml; ``schedules`` keeps the order of the file."""

    seed: int
    data: DataParams
    model: ModelParams
    train: TrainParams
    mlflow: MlflowParams
    analysis: AnalysisParams
    schedules: tuple[ScheduleSpec, ...]
    raw: dict[str, Any] = field(repr=False)
    # The fair comparison's protocol (stages/tune.py); its workloads and search spaces:
    # pipeline.comparison.plan.ComparisonParams.
    tuning: TuningParams = field(default_factory=TuningParams)
    execution: ExecutionParams = field(default_factory=ExecutionParams)

    @property
    def architecture(self) -> Architecture:
        """The train stage's network: ``model`` on the two moons (2 features, 2 classes)."""
        return self.model.architecture(MOONS_FEATURES, MOONS_CLASSES)

    @property
    def seeds(self) -> list[int]:
        """``seed``, ``seed + 1``, ...: each draws its own train set and initial weights."""
        return [self.seed + offset for offset in range(self.train.seeds)]

    @property
    def grid(self) -> list[GridPoint]:
        """The grid over ``train.lr`` x ``data.noise``; one point when both are numbers."""
        lrs, noises = _axis_values(self.train.lr), _axis_values(self.data.noise)
        points = []
        for noise in noises:
            for lr in lrs:
                parts = [f"lr={lr:g}"] * (len(lrs) > 1) + [f"noise={noise:g}"] * (len(noises) > 1)
                points.append(GridPoint(lr, noise, "@" + ",".join(parts) if parts else ""))
        return points

    @property
    def runs(self) -> list[Run]:
        """Every named run, grid point by grid point, schedules in file order."""
        return [
            Run(spec.name + point.label, spec, point)
            for point in self.grid
            for spec in self.schedules
        ]

    @property
    def replicate_count(self) -> int:
        """How many trainings ``train`` runs: each of :attr:`runs` at each seed. Counted from the
        ``schedulers`` list, so that params read without their schedules know it too."""
        return len(self.raw["schedulers"]) * len(self.grid) * len(self.seeds)

    def at(self, point: GridPoint) -> Params:
        """These params at one grid point: ``train.lr`` and ``data.noise`` single numbers."""
        from dataclasses import replace

        return replace(
            self,
            train=self.train.model_copy(update={"lr": point.lr}),
            data=self.data.model_copy(update={"noise": point.noise}),
        )

    def schedule(self, name: str) -> ScheduleSpec:
        for spec in self.schedules:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as the document it was parsed from: scheduler rules compile to closures, which
        do not pickle, and parsing again gives equal Params (the tuning's worker processes)."""
        return (parse_params, (self.raw, "params", "parse"))

    def digest(self, *sections: str) -> str:
        """sha256 of the named top-level sections, canonical JSON. None named: every section
        that can change a result (all but ``execution``, which only says where runs train)."""
        chosen = {
            k: v for k, v in self.raw.items() if (k in sections if sections else k != "execution")
        }
        canonical = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float, as YAML 1.2 and every user expects."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_params(path: str | Path, schedules: ScheduleCheck = "trial") -> Params:
    """Read and validate a params file, or raise :class:`ParamsError`."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as error:
        raise ParamsError(f"cannot read {path}: {error.strerror}") from None
    if len(text) > MAX_PARAMS_BYTES:
        raise ParamsError(f"{path}: {len(text)} bytes; a params file is at most {MAX_PARAMS_BYTES}")
    try:
        document = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    return parse_params(document, source=str(path), schedules=schedules)


def parse_params(
    document: Any, source: str = "params.yaml", schedules: ScheduleCheck = "trial"
) -> Params:
    """Validate an already-parsed params mapping."""
    if not isinstance(document, dict):
        raise ParamsError(f"{source}: expected a mapping at the top, got {_kind(document)}")
    _check_size(document, source)
    try:
        raw = _RawParams.model_validate(document)
    except ValidationError as error:
        raise ParamsError(_format_errors(error, source)) from None
    problems, specs = [], []
    try:
        layers = raw.model.architecture(MOONS_FEATURES, MOONS_CLASSES).layer_names
    except ValueError as error:
        problems.append(f"model.conv: {error} (the train stage's two moons are 2-D points)")
        layers = ()
    for name, spec in raw.schedulers.items():
        if not RUN_NAME.match(name):
            problems.append(
                f"schedulers.{name}: the run name {name!r} is not allowed; use letters, digits,"
                " '_', '.' or '-' (at most 64, starting with a letter or digit)"
            )
            continue
        if schedules == "skip":
            continue
        from pipeline.schedules.specs import SpecError, parse_spec

        try:
            specs.append(parse_spec(name, spec, raw.train.epochs))
        except SpecError as error:
            problems.append(f"schedulers.{name}{error.path}: {error}")
            continue
        groups = specs[-1].groups
        if layers and specs[-1].per_layer and set(groups) != set(layers):
            problems.append(
                f"schedulers.{name}.lr_lambda: per-layer rules need exactly the layers of"
                f" model ({', '.join(layers)}); got {', '.join(groups)}"
            )
    raise_problems(problems, source)
    params = Params(
        seed=raw.seed,
        data=raw.data,
        model=raw.model,
        train=raw.train,
        mlflow=raw.mlflow,
        analysis=raw.analysis,
        schedules=tuple(specs),
        raw=json.loads(json.dumps(document, default=str)),
        tuning=raw.tuning,
        execution=raw.execution,
    )
    if schedules == "trial":
        try_schedules(params, source)
    return params


def try_schedules(params: Params, source: str = "params.yaml") -> None:
    """Build and step every schedule on a throwaway optimizer, so that what only torch can find
    wrong (an argument of the wrong type, a rate that blows up) fails now, not mid-run."""
    from pipeline.schedules.specs import SpecError, try_spec

    train, problems = params.train, []
    rates = _axis_values(train.lr)
    for spec in params.schedules:
        try:
            # Tried at the grid's extremes: a rate that goes bad does so at one end or the other.
            for lr in sorted({min(rates), max(rates)}):
                try_spec(spec, train.epochs, lr, train.optimizer, train.momentum)
        except SpecError as error:
            problems.append(f"schedulers.{spec.name}{error.path}: {error}")
    raise_problems(problems, source)


def _check_size(document: Any, source: str) -> None:
    # Aliases let a tiny file expand into billions of nodes; count with a budget and stop early.
    budget, stack = MAX_YAML_NODES, [document]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise ParamsError(
                f"{source}: more than {MAX_YAML_NODES} values once aliases are expanded;"
                " is it a YAML alias bomb?"
            )
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in _without_union_noise(error.errors()):
        path = ".".join(str(part) for part in item["loc"])
        if item["type"] == "missing":
            lines.append(f"{path}: missing; it is required")
        elif item["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key (value {item['input']!r}); remove it or fix a typo")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: got {item['input']!r}; {message[0].lower()}{message[1:]}")
    return f"{source} is invalid:\n" + "\n".join(f"  - {line}" for line in lines)


def _without_union_noise(errors: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A number-or-list key (train.lr, data.noise) fails as both; report the form the user chose.

    pydantic names each member of the union in the error's location ("constrained-float",
    "tuple[...]"); those names are dropped, and of the two failures only the one matching the
    value's form (a list or a single value) is kept.
    """
    kept: list[Mapping[str, Any]] = []
    for item in errors:
        loc = list(item["loc"])
        member = next((part for part in loc if _is_union_member(part)), None)
        if member is not None:
            at = loc.index(member)
            value = item["input"] if at + 1 == len(loc) else None
            chose_list = at + 1 < len(loc) or isinstance(value, list)
            if member.startswith("tuple[") != chose_list:
                continue
            item = {**item, "loc": tuple(loc[:at] + loc[at + 1 :])}
        kept.append(item)
    return kept


def _is_union_member(part: Any) -> bool:
    names = ("tuple[", "constrained-", "float")
    return isinstance(part, str) and part.startswith(names)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
