"""MLflow records: a parent run per train execution, a child run per schedule.

Per-step metrics go through ``log_batch`` in chunks of MLflow's limit, never one round trip per
value. Opening a ``Recorder`` checks the store at once and repairs what a killed train left.
Each child run logs its trained model (:mod:`pipeline.tracking.mlflow_model`) and the data it
read as
dataset inputs; the best run's model is registered in the Model Registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from pipeline.core import files
from pipeline.tracking import mlflow_model
from pipeline.tracking.store import (
    DEFAULT_ARTIFACTS,
    FAILURE_TAG,
    HOST_TAG,
    OUTPUTS_TAG,
    PARENT_KIND_TAG,
    PID_TAG,
    DataFile,
    ModelToLog,
    Registration,
    TrackingUnavailable,
    fail_fast_over_http,
    first_line,
)

CHAMPION = "champion"  # the registered model's alias: the best version so far
SCORE_TAG = "final_loss"  # a version's score: lower is better (the ranking's order)


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


def step_metrics(series: Mapping[str, Iterable[float]], timestamp: int) -> list[Metric]:
    return [
        Metric(key, float(value), timestamp, step)
        for key, values in series.items()
        for step, value in enumerate(values)
    ]


def _batches(params: list[Param], metrics: list[Metric]) -> Iterator[tuple[list, list]]:
    """(params, metrics) per ``log_batch`` call within MLflow's limits; each call is a
    transaction, so the params ride with the first metrics rather than alone."""
    while params or metrics:
        param_chunk, params = params[:MAX_PARAMS_TAGS_PER_BATCH], params[MAX_PARAMS_TAGS_PER_BATCH:]
        room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(param_chunk))
        metric_chunk, metrics = metrics[:room], metrics[room:]
        yield param_chunk, metric_chunk


class Recorder:
    """One parent run (``start`` .. ``finish``), and child runs under it.

    Opening a recorder checks the store at once, and marks FAILED the runs that a killed train
    process on this host left RUNNING. ``pid``: the train process the runs belong to (by
    default this one), which is what a later train checks to tell an abandoned run.
    """

    def __init__(self, uri: str, experiment: str, pid: int | None = None) -> None:
        self.uri = uri
        fail_fast_over_http(uri)
        self.process_tags = {
            HOST_TAG: socket.gethostname(),
            PID_TAG: str(pid or os.getpid()),
        }
        self.parent_id: str | None = None
        self.finished = False
        self.model_ids: dict[str, tuple[str, str]] = {}  # run name -> (run id, model id)
        try:
            with store_lock(uri):
                # Logging a model goes through MLflow's fluent API, which reads the global URI.
                mlflow.set_tracking_uri(uri)
                self.client = MlflowClient(tracking_uri=uri)
                self.experiment_id = experiment_id(self.client, experiment, uri)
                # Logged models go to the fluent API's experiment, not their run's.
                mlflow.set_experiment(experiment_id=self.experiment_id)
                self.reaped = self._reap_abandoned_runs()
        except (MlflowException, OSError) as error:
            refused = isinstance(error, MlflowException) and _refused(error)
            advice = (
                "The server refused the credentials: check MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD, and that this account may write to the experiment."
                if refused
                else "Start the tracking server, fix MLFLOW_TRACKING_URI, or unset it to use "
                "the embedded store."
            )
            raise TrackingUnavailable(
                f"cannot use the MLflow store {uri}: {first_line(error)}\n"
                f"{advice} Nothing was written."
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

    def start(
        self,
        name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        datasets: Sequence[DataFile] = (),
    ) -> str:
        """Open the parent run; the child runs go under it."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={PARENT_KIND_TAG: "train", **self.process_tags, **tags},
        )
        self.parent_id = run.info.run_id
        self.log(self.parent_id, params=params)
        if datasets:
            self.client.log_inputs(self.parent_id, datasets=dataset_inputs(datasets))
        return self.parent_id

    def finish(self, status: str, reason: str | None = None) -> None:
        """Close the parent run FINISHED or FAILED (``reason``: why, as a tag); once."""
        if self.parent_id is None or self.finished:
            return
        self.finished = True
        if reason:
            with contextlib.suppress(MlflowException, OSError):  # closing matters more
                self.client.set_tag(self.parent_id, FAILURE_TAG, reason)
        self._terminate(self.parent_id, status)

    def attach_text(self, text: str, name: str) -> None:
        """A text file on the parent run (the ranking table)."""
        self.client.log_text(self._parent(), text, name)

    def tag(self, key: str, value: str) -> None:
        self.client.set_tag(self._parent(), key, value)

    def _parent(self) -> str:
        if self.parent_id is None:
            raise RuntimeError("the parent run is not started yet: call start() first")
        return self.parent_id

    def child(
        self,
        name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        series: Mapping[str, Iterable[float]],
        final: Mapping[str, float],
        artifacts: Mapping[str, Path],
        datasets: Sequence[DataFile] = (),
        model: ModelToLog | None = None,
    ) -> str:
        """Log one finished run whole: params, tags, per-step series, final metrics, files,
        the data it read, its model."""
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
            self.log(run_id, params=params)
            model_id = None
            if model is not None:
                # Before the metrics: logging a model reads back every metric's whole history
                # (to link the current step's values to the model), seconds for 1000-step runs.
                # The final metrics are linked to it below instead.
                example = mlflow_model.input_example(model.example)
                model_id = mlflow_model.log(
                    {**model.weights, mlflow_model.ACTIVATION: np.array(model.activation)},
                    example,
                    run_id,
                )
                self.model_ids[name] = (run_id, model_id)
            now = int(time.time() * 1000)
            metrics = step_metrics(series, now)
            metrics += [
                Metric(key, float(value), now, 0, model_id=model_id) for key, value in final.items()
            ]
            self.log(run_id, metrics=metrics)
            for folder, path in artifacts.items():
                self.client.log_artifact(run_id, str(path), artifact_path=folder)
            if datasets:
                self.client.log_inputs(run_id, datasets=dataset_inputs(datasets))
            status = "FINISHED"
        finally:
            self._terminate(run_id, status)
        return run_id

    def register(
        self, run_name: str, model_name: str, tags: Mapping[str, str], score: float
    ) -> Registration:
        """Register the model of child run ``run_name`` as a new version of ``model_name``;
        point the ``champion`` alias at it if its score (final loss) beats the champion's."""
        run_id, model_id = self.model_ids[run_name]
        try:
            self.client.create_registered_model(model_name)
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise  # it exists already: then this is a new version of it
        version = self.client.create_model_version(
            model_name,
            source=f"models:/{model_id}",
            run_id=run_id,
            tags={**tags, SCORE_TAG: repr(score), "run_name": run_name},
            model_id=model_id,
        ).version
        champion = self._champion(model_name)
        if champion is not None and score >= float(champion.tags.get(SCORE_TAG, "inf")):
            return Registration(model_name, str(version), run_name, str(champion.version), False)
        self.client.set_registered_model_alias(model_name, CHAMPION, version)
        return Registration(model_name, str(version), run_name, str(version), True)

    def _champion(self, model_name: str) -> ModelVersion | None:
        try:
            return self.client.get_model_version_by_alias(model_name, CHAMPION)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # no alias yet
            raise

    def log(
        self,
        run_id: str,
        params: Mapping[str, str] | None = None,
        metrics: list[Metric] | None = None,
    ) -> None:
        param_list = [Param(k, v) for k, v in (params or {}).items()]
        for param_chunk, metric_chunk in _batches(param_list, metrics or []):
            self.client.log_batch(
                run_id, params=param_chunk, metrics=metric_chunk, synchronous=True
            )


def dataset_inputs(datasets: Iterable[DataFile]) -> list[DatasetInput]:
    """MLflow dataset inputs: name the DVC path, digest the DVC MD5, source path + revision."""
    return [
        DatasetInput(
            Dataset(
                name=data.path,
                digest=data.md5,
                source_type="dvc",
                source=json.dumps({"path": data.path, "rev": data.revision, "md5": data.md5}),
                schema=json.dumps(
                    {"mlflow_colspec": [{"type": t, "name": n} for n, t in data.columns]}
                ),
                profile=json.dumps({"num_rows": data.rows}),
            ),
            tags=[InputTag("mlflow.data.context", data.context)],
        )
        for data in datasets
    ]


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


def _refused(error: MlflowException) -> bool:
    """A login's refusal (401, 403), told from a server that is down or a bad address."""
    if error.get_http_status_code() in (401, 403):
        return True
    # A refusal from the auth app arrives as a plain-text page, which MLflow wraps whole.
    return re.search(r"error code (401|403)\b", str(error)) is not None
