"""Fixtures: the real pipeline, shrunk: tiny params, a temp project, a temp MLflow store."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def default_document() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_document(epochs: int = 120) -> dict:
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
    return document


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


def run(command: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
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
