"""Fixtures: the real pipeline, shrunk: tiny params, a temp project, a temp MLflow store."""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipeline.config.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# What a slow test starts (pyproject.toml describes each): a kind marker makes a test `slow`.
KINDS = ("pipeline", "emulation", "server", "browser", "cluster", "compute")


# The whole suite as this session collected it, before `-m` or `-k` deselected any: test file ->
# its number of tests. Kept only when the session collected the whole of tests/ (no paths, no
# --lf or --sw), so that the time table's check need not collect again in a process of its own.
WHOLE_SUITE = pytest.StashKey[dict[str, int]]()


def whole_suite(config: pytest.Config) -> dict[str, int] | None:
    return config.stash.get(WHOLE_SUITE, None)


def count_per_file(node_ids: Iterable[str]) -> dict[str, int]:
    """``tests/test_x.py::test_y[...]`` node ids -> ``{"test_x.py": count}``."""
    return dict(Counter(node_id.split("::")[0].removeprefix("tests/") for node_id in node_ids))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test of a kind is also `slow`; a test marked `slow` alone must name its kind."""
    everything = [Path(arg).resolve() for arg in config.args] == [ROOT / "tests"]
    narrowed = any(config.getoption(name, False) for name in ("lf", "failedfirst", "stepwise"))
    if everything and not narrowed:
        config.stash[WHOLE_SUITE] = count_per_file(item.nodeid for item in items)
    untyped = []
    for item in items:
        if any(item.get_closest_marker(kind) for kind in KINDS):
            item.add_marker(pytest.mark.slow)
        elif item.get_closest_marker("slow"):
            untyped.append(item.nodeid)
    if untyped:
        raise pytest.UsageError(f"mark these with their kind ({', '.join(KINDS)}): {untyped}")


def default_document() -> dict:
    """The project's params.yaml, a fresh copy each call (parsed once: PyYAML's parser takes
    20 ms of it, and the fast tests build hundreds)."""
    return copy.deepcopy(_parsed_params())


@functools.cache
def _parsed_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_document(epochs: int = 120, full_tuning: bool = False) -> dict:
    """The real params.yaml, with the step counts and test set shrunk."""
    document = default_document()
    document["train"]["epochs"] = epochs
    document["data"]["test"]["n_samples"] = 50
    schedulers = document["schedulers"]
    schedulers["manual"]["every"] = schedulers["StepLR"]["step_size"] = 10
    schedulers["MultiStepLR"]["milestones"] = [30, 60, 90]
    schedulers["CosineAnnealingLR"]["T_max"] = epochs
    schedulers["ReduceLROnPlateau"]["patience"] = 5
    schedulers["ReduceLROnPlateau"]["threshold"] = 0.05  # so that the short run does plateau
    schedulers["LambdaLR"]["lr_lambda"]["Liner1"] = "0.9 ** (step // 10)"
    schedulers["warmup_cosine"]["milestones"] = [20]
    schedulers["warmup_cosine"]["schedulers"][0]["total_iters"] = 20
    schedulers["warmup_cosine"]["schedulers"][1]["T_max"] = epochs - 20
    schedulers["OneCycleLR"]["total_steps"] = epochs
    schedulers["growing_batch"]["every"] = epochs // 4
    shrink_tuning(document, full=full_tuning)
    return document


def shrink_tuning(document: dict, epochs: int = 60, full: bool = False) -> dict:
    """The comparison at a toy scale: short budgets, small sets, 4 trials x 3 studies. Unless
    ``full``, also only five workloads (two tuned; held out: circles, and the family's deep
    perceptron and conv net) and five schedules, which
    between them take every path of the tuning: enough for the tests that run the whole
    pipeline, whose subject is not the tuning (``tests/test_tuning.py`` takes them all)."""
    if not full:
        keep = ("tutorial", "more_noise", "circles", "deep_relu", "digits")
        document["workloads"] = [w for w in document["workloads"] if w["name"] in keep]
        spaces = ("constant", "StepLR", "ReduceLROnPlateau", "warmup_cosine", "OneCycleLR")
        document["search"]["spaces"] = {k: document["search"]["spaces"][k] for k in spaces}
    for workload in document["workloads"]:
        workload["epochs"] = epochs * (2 if workload["name"] == "long_budget" else 1)
        workload["n_validation"], workload["n_test"] = 40, 50
    document["search"]["trials"] = 4
    document["tuning"].update(eval_every=5, reruns=3, bootstrap=100)
    document["tuning"]["target"]["trials"] = 8
    return document


def lean_document(
    schedulers: tuple[str, ...] | None = ("constant", "StepLR", "growing_batch"),
    epochs: int = 120,
) -> dict:
    """Tiny params with the tuning at its smallest (one workload tuned, one held out, two
    schedules) and only ``schedulers`` trained (all with None): for tests whose subject is
    where the runs go or what survives a fault, not what they compute."""
    document = tiny_document(epochs)
    if schedulers is not None:
        document["schedulers"] = {name: document["schedulers"][name] for name in schedulers}
    document["workloads"] = [w for w in document["workloads"] if w["name"] in LEAN_WORKLOADS]
    spaces = document["search"]["spaces"]
    document["search"]["spaces"] = {name: spaces[name] for name in ("constant", "StepLR")}
    return document


LEAN_WORKLOADS = ("tutorial", "circles")


@pytest.fixture
def tiny() -> dict:
    return tiny_document()


@pytest.fixture
def tiny_params(tiny: dict) -> Params:
    return parse_params(copy.deepcopy(tiny))


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh embedded MLflow store for the test; nothing touches the project's own."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def run(
    command: list[str], cwd: Path, env: dict | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """``command``, which must succeed; killed after ``timeout`` seconds (then TimeoutExpired)."""
    completed = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, f"{command} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed


def project_env(project: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def make_project(root: Path, document: dict | None = None) -> Path:
    """A fresh git + DVC project at ``root``: the real dvc.yaml and code, and tiny params."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    for package in ("pipeline", "stages"):
        shutil.copytree(
            ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    document = document or tiny_document()
    (root / "params.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    env = project_env(root)
    run(["git", "init", "-q", "-b", "main"], root, env)
    run([*GIT, "add", "-A"], root, env)
    run([*GIT, "commit", "-qm", "init"], root, env)
    return root


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


# A sitecustomize for the stages' processes: every project module a process imports is logged
# with the process, its parent and its `lrsched` command, so that a test can tell what each
# stage really ran (module-level and function-level imports, in every process it started), and
# how each process ended.
STAGE_TRACER = """
import os
import sys


class _ImportTracer:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pipeline", "stages"):
            lrsched = os.path.basename(sys.argv[0]) == "lrsched" and len(sys.argv) > 1
            command = sys.argv[1] if lrsched else "-"
            with open(os.environ["LRSCHED_IMPORT_LOG"], "a") as log:
                log.write(f"{os.getpid()}\\t{os.getppid()}\\t{command}\\t{name}\\n")
        return None


if os.environ.get("LRSCHED_IMPORT_LOG"):
    sys.meta_path.insert(0, _ImportTracer())


# How the process ends: "atexit" when the exit handlers run, "teardown" when the interpreter
# frees this module (a normal exit does both; `exit_now` only the first).
if os.environ.get("LRSCHED_EXIT_LOG"):
    import atexit

    def _log_exit(event, path=os.environ["LRSCHED_EXIT_LOG"], getpid=os.getpid, open=open):
        with open(path, "a") as log:
            log.write(f"{getpid()}\\t{event}\\n")

    class _Teardown:
        def __del__(self, log=_log_exit):
            log("teardown")

    atexit.register(_log_exit, "atexit")
    _teardown = _Teardown()
"""


@dataclass(frozen=True)
class Traced:
    """What the tracer logged: every project module each ``lrsched`` command's processes
    imported, and how each of those processes ended."""

    imports: dict[str, set[str]]  # command -> modules, its process's and its children's
    endings: dict[str, dict[str, tuple[str, ...]]]  # command -> pid -> events, in order


def traced(import_log: Path, exit_log: Path) -> Traced:
    rows = [line.split("\t") for line in import_log.read_text().splitlines()]
    command_of = {pid: command for pid, _, command, _ in rows if command != "-"}
    parent_of = {pid: ppid for pid, ppid, _, _ in rows}

    def command(pid: str) -> str:
        process, seen = pid, set()
        while process not in command_of and process in parent_of and process not in seen:
            seen.add(process)
            process = parent_of[process]  # a spawned child (the MLflow process): its parent's
        return command_of.get(process, "-")

    imports: dict[str, set[str]] = {}
    for pid, _, _, module in rows:
        imports.setdefault(command(pid), set()).add(module)
    events: dict[str, list[str]] = {}
    for pid, event in (line.split("\t") for line in exit_log.read_text().splitlines()):
        events.setdefault(pid, []).append(event)
    endings: dict[str, dict[str, tuple[str, ...]]] = {}
    for pid in parent_of:  # the processes that imported project code, not DVC's own
        endings.setdefault(command(pid), {})[pid] = tuple(events.get(pid, ()))
    return Traced(imports, endings)


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory) -> dict:
    """One tiny project through a real `dvc repro`, with every stage's imports traced.

    Read-only: a test that changes the project copies it first (``copy_project``). Its
    ``output`` is what `dvc repro` printed.
    """
    root = make_project(tmp_path_factory.mktemp("reproduced") / "project")
    tracer = tmp_path_factory.mktemp("tracer")
    (tracer / "sitecustomize.py").write_text(STAGE_TRACER)
    logs = {"LRSCHED_IMPORT_LOG": tracer / "imports.log", "LRSCHED_EXIT_LOG": tracer / "exits.log"}
    env = project_env(root)
    traced_env = {**env, "PYTHONPATH": str(tracer), **{k: str(v) for k, v in logs.items()}}
    output = run(["dvc", "repro"], root, traced_env).stdout
    trace = traced(*logs.values())
    return {"root": root, "env": env, "imports": trace.imports, "endings": trace.endings,
            "output": output}  # fmt: skip


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a project, its git history, DVC cache and MLflow store included."""
    shutil.copytree(source, target, symlinks=True)
    return target
