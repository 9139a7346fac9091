"""MLflow records: a parent run per train execution, a child run per schedule.

The store is ``MLFLOW_TRACKING_URI`` when set, else an embedded SQLite file (``mlflow.db``) at
the project root, with artifacts beside it in ``mlartifacts/``: no server to start. Per-step
metrics go through ``log_batch`` in chunks of MLflow's limit, never one round trip per value.
"""

from __future__ import annotations

import fcntl
import os
import platform
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from pipeline import files

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


def _artifact_location(uri: str) -> str | None:
    # A local SQLite store keeps its artifacts in a folder beside the database; a server
    # decides for itself.
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        return (database.parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise opening an embedded store: two processes must not both create its tables."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# The MLflow UI opens experiments of this kind on their runs and charts, not its GenAI views.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(
            name, artifact_location=_artifact_location(uri), tags=EXPERIMENT_KIND
        )
    for key, value in EXPERIMENT_KIND.items():
        if key not in found.tags:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


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


def environment_tags(device: str) -> dict[str, str]:
    import torch

    tags = {
        "torch.version": torch.__version__,
        "python.version": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda"):
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


def step_metrics(series: Mapping[str, Iterable[float]], timestamp: int) -> list[Metric]:
    return [
        Metric(key, float(value), timestamp, step)
        for key, values in series.items()
        for step, value in enumerate(values)
    ]


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Recorder:
    """One parent run, and child runs under it; the parent ends FAILED if the block raises.

    Opening a recorder checks the store at once (a clear error before any training), and marks
    FAILED the runs that a killed train process on this host left RUNNING.
    """

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        fail_fast_over_http(uri)
        self.process_tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        self.parent_id: str | None = None
        try:
            with store_lock(uri):
                self.client = MlflowClient(tracking_uri=uri)
                self.experiment_id = experiment_id(self.client, experiment, uri)
                self.reaped = self._reap_abandoned_runs()
        except (MlflowException, OSError) as error:
            raise TrackingUnavailable(
                f"cannot use the MLflow store {uri}: {first_line(error)}\n"
                "Start the tracking server, fix MLFLOW_TRACKING_URI, or unset it to use the "
                "embedded store. Nothing was trained or written."
            ) from None

    def _reap_abandoned_runs(self) -> list[str]:
        """Mark FAILED the RUNNING runs of train processes on this host that no longer exist."""
        host = self.process_tags[HOST_TAG]
        running = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
            max_results=1000,
        )
        reaped = []
        for run in running:
            pid = int(run.data.tags.get(PID_TAG, "0"))
            if pid and not files.process_alive(pid):
                self.client.set_tag(
                    run.info.run_id,
                    FAILURE_TAG,
                    f"train process {pid} on {host} ended before finishing (killed?)",
                )
                self.client.set_terminated(run.info.run_id, "FAILED")
                reaped.append(run.info.run_id)
        return reaped

    def _terminate(self, run_id: str, status: str) -> None:
        try:
            self.client.set_terminated(run_id, status)
        except (MlflowException, OSError):
            # The store went away: the next train on this host marks the run FAILED.
            if status == "FINISHED":
                raise

    @contextmanager
    def parent(self, name: str, params: Mapping[str, str], tags: Mapping[str, str]):
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={PARENT_KIND_TAG: "train", **self.process_tags, **tags},
        )
        self.parent_id = run.info.run_id
        status = "FAILED"
        try:
            self.log(self.parent_id, params=params)
            yield self
            status = "FINISHED"
        except (MlflowException, OSError) as error:
            raise TrackingUnavailable(
                f"lost the MLflow store {self.uri} mid-run: {first_line(error)}\n"
                "No output was written; the runs of this attempt are marked FAILED now, or by "
                "the next train on this host if the store cannot be reached."
            ) from None
        finally:
            self._terminate(self.parent_id, status)

    def attach_text(self, text: str, name: str) -> None:
        """A text file on the parent run (the ranking table)."""
        self.client.log_text(self.parent_id, text, name)

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.parent_id, key, value)

    def child(
        self,
        name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        series: Mapping[str, Iterable[float]],
        final: Mapping[str, float],
        artifacts: Mapping[str, Path],
    ) -> str:
        """Log one finished run whole: params, tags, per-step series, final metrics, files."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                "mlflow.parentRunId": self.parent_id,
                PARENT_KIND_TAG: "schedule",
                **self.process_tags,
                **tags,
            },
        )
        run_id = run.info.run_id
        status = "FAILED"
        try:
            now = int(time.time() * 1000)
            metrics = step_metrics(series, now)
            metrics += [Metric(key, float(value), now, 0) for key, value in final.items()]
            self.log(run_id, params=params, metrics=metrics)
            for folder, path in artifacts.items():
                self.client.log_artifact(run_id, str(path), artifact_path=folder)
            status = "FINISHED"
        finally:
            self._terminate(run_id, status)
        return run_id

    def log(
        self,
        run_id: str,
        params: Mapping[str, str] | None = None,
        metrics: list[Metric] | None = None,
    ) -> None:
        param_list = [Param(k, v) for k, v in (params or {}).items()]
        for chunk in _chunks(param_list, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk, synchronous=True)
        for chunk in _chunks(metrics or [], MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk, synchronous=True)


def first_line(error: Exception) -> str:
    """The first line of an error's message: MLflow's can run to a page of traceback."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def find_train_run(uri: str, experiment: str, metrics_digest: str) -> str | None:
    """The newest train parent run whose metrics file had this digest, if any."""
    fail_fast_over_http(uri)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{OUTPUTS_TAG}` = '{metrics_digest}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def attach_files(uri: str, run_id: str, paths: Iterable[Path], folder: str) -> None:
    client = MlflowClient(tracking_uri=uri)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=folder)
