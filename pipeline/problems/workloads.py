"""Workloads for comparing schedules after AlgoPerf's external-tuning ruleset.

A workload is a data set, a model and a training budget: a scikit-learn generator (two moons,
two concentric circles, or the 8x8 images of handwritten digits), the sizes of its train,
validation and test sets, its noise, the number of full-batch updates and the network
(``model``, a member of :mod:`pipeline.problems.architecture`'s family; LogicNet by default).
Held-out workloads are never used for tuning; they only check that the settings tuned on the
others carry over. Tuning reads the validation set only; the test set is read once, for the
final report.

Every split is drawn locally from its own seed, derived from (seed, workload name, split) with
:class:`numpy.random.SeedSequence` and the sha256 of the name: adding, removing or reordering
workloads never changes another workload's data, and the train set of another seed leaves the
validation and test sets as they are (``generate(workload, seed, train_seed=...)``).

The defaults, as they would appear in params.yaml (a test checks that this snippet parses to
:data:`DEFAULT_WORKLOADS`)::

    workloads:
      - name: tutorial          # the tutorial's: 20 two-moons points, noise 0.2, 1000 updates
        generator: moons
        n_train: 20
        n_validation: 200
        n_test: 500
        noise: 0.2
        epochs: 1000
        held_out: false
      - name: more_points       # five times the points
        generator: moons
        n_train: 100
        n_validation: 200
        n_test: 500
        noise: 0.2
        epochs: 1000
        held_out: false
      - name: more_noise        # the moons overlap: no rule classifies every point
        generator: moons
        n_train: 20
        n_validation: 200
        n_test: 500
        noise: 0.35
        epochs: 1000
        held_out: false
      - name: long_budget       # three times the updates
        generator: moons
        n_train: 20
        n_validation: 200
        n_test: 500
        noise: 0.2
        epochs: 3000
        held_out: false
      - name: wide_hidden       # held out: a model wider than any tuned on
        generator: moons
        n_train: 20
        n_validation: 200
        n_test: 500
        noise: 0.2
        epochs: 1000
        model: {hidden: [16]}
        held_out: true
      - name: circles           # held out: data of a shape never tuned on
        generator: circles
        factor: 0.5             # the inner circle's radius, as a fraction of the outer's
        n_train: 20
        n_validation: 200
        n_test: 500
        noise: 0.1
        epochs: 1000
        held_out: true
      - name: deep_relu         # held out: a deeper network of ReLU units (two hidden layers of 8)
        generator: moons
        n_train: 20
        n_validation: 200
        n_test: 500
        noise: 0.2
        epochs: 1000
        model: {hidden: [8, 8], activation: relu}
        held_out: true
      - name: digits            # held out: 8x8 images of ten digits, for a small conv net
        generator: digits
        n_train: 64
        n_validation: 200
        n_test: 500
        noise: 0.0
        epochs: 200
        model: {conv: {channels: 2, kernel: 3}, hidden: [8], activation: relu}
        held_out: true

Each tuned workload changes one thing of the tutorial's (points, noise, budget), so that a
schedule's gain can be traced to it. The held-out ones change what tuning never varies: the
model (a hidden layer five times as wide) and the shape of the data (a closed boundary, which
LogicNet's three tanh units can only roughly draw). Settings that merely fit the moons at width 3
show up there. Sizes are kept small: tuning trains several hundred trials per tuned workload,
and a batched step costs in proportion to the train set (``more_points`` has 100 points, not
200, for that reason); validation is only evaluated, never trained on.

At ``noise: 0`` the generators place points deterministically along the curves, so the splits
of one workload share points: validation and test are then no independent samples.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import numpy as np
from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.core import files
from pipeline.core.seeds import name_words
from pipeline.core.validation import RUN_NAME, Frozen, raise_problems
from pipeline.problems.architecture import Architecture, ConvParams, ModelParams
from pipeline.problems.data import Dataset

Generator = Literal["moons", "circles", "digits"]
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
HEADER = ("workload", "split", "label", "features")  # features: space-separated floats
DIGITS = 1797  # scikit-learn's 8x8 digits: the images there are to split
DIGIT_CLASSES, DIGIT_PIXELS = 10, 64
MAX_WORKLOADS = 100
MAX_SEED = 2**64  # seeds are 0 <= seed < MAX_SEED: two of SeedSequence's 32-bit words
# The first word of every split's spawn key: keeps these streams apart from any other use of
# SeedSequence(seed) in the project (its own spawn() children have keys (0,), (1,), ...).
_DOMAIN = int.from_bytes(b"wkld", "big")

SetSize = Annotated[StrictInt, Field(ge=2, le=1_000_000)]


class Workload(Frozen):
    """One workload: a data set and a training budget."""

    name: StrictStr
    generator: Generator
    # circles only: the inner circle's radius as a fraction of the outer's (make_circles').
    factor: Annotated[StrictFloat, Field(gt=0, lt=1)] | None = Field(
        default=None, validate_default=True
    )
    n_train: SetSize
    n_validation: SetSize
    n_test: SetSize
    noise: Annotated[StrictFloat, Field(ge=0, le=10)]
    epochs: Annotated[StrictInt, Field(gt=0, le=1_000_000)]  # the budget: full-batch updates
    model: ModelParams = ModelParams()  # the network; LogicNet by default
    held_out: StrictBool = False  # never tuned on; only checks that the tuned settings carry over
    target_loss: Annotated[StrictFloat, Field(gt=0)] | None = None  # None: derived later

    @field_validator("name")
    @classmethod
    def _run_name(cls, name: str) -> str:
        if not RUN_NAME.match(name):
            raise ValueError(
                "use letters, digits, '_', '.' or '-' (at most 64, starting with a letter or digit)"
            )
        return name

    @field_validator("factor")
    @classmethod
    def _factor_for_circles(cls, factor: float | None, info: ValidationInfo) -> float | None:
        generator = info.data.get("generator")  # absent when the generator itself was wrong
        if generator == "circles" and factor is None:
            raise PydanticCustomError(
                "factor_missing",
                "circles need factor, the inner circle's radius as a fraction of the outer's"
                " (0 < factor < 1)",
            )
        if generator != "circles" and factor is not None:
            raise ValueError("only circles take a factor; remove it")
        return factor

    def problems(self, key: str) -> list[str]:
        """What the entry at ``key`` asks that its data cannot give."""
        found = []
        try:
            self.architecture  # noqa: B018 -- raises where the model cannot take these data
        except ValueError as error:
            found.append(f"{key}.model.conv: {error} ({self.generator} gives {self._shape()})")
        total = self.n_train + self.n_validation + self.n_test
        if self.generator == "digits" and total > DIGITS:
            found.append(
                f"{key}.n_train: n_train + n_validation + n_test is {total}; the digits have"
                f" {DIGITS} images to split"
            )
        return found

    def _shape(self) -> str:
        return "8x8 images" if self.generator == "digits" else "points in the plane"

    @property
    def architecture(self) -> Architecture:
        """The network on these data: 8x8 images in ten classes, or points in two."""
        if self.generator == "digits":
            return self.model.architecture(DIGIT_PIXELS, DIGIT_CLASSES)
        return self.model.architecture(2, 2)

    def size(self, split: Split) -> int:
        return {"train": self.n_train, "validation": self.n_validation, "test": self.n_test}[split]


# The tutorial's problem, and variants that each change one thing from it.
TUTORIAL = Workload(
    name="tutorial",
    generator="moons",
    n_train=20,
    n_validation=200,
    n_test=500,
    noise=0.2,
    epochs=1000,
)
DEFAULT_WORKLOADS: tuple[Workload, ...] = (
    TUTORIAL,
    TUTORIAL.model_copy(update={"name": "more_points", "n_train": 100}),
    TUTORIAL.model_copy(update={"name": "more_noise", "noise": 0.35}),
    TUTORIAL.model_copy(update={"name": "long_budget", "epochs": 3000}),
    TUTORIAL.model_copy(
        update={"name": "wide_hidden", "model": ModelParams(hidden=(16,)), "held_out": True}
    ),
    TUTORIAL.model_copy(
        update={
            "name": "circles",
            "generator": "circles",
            "factor": 0.5,
            "noise": 0.1,
            "held_out": True,
        }
    ),
    TUTORIAL.model_copy(
        update={
            "name": "deep_relu",
            "model": ModelParams(hidden=(8, 8), activation="relu"),
            "held_out": True,
        }
    ),
    TUTORIAL.model_copy(
        update={
            "name": "digits",
            "generator": "digits",
            "n_train": 64,
            "noise": 0.0,
            "epochs": 200,
            "model": ModelParams(
                conv=ConvParams(channels=2, kernel=3), hidden=(8,), activation="relu"
            ),
            "held_out": True,
        }
    ),
)

_LIST = TypeAdapter(list[Workload])


def parse_workloads(
    value: Any, source: str = "params.yaml", key: str = "workloads"
) -> tuple[Workload, ...]:
    """Validate the ``workloads`` list of params.yaml, or raise :class:`ParamsError` naming every
    bad entry as ``workloads[2].noise: got -1; must be >= 0``."""
    if not isinstance(value, list):
        kind = "nothing" if value is None else type(value).__name__
        _invalid(source, [f"{key}: got {kind}; must be a list of workloads"])
    if not value:
        _invalid(source, [f"{key}: an empty list; give at least one workload"])
    if len(value) > MAX_WORKLOADS:
        _invalid(source, [f"{key}: {len(value)} workloads; at most {MAX_WORKLOADS}"])
    try:
        workloads = tuple(_LIST.validate_python(value))
    except ValidationError as error:
        _invalid(source, [_describe(item, key) for item in error.errors()])
    problems = _list_problems(workloads, key)
    if problems:
        _invalid(source, problems)
    return workloads


def workloads_section(document: Mapping[str, Any], source: str) -> tuple[Workload, ...]:
    """The ``workloads`` section of a params document; absent, :data:`DEFAULT_WORKLOADS`."""
    value = document.get("workloads")
    return DEFAULT_WORKLOADS if value is None else parse_workloads(value, source)


def _invalid(source: str, problems: list[str]) -> NoReturn:
    raise_problems(problems, source)
    raise AssertionError("unreachable: there were problems")


def _list_problems(workloads: Sequence[Workload], key: str) -> list[str]:
    problems: list[str] = []
    seen: dict[str, int] = {}
    for index, workload in enumerate(workloads):
        problems.extend(workload.problems(f"{key}[{index}]"))
        # Case-insensitively: names become run and file names, and some file systems fold case.
        first = seen.setdefault(workload.name.casefold(), index)
        if first != index:
            problems.append(
                f"{key}[{index}].name: got {workload.name!r}; already the name of {key}[{first}]"
                f" ({workloads[first].name!r}); each name once, whatever its case"
            )
    if all(workload.held_out for workload in workloads):
        problems.append(f"{key}: every workload is held out; leave at least one to tune on")
    return problems


def _describe(item: Mapping[str, Any], key: str) -> str:
    path = key + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item["loc"])
    kind, value, ctx = item["type"], item.get("input"), item.get("ctx") or {}
    allowed = {
        "greater_than": lambda: f"must be > {ctx['gt']:g}",
        "greater_than_equal": lambda: f"must be >= {ctx['ge']:g}",
        "less_than": lambda: f"must be < {ctx['lt']:g}",
        "less_than_equal": lambda: f"must be <= {ctx['le']:g}",
        "finite_number": lambda: "must be a finite number",
        "float_type": lambda: "must be a number",
        "int_type": lambda: "must be a whole number",
        "bool_type": lambda: "must be true or false",
        "string_type": lambda: "must be text",
        "literal_error": lambda: f"must be {ctx['expected']}",
        "model_type": lambda: "must be a mapping of " + ", ".join(Workload.model_fields),
    }
    if kind == "missing":
        return f"{path}: missing; it is required"
    if kind == "factor_missing":
        return f"{path}: missing; {item['msg']}"
    if kind == "extra_forbidden":
        keys = ", ".join(Workload.model_fields)
        return f"{path}: unknown key (value {value!r}); the keys are {keys}"
    if kind in allowed:
        return f"{path}: got {value!r}; {allowed[kind]()}"
    message = str(item["msg"]).removeprefix("Value error, ")
    return f"{path}: got {value!r}; {message[0].lower()}{message[1:]}"


@dataclass(frozen=True)
class Splits:
    """One workload's data: train (tuning trains on it), validation (tuning reads it), test
    (read once, for the final report)."""

    train: Dataset
    validation: Dataset
    test: Dataset

    def items(self) -> Iterator[tuple[Split, Dataset]]:
        yield from (("train", self.train), ("validation", self.validation), ("test", self.test))


def split_seed(name: str, split: Split, seed: int) -> np.random.SeedSequence:
    """The seed of one split of the named workload: ``seed`` as SeedSequence entropy, the split
    and the sha256 of the name in its spawn key (Python's hash() changes from run to run)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed: got {seed!r}; must be a whole number, 0 <= seed < 2**64")
    words = name_words(name, 8, "big")
    return np.random.SeedSequence(seed, spawn_key=(_DOMAIN, SPLITS.index(split), *words))


def _random(name: str, split: Split, seed: int, stream: int = 0) -> np.random.RandomState:
    """RandomState, the stream numpy keeps frozen, on the derived seed: byte-stable."""
    sequence = split_seed(name, split, seed)
    if stream:
        sequence = np.random.SeedSequence(seed, spawn_key=(*sequence.spawn_key, stream))
    return np.random.RandomState(np.random.MT19937(sequence))


def draw(workload: Workload, split: Split, seed: int) -> Dataset:
    """One split of a moons or circles workload, drawn from :func:`split_seed`: float64
    (n, 2), int64 (n,)."""
    random = _random(workload.name, split, seed)
    n = workload.size(split)
    if workload.generator == "circles":
        assert workload.factor is not None
        features, labels = _circles(n, workload.noise, workload.factor, random)
    else:
        features, labels = _moons(n, workload.noise, random)
    return Dataset(features, labels)


# scikit-learn's make_moons and make_circles, step for step and drawing the same random numbers,
# but with sines and cosines that give the same bits on every CPU. numpy's own take a vector
# path chosen by the CPU: as an SSE4.2-only Intel (qemu's Nehalem), circles of 20 points came out
# different in the last bit (tests/test_portability.py). mpmath computes in software, at more
# precision than a float64 holds, and rounds once.


def _trig(function: str, angles: np.ndarray) -> np.ndarray:
    import mpmath  # pure Python: the same digits on any machine

    with mpmath.workprec(96):
        evaluate = getattr(mpmath, function)
        return np.array([float(evaluate(mpmath.mpf(float(a)))) for a in angles], dtype=np.float64)


def _finish(
    x: np.ndarray, y: np.ndarray, out: int, inside: int, noise: float, random: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.utils import shuffle

    features = np.vstack([x, y]).T
    labels = np.hstack([np.zeros(out, dtype=np.intp), np.ones(inside, dtype=np.intp)])
    features, labels = shuffle(features, labels, random_state=random)
    features = features + random.normal(scale=noise, size=features.shape)
    return np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.int64)


def _moons(n: int, noise: float, random: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    out, inside = n // 2, n - n // 2
    outer, inner = np.linspace(0, np.pi, out), np.linspace(0, np.pi, inside)
    x = np.append(_trig("cos", outer), 1 - _trig("cos", inner))
    y = np.append(_trig("sin", outer), 1 - _trig("sin", inner) - 0.5)
    return _finish(x, y, out, inside, noise, random)


def _circles(
    n: int, noise: float, factor: float, random: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    out, inside = n // 2, n - n // 2
    outer = np.linspace(0, 2 * np.pi, out, endpoint=False)
    inner = np.linspace(0, 2 * np.pi, inside, endpoint=False)
    x = np.append(_trig("cos", outer), _trig("cos", inner) * factor)
    y = np.append(_trig("sin", outer), _trig("sin", inner) * factor)
    return _finish(x, y, out, inside, noise, random)


def _digits(workload: Workload, seed: int, train_seed: int) -> Splits:
    """Disjoint splits of scikit-learn's 1,797 digits: the test and validation images from a
    permutation of ``seed``, the train images from the rest by ``train_seed``; pixels scaled
    to [0, 1] (from 0..16: exact), plus Gaussian noise of ``noise``, each split its own."""
    from sklearn.datasets import load_digits  # its own 8x8 images, shipped with it: no download

    images = load_digits()
    pixels = np.asarray(images.data, dtype=np.float64) / 16.0
    labels = np.asarray(images.target, dtype=np.int64)
    name, n_test, n_validation = workload.name, workload.n_test, workload.n_validation
    order = _random(name, "test", seed).permutation(DIGITS)
    rest = np.sort(order[n_test + n_validation :])
    chosen = {
        "test": order[:n_test],
        "validation": order[n_test : n_test + n_validation],
        "train": _random(name, "train", train_seed).permutation(rest)[: workload.n_train],
    }

    def split(part: Split, drawn_from: int) -> Dataset:
        noise = _random(name, part, drawn_from, stream=1).normal(
            scale=workload.noise, size=(len(chosen[part]), DIGIT_PIXELS)
        )
        return Dataset(pixels[chosen[part]] + noise, labels[chosen[part]])

    return Splits(split("train", train_seed), split("validation", seed), split("test", seed))


def generate(workload: Workload, seed: int, *, train_seed: int | None = None) -> Splits:
    """The workload's train, validation and test sets, each from its own seed.

    ``train_seed`` draws another train set for re-running chosen settings over several seeds:
    the validation and test sets stay those of ``seed``, and ``train_seed=seed`` is the default.
    """
    if workload.generator == "digits":
        return _digits(workload, seed, seed if train_seed is None else train_seed)
    return Splits(
        train=draw(workload, "train", seed if train_seed is None else train_seed),
        validation=draw(workload, "validation", seed),
        test=draw(workload, "test", seed),
    )


def generate_all(workloads: Sequence[Workload], seed: int) -> dict[str, Splits]:
    """Every workload's splits by name; each depends on its own entry only, not on its place."""
    return {workload.name: generate(workload, seed) for workload in workloads}


def write_splits(data: Mapping[str, Splits], path: str | Path) -> None:
    """Several workloads' splits in one CSV, ``workload,split,label,features``, the features
    space-separated; floats with repr(), the shortest text that reads back to the same float:
    exact and byte-stable."""
    rows = (
        (name, split, label, " ".join(map(repr, point)))
        for name, splits in data.items()
        for split, dataset in splits.items()
        for point, label in zip(dataset.features.tolist(), dataset.labels.tolist(), strict=True)
    )
    files.write_text(path, files.csv_text(HEADER, rows))


def read_splits(path: str | Path) -> dict[str, Splits]:
    """What :func:`write_splits` wrote, keyed by workload name, in the same order."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or tuple(rows[0]) != HEADER:
        raise ValueError(f"{path}: expected a CSV with header {','.join(HEADER)}")
    grouped: dict[str, dict[str, list[list[str]]]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(HEADER) or row[1] not in SPLITS:
            raise ValueError(f"{path}, line {number}: expected {','.join(HEADER)}; got {row}")
        grouped.setdefault(row[0], {}).setdefault(row[1], []).append(row[2:])
    result = {}
    for name, by_split in grouped.items():
        missing = [split for split in SPLITS if split not in by_split]
        if missing:
            raise ValueError(f"{path}: workload {name!r} has no {' or '.join(missing)} set")
        sets = {
            split: Dataset(
                np.array([[float(v) for v in r[1].split()] for r in body], dtype=np.float64),
                np.array([int(r[0]) for r in body], dtype=np.int64),
            )
            for split, body in by_split.items()
        }
        result[name] = Splits(sets["train"], sets["validation"], sets["test"])
    return result
