"""Bad params: one clear message naming the key and the value, a non-zero exit, nothing written."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from pipeline.cli.main import cli
from pipeline.config.params import load_params, parse_params
from pipeline.core.validation import ParamsError
from tests.conftest import tiny_document


def _set(document: dict, path: str, value) -> dict:
    *parents, leaf = path.split(".")
    node = document
    for key in parents:
        node = node[key]
    node[leaf] = value
    return document


def _drop(document: dict, path: str) -> dict:
    *parents, leaf = path.split(".")
    node = document
    for key in parents:
        node = node[key]
    del node[leaf]
    return document


LAMBDA = "schedulers.LambdaLR.lr_lambda.Liner1"
# (id, how to break the tiny params, text the message must contain)
CASES = [
    ("negative lr", lambda d: _set(d, "train.lr", -1), ["train.lr", "-1", "greater than 0"]),
    ("lr as text", lambda d: _set(d, "train.lr", "fast"), ["train.lr", "'fast'", "valid number"]),
    ("lr is nan", lambda d: _set(d, "train.lr", float("nan")), ["train.lr", "finite"]),
    ("lr is inf", lambda d: _set(d, "train.lr", float("inf")), ["train.lr", "finite"]),
    ("fractional epochs", lambda d: _set(d, "train.epochs", 1.5), ["train.epochs", "1.5"]),
    ("zero epochs", lambda d: _set(d, "train.epochs", 0), ["train.epochs", "0", "greater than 0"]),
    ("epochs as bool", lambda d: _set(d, "train.epochs", True), ["train.epochs", "True"]),
    (
        "unknown optimizer",
        lambda d: _set(d, "train.optimizer", "rmsprop"),
        ["train.optimizer", "'rmsprop'", "'adam' or 'sgd'"],
    ),
    ("unknown device", lambda d: _set(d, "train.device", "tpu"), ["train.device", "'tpu'"]),
    ("noise out of range", lambda d: _set(d, "data.noise", -0.1), ["data.noise", "-0.1"]),
    ("empty lr grid", lambda d: _set(d, "train.lr", []), ["train.lr", "[]", "empty list"]),
    (
        "repeated lr in a grid",
        lambda d: _set(d, "train.lr", [0.1, 0.01, 0.1]),
        ["train.lr", "[0.1] repeated"],
    ),
    (
        "bad value inside a grid",
        lambda d: _set(d, "train.lr", [0.1, -2.0]),
        ["train.lr.1", "-2.0", "greater than 0"],
    ),
    ("noise grid of text", lambda d: _set(d, "data.noise", [0.1, "x"]), ["data.noise.1", "'x'"]),
    (
        "batch that shrinks",
        lambda d: _set(d, "schedulers.growing_batch.factor", 0.5),
        ["schedulers.growing_batch.factor", "0.5", "factor must be >= 1"],
    ),
    (
        "batch of zero points",
        lambda d: _set(d, "schedulers.growing_batch.initial", 0),
        ["schedulers.growing_batch.initial", "0", "positive integer"],
    ),
    ("hidden as text", lambda d: _set(d, "model.hidden", "3"), ["model.hidden", "'3'"]),
    ("misspelt section", lambda d: _set(d, "trian", {"lr": 1}), ["trian", "unknown key"]),
    (
        "misspelt key",
        lambda d: _set(d, "train.learning_rate", 0.1),
        ["train.learning_rate", "unknown key"],
    ),
    ("no schedulers", lambda d: _set(d, "schedulers", {}), ["schedulers", "at least 1"]),
    ("schedulers missing", lambda d: _drop(d, "schedulers"), ["schedulers", "missing"]),
    (
        "unknown scheduler type",
        lambda d: _set(d, "schedulers.StepLR.type", "FastLR"),
        ["schedulers.StepLR.type", "'FastLR'", "CosineAnnealingLR"],
    ),
    (
        "unknown kwarg",
        lambda d: _set(d, "schedulers.StepLR.stepsize", 3),
        ["schedulers.StepLR.stepsize", "step_size, gamma"],
    ),
    (
        "missing kwarg",
        lambda d: _drop(d, "schedulers.StepLR.step_size"),
        ["schedulers.StepLR.step_size", "needs"],
    ),
    (
        "kwarg of the wrong type",
        lambda d: _set(d, "schedulers.StepLR.gamma", "0.9"),
        ["schedulers.StepLR", "StepLR rejects"],
    ),
    (
        "gamma is nan",
        lambda d: _set(d, "schedulers.StepLR.gamma", float("nan")),
        ["schedulers.StepLR.gamma: got nan", "must be a finite number"],
    ),
    (
        "gamma is -inf",
        lambda d: _set(d, "schedulers.StepLR.gamma", float("-inf")),
        ["schedulers.StepLR.gamma: got -inf", "must be a finite number"],
    ),
    (
        "milestone is inf",
        lambda d: _set(d, "schedulers.MultiStepLR.milestones", [30, float("inf")]),
        ["schedulers.MultiStepLR.milestones[1]: got inf", "must be a finite number"],
    ),
    (
        "nested argument is nan",
        lambda d: _set(
            d,
            "schedulers.warmup_cosine.schedulers",
            [{"type": "LinearLR", "end_factor": float("nan")}],
        ),
        ["schedulers.warmup_cosine.schedulers[0].end_factor: got nan", "must be a finite number"],
    ),
    (
        "noise is nan",
        lambda d: _set(d, "data.noise", float("nan")),
        ["data.noise: got nan", "finite"],
    ),
    (
        "target loss is inf",
        lambda d: _set(d, "analysis.target_loss", float("inf")),
        ["analysis.target_loss: got inf", "finite number"],
    ),
    (
        "rate blows up",
        lambda d: _set(d, "schedulers.ExponentialLR.gamma", 1e308),
        ["schedulers.ExponentialLR", "inf"],
    ),
    (
        "manual every zero",
        lambda d: _set(d, "schedulers.manual.every", 0),
        ["schedulers.manual.every", "0", "positive integer"],
    ),
    (
        "bad run name",
        lambda d: _set(d, "schedulers", {"../escape": {"type": "constant"}}),
        ["schedulers.../escape", "not allowed"],
    ),
    (
        "rule imports",
        lambda d: _set(d, LAMBDA, "__import__('os').system('true')"),
        [LAMBDA, "calling \"__import__('os').system\" is not allowed"],
    ),
    (
        "rule reaches attributes",
        lambda d: _set(d, LAMBDA, "step.__class__"),
        [LAMBDA, "attribute access"],
    ),
    (
        "rule recurses",
        lambda d: _set(d, LAMBDA, "(lambda f: f(f))(lambda f: f(f))"),
        [LAMBDA, "not allowed"],
    ),
    (
        "rule with a huge exponent",
        lambda d: _set(d, LAMBDA, "10 ** 10 ** 10"),
        [LAMBDA, "fails at step 0"],
    ),
    ("rule goes negative", lambda d: _set(d, LAMBDA, "1 - step"), [LAMBDA, "must be >= 0"]),
    (
        "rule divides by zero",
        lambda d: _set(d, LAMBDA, "1 / abs(step - 3)"),
        [LAMBDA, "fails at step 3"],
    ),
    ("rule is not text", lambda d: _set(d, LAMBDA, 0.5), [LAMBDA, "must be a string"]),
    ("rule is unknown name", lambda d: _set(d, LAMBDA, "epoch * 2"), [LAMBDA, "'epoch'"]),
    ("layer rule missing", lambda d: _drop(d, LAMBDA), ["schedulers.LambdaLR.lr_lambda", "Liner2"]),
    (
        "plateau watches nothing we record",
        lambda d: _set(d, "schedulers.ReduceLROnPlateau.monitor", "val_loss"),
        ["schedulers.ReduceLROnPlateau.monitor", "'val_loss'", "loss, accuracy"],
    ),
    (
        "nested entry is wrong",
        lambda d: _set(
            d, "schedulers.warmup_cosine.schedulers", [{"type": "LinearLR", "start": 0.1}]
        ),
        ["schedulers.warmup_cosine.schedulers[0].start"],
    ),
]


def _params_of(cases: list) -> list:
    """The cases as pytest params. One found only by stepping its schedule is marked slow: the
    train command has opened an MLflow store by then (seconds)."""
    params = []
    for name, break_params, expected in cases:
        try:
            parse_params(break_params(copy.deepcopy(tiny_document())), schedules="parse")
        except ParamsError:
            marks = []
        else:
            marks = [pytest.mark.pipeline]
        params.append(pytest.param(break_params, expected, id=name, marks=marks))
    return params


@pytest.mark.parametrize("break_params, expected", _params_of(CASES))
def test_bad_params_name_the_key_and_value(
    break_params, expected, good_data, tmp_path, monkeypatch
):
    """Through the real train command: exit 1, the key and value named, nothing written."""
    document = break_params(copy.deepcopy(tiny_document()))
    with pytest.raises(ParamsError) as caught:
        parse_params(document)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    Path("bad.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = CliRunner().invoke(cli, [
        "train", "--params", "bad.yaml", "--train", str(good_data / "train.csv"),
        "--test", str(good_data / "test.csv"), "--curves", "curves", "--models", "models",
        "--metrics", "metrics.json", "--steps", "steps.csv", "--ranking", "ranking.md",
        "--report", "report.md",
    ])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: {str(caught.value).replace('params.yaml', 'bad.yaml')}\n"
    for text in expected:
        assert text in result.output, result.output
    left = sorted(p.name for p in tmp_path.iterdir())
    try:
        parse_params(copy.deepcopy(document), schedules="parse")
    except ParamsError:  # found before torch steps a schedule: not even an MLflow store
        assert left == ["bad.yaml"]
    else:  # found by stepping the schedule, while the store opened: a store without runs
        assert left in (["bad.yaml"], ["bad.yaml", "mlflow.db", "mlflow.db.lock"]), left
        if "mlflow.db" in left:
            client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
            experiments = [e.experiment_id for e in client.search_experiments()]
            assert client.search_runs(experiments) == []


@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    (folder / "params.yaml").write_text(yaml.safe_dump(tiny_document()))
    result = CliRunner().invoke(cli, [
        "generate", "--params", str(folder / "params.yaml"),
        "--train", str(folder / "train.csv"), "--test", str(folder / "test.csv"),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder


def test_yaml_alias_bomb_is_refused(tmp_path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 9):
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ParamsError, match="alias bomb"):
        load_params(path)


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    document = tiny_document()
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(document).replace("lr: 0.01", "lr: 1e-2"))
    assert load_params(path).train.lr == 0.01


def test_a_bad_file_stops_every_stage_before_it_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    good = tmp_path / "params.yaml"
    good.write_text(yaml.safe_dump(tiny_document()))
    runner = CliRunner()
    result = runner.invoke(cli, ["generate", "--train", "train.csv", "--test", "test.csv"])
    assert result.exit_code == 0, result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_set(tiny_document(), "train.lr", -1)))
    before = sorted(p.name for p in Path(tmp_path).iterdir())

    train = runner.invoke(
        cli,
        [
            "train",
            "--params",
            "bad.yaml",
            "--train",
            "train.csv",
            "--test",
            "test.csv",
            "--curves",
            "curves",
            "--models",
            "models",
            "--metrics",
            "metrics.json",
            "--steps",
            "steps.csv",
            "--ranking",
            "ranking.md",
            "--report",
            "report.md",
        ],
    )
    generate = runner.invoke(
        cli, ["generate", "--params", "bad.yaml", "--train", "t2.csv", "--test", "t3.csv"]
    )
    for result in (train, generate):
        assert result.exit_code == 1
        assert (
            "Error: bad.yaml is invalid:\n  - train.lr: got -1; input should be greater than 0"
            in (result.output)
        )
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == before  # no output, no store


@pytest.mark.parametrize("grid", [False, True])
def test_the_replicate_count_is_known_without_parsing_the_schedules(grid):
    """What the Ray engine warms workers for before torch is imported: every run at every
    seed, the same whether the schedules were parsed or skipped."""
    document = tiny_document()
    if grid:
        document["train"]["lr"] = [0.01, 0.1, 1.0]
        document["data"]["noise"] = [0.1, 0.3]
    parsed = parse_params(copy.deepcopy(document), schedules="parse")
    skipped = parse_params(copy.deepcopy(document), schedules="skip")
    assert skipped.schedules == ()  # nothing to count runs from but the list itself
    expected = len(parsed.runs) * len(parsed.seeds)
    assert expected == len(document["schedulers"]) * (6 if grid else 1) * parsed.train.seeds
    assert parsed.replicate_count == skipped.replicate_count == expected
