"""Where MLflow records go and what they carry, without importing MLflow.

The store is ``MLFLOW_TRACKING_URI`` when set, else an embedded SQLite file (``mlflow.db``) at
the project root, with artifacts beside it in ``mlartifacts/``: no server to start. The records
themselves are written by ``pipeline.tracking.records``; this module holds what a stage needs before
MLflow is imported (importing it takes seconds, which the train stage spends in another
process: ``pipeline.tracking.background``).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import platform
import sqlite3
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_STORE = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
PARENT_KIND_TAG = "lrsched.kind"
OUTPUTS_TAG = "lrsched.metrics_sha256"
HOST_TAG, PID_TAG, FAILURE_TAG = "lrsched.host", "lrsched.pid", "lrsched.failure"
# MLflow's HTTP client retries a refused connection for minutes by default; a pipeline should
# say at once that its server is not there. Users can still override both.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def fail_fast_over_http(uri: str) -> None:
    """Apply HTTP_DEFAULTS to a tracking server URI, unless the user set those variables."""
    if uri.startswith(("http://", "https://")):
        for variable, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(variable, value)


class TrackingUnavailable(RuntimeError):
    """The MLflow store cannot be reached or written; the message says which and what to do."""


def tracking_uri(root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded SQLite store at the project root.

    The root is ``DVC_ROOT`` when DVC runs the stage: a queued experiment runs in a temporary
    copy of the project, and DVC points ``DVC_ROOT`` at the real one, so its runs land in the
    project's store rather than in a folder deleted afterwards. Outside DVC, the current folder.
    """
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    root = root or os.environ.get("DVC_ROOT") or "."
    return f"sqlite:///{(Path(root) / DEFAULT_STORE).resolve()}"


def experiment_id_of(uri: str, name: str) -> str | None:
    """The id of experiment ``name`` in the store, or None where it has none (yet).

    An embedded store is read with SQLite itself, read-only: a missing file stays missing, and
    nothing waits seconds for MLflow's import.
    """
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        if not database.exists():
            return None
        try:
            with contextlib.closing(
                sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)
            ) as db:
                row = db.execute(
                    "SELECT experiment_id FROM experiments "
                    "WHERE name = ? AND lifecycle_stage = 'active'",
                    (name,),
                ).fetchone()
        except sqlite3.Error:  # not (yet) an MLflow store
            return None
        return str(row[0]) if row else None
    fail_fast_over_http(uri)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        found = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    except MlflowException as error:
        raise TrackingUnavailable(
            f"cannot read the MLflow store {uri}: {first_line(error)}"
        ) from None
    return found.experiment_id if found else None


def git_state(root: str | Path = ".") -> dict[str, str]:
    """The commit the code came from, and whether the work tree differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
    }


def source_tags(command: str) -> dict[str, str]:
    """MLflow's own system tags, which fill the runs list's Source and User columns.

    The source is the DVC stage when DVC runs the command (``DVC_STAGE``), else the command.
    """
    stage = os.environ.get("DVC_STAGE")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry
        user = "unknown"
    return {
        "mlflow.source.name": f"dvc.yaml:{stage}" if stage else command,
        "mlflow.source.type": "LOCAL",
        "mlflow.user": user,
    }


@dataclass(frozen=True)
class DataFile:
    """A data file a run read, as MLflow's dataset inputs name it (``MlflowClient.log_inputs``).

    ``md5``: the file's MD5, the digest ``dvc.lock`` records for it, so two runs on the same data
    show the same digest. The source is the file's DVC path and the git revision of the code.
    """

    path: str  # as dvc.yaml names it: data/train.csv
    md5: str
    rows: int
    columns: tuple[tuple[str, str], ...]  # (name, MLflow type): ("x1", "double")
    context: str  # MLflow's `mlflow.data.context`: training, testing, validation
    revision: str  # the git commit the run's code came from


@dataclass(frozen=True)
class ModelToLog:
    """A child run's model: one seed's weights (its state dict as numpy arrays), a few input
    points for its example, and the activation of its hidden layers."""

    weights: dict[str, Any]  # name -> float32 array
    example: Any  # (n, 2) float64 array: its first points
    activation: str = "tanh"


@dataclass(frozen=True)
class Registration:
    """What registering a train's best model did."""

    name: str
    version: str
    run_name: str
    champion: str  # the version the alias points at now
    moved: bool  # whether this registration moved the alias


def environment_tags(device: str) -> dict[str, str]:
    import torch

    tags = {
        "torch.version": str(torch.__version__),  # a str subclass that would pickle as torch
        "python.version": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():  # not a CPU-only Ray driver
        tags["cuda.device_name"] = torch.cuda.get_device_name(0)
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run`
        tags["dvc.experiment"] = os.environ["DVC_EXP_NAME"]
    # Set by the Docker images, so that a run says which image it ran in.
    for variable, tag in (
        ("LRSCHED_IMAGE", "docker.image"),
        ("LRSCHED_IMAGE_DIGEST", "docker.digest"),
    ):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": "0.01"}``; lists stay whole."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def first_line(error: Exception) -> str:
    """The first line of an error's message: MLflow's can run to a page of traceback."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
