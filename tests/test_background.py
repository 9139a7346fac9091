"""MLflow in its own process: what it records equals a recorder's own, a failure stops what
follows it but not the FAILED close, and a stage that dies leaves no run RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking.background import Refused, Reply, StoreLost, StoreUnavailable, Tracker
from pipeline.tracking.store import FAILURE_TAG, PID_TAG

SERIES = {"lr": np.geomspace(0.1, 0.001, 50), "loss": np.linspace(1.0, 0.1, 50)}


def open_and_start(tracker: Tracker, uri: str) -> tuple[Reply[tuple[str, ...]], Reply[str]]:
    opened = tracker.open_store(uri, "background", 4242)
    return opened, tracker.start_parent("train", {"train.lr": "0.1"}, {"origin": "test"})


@pytest.mark.pipeline  # MLflow's own process on a store
def test_records_arrive_whole_with_the_stage_pid(store: str, tmp_path: Path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    with Tracker() as tracker:
        opened, started = open_and_start(tracker, store)
        tracker.log_child(
            "StepLR", {"p": "1"}, {"t": "v"}, SERIES, {"final_loss": 0.1}, {"model": weights}
        )
        tracker.finish_parent("FINISHED")
        tracker.wait()
        parent_id = started.get()
        assert opened.get() == ()  # nothing to reap in a fresh store
    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[PID_TAG] == "4242"  # the stage's pid, not the background's
    [child] = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    assert child.info.status == "FINISHED"
    for key, values in SERIES.items():
        history = client.get_metric_history(child.info.run_id, key)
        assert [m.step for m in history] == list(range(len(values)))
        np.testing.assert_array_equal([m.value for m in history], values)
    artifacts = client.list_artifacts(child.info.run_id, "model")
    assert [f.path for f in artifacts] == ["model/model.pt"]


@pytest.mark.pipeline  # MLflow's own process on a store
def test_a_failed_record_refuses_the_rest_but_still_closes_the_run_failed(store: str, tmp_path):
    with Tracker() as tracker:
        _, started = open_and_start(tracker, store)
        missing = tmp_path / "no-such-file.pt"
        first = tracker.log_child("a", {}, {}, SERIES, {}, {"model": missing})
        second = tracker.log_child("b", {}, {}, SERIES, {}, {})
        with pytest.raises(StoreLost) as failed:
            tracker.wait()
        assert failed.value.operation == "log_child"
        with pytest.raises(StoreLost):
            first.get()  # a reply keeps its failure
        with pytest.raises(Refused, match="an earlier record failed"):
            second.get()  # the second child was refused, not logged
        tracker.finish_parent("FAILED").get()
        parent_id = started.get()
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(parent_id).info.status == "FAILED"
    children = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_id}'",
    )
    assert [c.data.tags["mlflow.runName"] for c in children] == ["a"]


@pytest.mark.pipeline  # MLflow's own process
def test_a_store_that_cannot_open_says_so(tmp_path: Path):
    (tmp_path / "file").write_text("")
    uri = f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}"  # under a file: cannot be created
    with Tracker() as tracker:
        open_and_start(tracker, uri)
        with pytest.raises(StoreUnavailable) as failed:
            tracker.wait()
    assert failed.value.operation == "open_store"
    assert f"cannot use the MLflow store {uri}" in failed.value.message


STAGE_THAT_DIES = """
import os, signal, sys
from pipeline.tracking.background import Tracker
if __name__ == "__main__":  # the spawned process imports this file again
    tracker = Tracker()
    tracker.open_store(sys.argv[1], "background", os.getpid())
    started = tracker.start_parent("train", {}, {})
    print(tracker._process.pid, started.get(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.pipeline  # a stage and MLflow's own process
def test_a_stage_killed_mid_run_leaves_no_run_running(store: str, tmp_path: Path):
    script = tmp_path / "stage.py"
    script.write_text(STAGE_THAT_DIES)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, str(script), store], capture_output=True, text=True, env=env
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    background_pid, parent_id = done.stdout.split()
    client = MlflowClient(tracking_uri=store)
    deadline = time.monotonic() + 60
    while client.get_run(parent_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags[FAILURE_TAG] == "the train process ended before finishing"
    while _alive(int(background_pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(int(background_pid)), "the background process outlived its stage"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes; its parent (init) reaps it.
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split()[2] != "Z"


def test_batches_keep_mlflow_limits_and_lose_nothing():
    from mlflow.entities import Metric, Param
    from mlflow.utils.validation import (
        MAX_ENTITIES_PER_BATCH,
        MAX_METRICS_PER_BATCH,
        MAX_PARAMS_TAGS_PER_BATCH,
    )

    from pipeline.tracking.records import _batches

    params = [Param(f"p{i}", str(i)) for i in range(130)]
    metrics = [Metric("loss", float(i), 0, i) for i in range(2500)]
    batches = list(_batches(params, metrics))
    for param_chunk, metric_chunk in batches:
        assert len(param_chunk) <= MAX_PARAMS_TAGS_PER_BATCH
        assert len(metric_chunk) <= MAX_METRICS_PER_BATCH
        assert len(param_chunk) + len(metric_chunk) <= MAX_ENTITIES_PER_BATCH
    assert [p for chunk, _ in batches for p in chunk] == params
    assert [m for _, chunk in batches for m in chunk] == metrics
    assert len(batches) == 3  # 100 params + 900 metrics, 30 + 970, 0 + 630
