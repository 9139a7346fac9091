"""Faults lose nothing: an unreachable or vanishing server, SIGKILL halfway, two writers at once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.tracking.records import store_lock
from tests.conftest import BIN, lean_document, make_project, project_env, run
from tests.servers import free_port, mlflow_server, stop

TRAIN_OUTPUTS = [
    "outputs/curves",
    "outputs/models",
    "outputs/metrics.json",
    "outputs/steps.csv",
    "outputs/ranking.md",
    "outputs/report.md",
]


def train_outputs(project: Path) -> dict[str, bytes]:
    """Every file of the train stage's outputs, by its path in the project."""
    found = {}
    for output in TRAIN_OUTPUTS:
        path = project / output
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                found[str(file.relative_to(project))] = file.read_bytes()
    return found


def train_command(tag: str = "") -> list[str]:
    return [
        str(BIN / "lrsched"), "train", "--train", "data/train.csv", "--test", "data/test.csv",
        "--curves", f"outputs/curves{tag}", "--models", f"outputs/models{tag}",
        "--metrics", f"outputs/metrics{tag}.json", "--steps", f"outputs/steps{tag}.csv",
        "--ranking", f"outputs/ranking{tag}.md", "--report", f"outputs/report{tag}.md",
    ]  # fmt: skip


def slow_document() -> dict:
    """Long enough (about 10 s of training) to be stopped halfway; the tuning at its smallest."""
    return lean_document(schedulers=None, epochs=1500)


def runs(uri: str, status: str | None = None, kind: str | None = None) -> list:
    with store_lock(uri):  # a train may be creating the store's tables right now
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("lr-schedulers")
    if experiment is None:
        return []
    filters = []
    if status:
        filters.append(f"attributes.status = '{status}'")
    if kind:
        filters.append(f"tags.`lrsched.kind` = '{kind}'")
    return client.search_runs([experiment.experiment_id], filter_string=" and ".join(filters))


def assert_whole(store: str, parent, params: dict) -> None:
    """A parent run with a FINISHED child per schedule, each with every step of lr and loss."""
    client = MlflowClient(tracking_uri=store)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert len(children) == len(params["schedulers"])
    for child in children:
        assert child.info.status == "FINISHED"
        for key in ("lr", "loss"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps == list(range(params["train"]["epochs"]))


def wait_until(condition, seconds: float = 120, every: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise TimeoutError("condition not met in time")


@pytest.mark.pipeline  # runs the generate and train stages
def test_unreachable_server_stops_the_stage_and_writes_nothing(project):
    env = {**project_env(project), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    run([str(BIN / "lrsched"), "generate", "--train", "data/train.csv", "--test", "data/test.csv"],
        project, env)  # fmt: skip
    failed = subprocess.run(train_command(), cwd=project, env=env, capture_output=True, text=True)
    assert failed.returncode == 1
    assert "Error: cannot use the MLflow store http://127.0.0.1:" in failed.stderr
    assert "Nothing was written." in failed.stderr
    assert "final loss" not in failed.stdout  # not one run trained
    assert not (project / "outputs").exists()


@pytest.mark.pipeline
@pytest.mark.server
def test_server_going_away_mid_run_fails_loudly_and_is_cleaned_up_later(tmp_path):
    project = make_project(tmp_path / "project", slow_document())
    port = free_port()
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    env = project_env(project)
    run([str(BIN / "lrsched"), "generate", "--train", "data/train.csv", "--test", "data/test.csv"],
        project, env)  # fmt: skip
    with mlflow_server(backend, tmp_path / "server", port) as server:
        env["MLFLOW_TRACKING_URI"] = server.url
        train = subprocess.Popen(
            train_command(), cwd=project, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_until(lambda: len(runs(backend, "FINISHED", "schedule")) >= 1)
        stop(server.process)  # the server goes away while the train is halfway
        stdout, stderr = train.communicate(timeout=300)
    assert train.returncode == 1, stdout + stderr
    assert f"Error: lost the MLflow store {server.url} mid-run" in stderr
    for output in TRAIN_OUTPUTS:
        assert not (project / output).exists(), output
    abandoned = runs(backend, "RUNNING")
    assert abandoned, "the server went away before the runs could be closed"

    # The next train (here a short one) marks them FAILED, as after any killed train.
    (project / "params.yaml").write_text(yaml.safe_dump(lean_document(), sort_keys=False))
    with mlflow_server(backend, tmp_path / "server", port) as server:
        again = run(train_command(), project, env)
    assert f"marked FAILED {len(abandoned)} run(s) that a killed train left RUNNING" in again.stdout
    assert runs(backend, "RUNNING") == []
    for stale in abandoned:
        reread = MlflowClient(tracking_uri=backend).get_run(stale.info.run_id)
        assert reread.info.status == "FAILED"
        assert "ended before finishing" in reread.data.tags["lrsched.failure"]
    for output in TRAIN_OUTPUTS:
        assert (project / output).exists(), output


@pytest.mark.pipeline
def test_sigkill_halfway_leaves_nothing_trusted_and_repro_recovers(tmp_path):
    project = make_project(tmp_path / "project", slow_document())
    env = project_env(project)
    store = f"sqlite:///{project / 'mlflow.db'}"
    repro = subprocess.Popen(
        [str(BIN / "dvc"), "repro"], cwd=project, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until(lambda: (project / "mlflow.db").exists() and runs(store, "FINISHED", "schedule"))
    os.killpg(repro.pid, signal.SIGKILL)  # dvc and the train stage under it, mid-run
    repro.wait()

    for output in [*TRAIN_OUTPUTS, "figures"]:
        assert not (project / output).exists(), output
    leftovers = [p.name for p in (project / "outputs").iterdir() if p.name.startswith(".")]
    assert leftovers, "the killed stage was staging its outputs aside"
    killed = runs(store, "RUNNING")
    assert "train" in {r.data.tags["lrsched.kind"] for r in killed}  # children log whole

    output = run([str(BIN / "dvc"), "repro"], project, env).stdout
    assert "marked FAILED" in output
    for path in [*TRAIN_OUTPUTS, "figures/learning_rates.png"]:
        assert (project / path).exists(), path
    assert [p.name for p in (project / "outputs").iterdir() if p.name.startswith(".")] == [
        ".gitignore"
    ]
    assert runs(store, "RUNNING") == []
    client = MlflowClient(tracking_uri=store)
    assert all(client.get_run(r.info.run_id).info.status == "FAILED" for r in killed)
    assert run([str(BIN / "dvc"), "status"], project, env).stdout.strip() == (
        "Data and pipelines are up to date."
    )


@pytest.mark.pipeline
def test_two_trains_share_the_embedded_store_and_lose_nothing(project):
    env = project_env(project)
    run([str(BIN / "lrsched"), "generate", "--train", "data/train.csv", "--test", "data/test.csv"],
        project, env)  # fmt: skip
    trains = [
        subprocess.Popen(train_command(tag), cwd=project, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for tag in ("-a", "-b")
    ]  # fmt: skip
    for train in trains:
        output = train.communicate(timeout=300)[0]
        assert train.returncode == 0, output

    store = f"sqlite:///{project / 'mlflow.db'}"
    params = yaml.safe_load((project / "params.yaml").read_text())
    parents = runs(store, "FINISHED", "train")
    assert len(parents) == 2
    for parent in parents:
        assert_whole(store, parent, params)


@pytest.mark.pipeline
def test_queued_experiments_in_parallel_all_land_in_the_project_store(tmp_path):
    """`dvc queue start -j 2` runs each experiment in a temporary copy: none may log elsewhere."""
    project = make_project(tmp_path / "project", lean_document())
    env = project_env(project)
    for seeds in (2, 3):
        run([str(BIN / "dvc"), "exp", "run", "--queue", "-S", f"train.seeds={seeds}",
             "-n", f"seeds-{seeds}"], project, env)  # fmt: skip
    run([str(BIN / "dvc"), "queue", "start", "-j", "2"], project, env)
    # Each `dvc queue status` is a DVC process (most of a second of CPU): asked every 2 s, it
    # leaves the two experiments the cores.
    wait_until(
        lambda: (
            run([str(BIN / "dvc"), "queue", "status"], project, env).stdout.count("Success") == 2
        ),
        seconds=600,
        every=2.0,
    )
    store = f"sqlite:///{project / 'mlflow.db'}"
    parents = runs(store, "FINISHED", "train")
    assert sorted(p.data.tags["dvc.experiment"] for p in parents) == ["seeds-2", "seeds-3"]
    assert sorted(p.data.params["train.seeds"] for p in parents) == ["2", "3"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    for parent in parents:
        assert_whole(store, parent, params)
