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

from pipeline.background import Background, RecordError
from pipeline.tracking import FAILURE_TAG, PID_TAG

SERIES = {"lr": np.geomspace(0.1, 0.001, 50), "loss": np.linspace(1.0, 0.1, 50)}


def open_and_start(background: Background, uri: str) -> None:
    background.call("Recorder", uri, "background", 4242)
    background.record("start", "train", {"train.lr": "0.1"}, {"origin": "test"})


def test_records_arrive_whole_with_the_stage_pid(store: str, tmp_path: Path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    with Background() as background:
        open_and_start(background, store)
        background.record(
            "child", "StepLR", {"p": "1"}, {"t": "v"}, SERIES, {"final_loss": 0.1},
            {"model": weights},
        )  # fmt: skip
        background.record("finish", "FINISHED")
        background.wait()
        parent_id = background.answers["start"]
        assert background.answers["Recorder"] == []  # nothing to reap in a fresh store
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


def test_a_failed_call_skips_the_rest_but_still_closes_the_run_failed(store: str, tmp_path):
    with Background() as background:
        open_and_start(background, store)
        missing = tmp_path / "no-such-file.pt"
        background.record("child", "a", {}, {}, SERIES, {}, {"model": missing})
        background.record("child", "b", {}, {}, SERIES, {}, {})
        with pytest.raises(RecordError) as failed:
            background.wait()
        assert failed.value.call == "child"
        assert failed.value.kind == "store"
        with pytest.raises(RecordError, match="an earlier call failed"):
            background.wait()  # the second child was refused, not logged
        background.record("finish", "FAILED")
        background.wait()
        parent_id = background.answers["start"]
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(parent_id).info.status == "FAILED"
    children = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_id}'",
    )
    assert [c.data.tags["mlflow.runName"] for c in children] == ["a"]


def test_a_store_that_cannot_open_says_so(tmp_path: Path):
    (tmp_path / "file").write_text("")
    uri = f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}"  # under a file: cannot be created
    with Background() as background:
        open_and_start(background, uri)
        with pytest.raises(RecordError) as failed:
            background.wait()
    assert failed.value.call == "Recorder"
    assert failed.value.kind == "unavailable"
    assert f"cannot use the MLflow store {uri}" in failed.value.message


STAGE_THAT_DIES = """
import os, signal, sys
from pipeline.background import Background
if __name__ == "__main__":  # the spawned process imports this file again
    background = Background()
    background.call("Recorder", sys.argv[1], "background", os.getpid())
    background.record("start", "train", {}, {})
    background.wait()
    print(background._process.pid, background.answers["start"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


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

    from pipeline.records import _batches

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
