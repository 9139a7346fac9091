"""Workloads: validated specs, and train / validation / test splits drawn from derived seeds."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config.params import _Loader
from pipeline.core.validation import ParamsError
from pipeline.problems import workloads as module
from pipeline.problems.architecture import LOGICNET
from pipeline.problems.data import Dataset
from pipeline.problems.workloads import (
    DEFAULT_WORKLOADS,
    SPLITS,
    Splits,
    Workload,
    draw,
    generate,
    generate_all,
    parse_workloads,
    read_splits,
    write_splits,
)

# sha256 of write_splits({"tutorial": generate(tutorial, 42)}): pins the bytes across processes
# (no hash() of the name), numpy's RandomState stream and scikit-learn's generators.
TUTORIAL_42_SHA256 = "db50a04b78fc0ddfae209e0153d3f357433b1a859d9de4cc498d3cd3240ead2c"


def _documents() -> list[dict]:
    """The defaults as params.yaml would hold them: a valid list to break one key of."""
    return [w.model_dump(exclude_none=True) for w in DEFAULT_WORKLOADS]


def _set(index: int, key: str, value: object) -> Callable[[list[dict]], list[dict]]:
    def change(documents: list[dict]) -> list[dict]:
        documents[index][key] = value
        return documents

    return change


def _drop(index: int, key: str) -> Callable[[list[dict]], list[dict]]:
    def change(documents: list[dict]) -> list[dict]:
        del documents[index][key]
        return documents

    return change


def _all_held_out(documents: list[dict]) -> list[dict]:
    for document in documents:
        document["held_out"] = True
    return documents


CIRCLES = next(i for i, w in enumerate(DEFAULT_WORKLOADS) if w.generator == "circles")

# (id, how to break the valid defaults, text the one message line must contain)
CASES = [
    ("negative noise", _set(2, "noise", -1), ["workloads[2].noise: got -1; must be >= 0"]),
    ("nan noise", _set(0, "noise", float("nan")), ["workloads[0].noise: got nan", "finite"]),
    ("noise as text", _set(1, "noise", "low"), ["workloads[1].noise: got 'low'", "a number"]),
    (
        "unknown generator",
        _set(0, "generator", "blobs"),
        ["workloads[0].generator: got 'blobs'; must be 'moons', 'circles' or 'digits'"],
    ),
    ("zero epochs", _set(1, "epochs", 0), ["workloads[1].epochs: got 0; must be > 0"]),
    ("fractional epochs", _set(1, "epochs", 1.5), ["workloads[1].epochs: got 1.5", "whole"]),
    ("one train point", _set(0, "n_train", 1), ["workloads[0].n_train: got 1; must be >= 2"]),
    ("zero hidden", _set(3, "model", {"hidden": [0]}), ["workloads[3].model.hidden[0]: got 0"]),
    (
        "held_out as text",
        _set(4, "held_out", "yes"),
        ["workloads[4].held_out: got 'yes'; must be true or false"],
    ),
    (
        "held_out as a number",
        _set(4, "held_out", 1),
        ["workloads[4].held_out: got 1; must be true or false"],
    ),
    (
        "duplicate name",
        _set(1, "name", "tutorial"),
        ["workloads[1].name: got 'tutorial'; already the name of workloads[0]"],
    ),
    (
        "duplicate name in another case",
        _set(3, "name", "Tutorial"),
        ["workloads[3].name: got 'Tutorial'; already the name of workloads[0]"],
    ),
    ("bad name", _set(0, "name", "a b"), ["workloads[0].name: got 'a b'", "letters, digits"]),
    (
        "circles without factor",
        _drop(CIRCLES, "factor"),
        [f"workloads[{CIRCLES}].factor: missing; circles need factor", "0 < factor < 1"],
    ),
    (
        "factor out of range",
        _set(CIRCLES, "factor", 1.0),
        [f"workloads[{CIRCLES}].factor: got 1.0; must be < 1"],
    ),
    (
        "moons with a factor",
        _set(0, "factor", 0.5),
        ["workloads[0].factor: got 0.5; only circles take a factor"],
    ),
    ("missing key", _drop(0, "epochs"), ["workloads[0].epochs: missing; it is required"]),
    ("unknown key", _set(0, "epoch", 5), ["workloads[0].epoch: unknown key (value 5)", "epochs"]),
    ("bad target_loss", _set(0, "target_loss", 0.0), ["workloads[0].target_loss: got 0.0", "> 0"]),
    (
        "entry not a mapping",
        lambda d: [*d, "x"],
        [f"workloads[{len(DEFAULT_WORKLOADS)}]: got 'x'; must be a mapping"],
    ),
    ("not a list", lambda d: {"tutorial": d[0]}, ["workloads: got dict; must be a list"]),
    ("empty list", lambda d: [], ["workloads: an empty list"]),
    ("all held out", _all_held_out, ["workloads: every workload is held out"]),
]


def test_the_unbroken_defaults_parse() -> None:
    """The cases below break exactly one thing of this list."""
    assert parse_workloads(_documents()) == DEFAULT_WORKLOADS


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_entry_names_key_value_and_what_is_allowed(
    change: Callable[[list[dict]], object], expected: list[str]
) -> None:
    with pytest.raises(ParamsError) as raised:
        parse_workloads(change(_documents()), source="p.yaml")
    message = str(raised.value)
    assert message.startswith("p.yaml is invalid:\n  - ")
    lines = message.splitlines()[1:]
    assert len(lines) == 1, message  # the one problem, reported once
    for text in expected:
        assert text in lines[0], message


def test_every_problem_is_reported_at_once() -> None:
    documents = _documents()
    documents[0]["noise"] = -1.0
    documents[2]["generator"] = "blobs"
    with pytest.raises(ParamsError) as raised:
        parse_workloads(documents)
    assert "workloads[0].noise" in str(raised.value)
    assert "workloads[2].generator" in str(raised.value)


def _docstring_yaml() -> str:
    doc = module.__doc__ or ""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "workloads:")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")),
        len(lines),
    )
    return textwrap.dedent("\n".join(lines[start:end]))


def test_the_docstring_snippet_is_the_defaults() -> None:
    document = yaml.load(_docstring_yaml(), Loader=_Loader)
    assert parse_workloads(document["workloads"]) == DEFAULT_WORKLOADS


def test_the_defaults_are_the_tutorial_and_its_variants() -> None:
    by_name = {w.name: w for w in DEFAULT_WORKLOADS}
    assert len(by_name) == len(DEFAULT_WORKLOADS) >= 5
    tutorial = DEFAULT_WORKLOADS[0]
    assert (tutorial.generator, tutorial.n_train, tutorial.noise) == ("moons", 20, 0.2)
    assert (tutorial.epochs, tutorial.architecture, tutorial.held_out) == (1000, LOGICNET, False)
    others = DEFAULT_WORKLOADS[1:]
    assert any(w.n_train > tutorial.n_train for w in others)
    assert any(w.noise > tutorial.noise for w in others)
    assert any(w.epochs > tutorial.epochs for w in others)
    assert any(w.model.hidden[0] > tutorial.model.hidden[0] for w in others)
    assert any(w.generator == "circles" for w in others)
    # the family beyond LogicNet: a deeper perceptron and a conv net on images
    assert any(len(w.model.hidden) > 1 and w.model.activation == "relu" for w in others)
    assert any(w.model.conv is not None and w.generator == "digits" for w in others)
    assert 1 <= sum(w.held_out for w in DEFAULT_WORKLOADS) <= 4
    assert all(w.target_loss is None for w in DEFAULT_WORKLOADS)


def _points(dataset: Dataset) -> set[tuple[float, ...]]:
    return {tuple(point) for point in dataset.features.tolist()}


# Equal sizes: with one seed for every split, the three sets would be the same points.
EVEN = Workload(
    name="even",
    generator="moons",
    n_train=40,
    n_validation=40,
    n_test=40,
    noise=0.1,
    epochs=10,
)


@pytest.mark.parametrize("workload", [*DEFAULT_WORKLOADS, EVEN], ids=lambda w: w.name)
def test_splits_have_their_sizes_and_share_no_point(workload: Workload) -> None:
    splits = generate(workload, 42)
    seen: set[tuple[float, ...]] = set()
    network = workload.architecture
    for split, dataset in splits.items():
        size = workload.size(split)
        assert dataset.features.shape == (size, network.inputs)
        assert dataset.features.dtype == np.float64
        assert dataset.labels.shape == (size,)
        assert dataset.labels.dtype == np.int64
        assert sorted(set(dataset.labels.tolist())) == list(range(network.classes))
        points = _points(dataset)
        assert len(points) == size
        assert not points & seen, split
        seen |= points


def _same(a: Splits, b: Splits) -> bool:
    return all(
        np.array_equal(x.features, y.features) and np.array_equal(x.labels, y.labels)
        for (_, x), (_, y) in zip(a.items(), b.items(), strict=True)
    )


def test_generation_repeats_from_the_seed_and_differs_for_another() -> None:
    workload = DEFAULT_WORKLOADS[0]
    assert _same(generate(workload, 7), generate(workload, 7))
    other = generate(workload, 8)
    for (_, x), (_, y) in zip(generate(workload, 7).items(), other.items(), strict=True):
        assert not _points(x) & _points(y)


def test_another_train_seed_changes_the_train_set_only() -> None:
    workload = DEFAULT_WORKLOADS[0]
    base = generate(workload, 42)
    assert _same(generate(workload, 42, train_seed=42), base)
    rerun = generate(workload, 42, train_seed=43)
    assert not _points(rerun.train) & _points(base.train)
    assert _same(Splits(base.train, rerun.validation, rerun.test), base)


def test_adding_a_workload_leaves_the_others_data_unchanged() -> None:
    before = generate_all(DEFAULT_WORKLOADS, 42)
    extra = EVEN.model_copy(update={"name": "added"})
    after = generate_all((extra, *DEFAULT_WORKLOADS[::-1]), 42)  # added first, the rest reversed
    assert list(after) == ["added", *[w.name for w in DEFAULT_WORKLOADS[::-1]]]
    for name, splits in before.items():
        assert _same(after[name], splits), name


def test_the_name_enters_the_seed() -> None:
    """Two workloads alike but for their name draw different data (so adding one is safe)."""
    renamed = DEFAULT_WORKLOADS[0].model_copy(update={"name": "tutorial2"})
    ours, theirs = generate(DEFAULT_WORKLOADS[0], 42), generate(renamed, 42)
    for (_, x), (_, y) in zip(ours.items(), theirs.items(), strict=True):
        assert not _points(x) & _points(y)


def _on_circles(dataset: Dataset, factor: float) -> bool:
    """make_circles puts label 0 on the unit circle and label 1 on the circle of radius
    ``factor``: the radius alone, cut halfway between, tells the labels apart."""
    radius = np.hypot(dataset.features[:, 0], dataset.features[:, 1])
    by_radius = (radius < (1 + factor) / 2).astype(np.int64)
    return bool(np.mean(by_radius == dataset.labels) >= 0.9)


def test_circles_are_circles_and_moons_are_not() -> None:
    circles = DEFAULT_WORKLOADS[CIRCLES]
    assert circles.factor is not None
    moons = circles.model_copy(update={"generator": "moons", "factor": None})
    for split in SPLITS:
        assert _on_circles(draw(circles, split, 42), circles.factor), split
        assert not _on_circles(draw(moons, split, 42), circles.factor), split


def test_a_bad_seed_is_refused() -> None:
    for seed in (-1, 2**64, True):
        with pytest.raises(ValueError, match="seed: got"):
            draw(DEFAULT_WORKLOADS[0], "train", seed)


def test_the_csv_round_trip_is_exact_and_byte_stable(tmp_path: Path) -> None:
    data = generate_all(DEFAULT_WORKLOADS, 42)
    write_splits(data, tmp_path / "a.csv")
    back = read_splits(tmp_path / "a.csv")
    assert list(back) == list(data)
    for name, splits in data.items():
        assert _same(back[name], splits), name
    write_splits(back, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_the_bytes_are_pinned(tmp_path: Path) -> None:
    write_splits({"tutorial": generate(DEFAULT_WORKLOADS[0], 42)}, tmp_path / "t.csv")
    text = (tmp_path / "t.csv").read_bytes()
    assert text.startswith(b"workload,split,label,features\ntutorial,train,")
    assert hashlib.sha256(text).hexdigest() == TUTORIAL_42_SHA256


def test_a_csv_without_every_split_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("workload,split,label,features\ntutorial,train,1,0.5 0.25\n")
    with pytest.raises(ValueError, match="no validation or test set"):
        read_splits(path)
    path.write_text("seed,noise,x1,x2,label\n")
    with pytest.raises(ValueError, match="expected a CSV with header"):
        read_splits(path)


@pytest.mark.parametrize("n", [20, 41, 200, 500])
def test_the_generators_are_scikit_learns_with_portable_trigonometry(n):
    """make_moons and make_circles step for step, the same random numbers drawn: labels equal,
    points within a float64 ulp or so (scikit-learn's cos and sin are numpy's, which take a
    CPU-chosen vector path; ours are computed in software, the same on every CPU)."""
    from sklearn.datasets import make_circles, make_moons

    for workload in DEFAULT_WORKLOADS:
        if workload.generator == "digits":  # scikit-learn's own images, not drawn
            continue
        sized = workload.model_copy(update={"n_train": n})
        ours = module.draw(sized, "train", 42)
        random = np.random.RandomState(
            np.random.MT19937(module.split_seed(workload.name, "train", 42))
        )
        if workload.generator == "circles":
            features, labels = make_circles(
                n, noise=workload.noise, factor=workload.factor, random_state=random
            )
        else:
            features, labels = make_moons(n, noise=workload.noise, random_state=random)
        np.testing.assert_array_equal(ours.labels, labels)
        np.testing.assert_allclose(ours.features, features, rtol=0, atol=1e-15)
