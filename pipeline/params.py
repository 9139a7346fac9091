"""params.yaml, validated once at the edge into frozen typed objects.

Every problem is reported with the key path, the value found and what is allowed, before any
stage does work. Nothing read here is ever executed: scheduler rules go through
:mod:`pipeline.expressions`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

if TYPE_CHECKING:  # importing schedules imports torch: only the stages that need it pay
    from pipeline.schedules import ScheduleSpec

# How far scheduler entries are checked: "trial" builds and steps each on a throwaway optimizer
# (train, validate, preview); "parse" checks types and arguments (plot, which only needs the
# names); "skip" leaves them to the stages that read them (generate, which reads none).
ScheduleCheck = Literal["trial", "parse", "skip"]

MAX_PARAMS_BYTES = 1_000_000
MAX_YAML_NODES = 100_000  # far above any real params file, far below a YAML alias bomb
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ParamsError(ValueError):
    """params.yaml is wrong; the message names every bad key, its value and what is allowed."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


PositiveInt = Annotated[StrictInt, Field(gt=0)]


class TestSetParams(_Frozen):
    n_samples: Annotated[StrictInt, Field(gt=0, le=1_000_000)] = 500
    seed: StrictInt = 2026


class DataParams(_Frozen):
    n_samples: Annotated[StrictInt, Field(ge=2, le=1_000_000)] = 20
    noise: Annotated[StrictFloat, Field(ge=0, le=10)] = 0.2
    test: TestSetParams = TestSetParams()


class ModelParams(_Frozen):
    hidden_dim: Annotated[StrictInt, Field(gt=0, le=4096)] = 3


class TrainParams(_Frozen):
    lr: Annotated[StrictFloat, Field(gt=0, le=100)] = 0.01
    epochs: Annotated[StrictInt, Field(gt=0, le=1_000_000)] = 1000
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.0
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    seeds: Annotated[StrictInt, Field(ge=1, le=10_000)] = 1


class AnalysisParams(_Frozen):
    target_loss: Annotated[StrictFloat, Field(gt=0)] = 0.1
    alpha: Annotated[StrictFloat, Field(gt=0, lt=1)] = 0.05


class MlflowParams(_Frozen):
    experiment: Annotated[str, Field(min_length=1, max_length=200)] = "lr-schedulers"


class _RawParams(_Frozen):
    seed: StrictInt = 42
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    mlflow: MlflowParams = MlflowParams()
    analysis: AnalysisParams = AnalysisParams()
    schedulers: Annotated[dict[str, dict[str, Any]], Field(min_length=1)]


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

    @property
    def seeds(self) -> list[int]:
        """``seed``, ``seed + 1``, ...: each draws its own train set and initial weights."""
        return [self.seed + offset for offset in range(self.train.seeds)]

    def schedule(self, name: str) -> ScheduleSpec:
        for spec in self.schedules:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def digest(self, *sections: str) -> str:
        """sha256 of the named top-level sections (all when none), canonical JSON."""
        chosen = {k: v for k, v in self.raw.items() if not sections or k in sections}
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
    for name, spec in raw.schedulers.items():
        if not RUN_NAME.match(name):
            problems.append(
                f"schedulers.{name}: the run name {name!r} is not allowed; use letters, digits,"
                " '_', '.' or '-' (at most 64, starting with a letter or digit)"
            )
            continue
        if schedules == "skip":
            continue
        from pipeline.schedules import SpecError, parse_spec

        train = raw.train
        try:
            specs.append(
                parse_spec(
                    name,
                    spec,
                    train.epochs,
                    train.lr,
                    train.optimizer,
                    train.momentum,
                    trial=schedules == "trial",
                )
            )
        except SpecError as error:
            problems.append(f"schedulers.{name}{error.path}: {error}")
    if problems:
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))
    return Params(
        seed=raw.seed,
        data=raw.data,
        model=raw.model,
        train=raw.train,
        mlflow=raw.mlflow,
        analysis=raw.analysis,
        schedules=tuple(specs),
        raw=json.loads(json.dumps(document, default=str)),
    )


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
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        if item["type"] == "missing":
            lines.append(f"{path}: missing; it is required")
        elif item["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key (value {item['input']!r}); remove it or fix a typo")
        else:
            lines.append(
                f"{path}: got {item['input']!r}; {item['msg'][0].lower()}{item['msg'][1:]}"
            )
    return f"{source} is invalid:\n" + "\n".join(f"  - {line}" for line in lines)


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
