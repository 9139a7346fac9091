"""The Ray engine on a real two-node cluster (tests/clusters.py): the local engine's bytes,
work on both nodes, and faults: a worker node killed mid-sweep, the driver killed mid-sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.clusters import Cluster, two_nodes
from tests.conftest import BIN, copy_project, make_project, run, tiny_document
from tests.test_faults import (
    TRAIN_OUTPUTS,
    assert_whole,
    runs,
    train_command,
    train_outputs,
    wait_until,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster():
    with two_nodes() as made:
        yield made


def _parents(store: str, kind: str) -> list:
    return [r for r in runs(store, kind=kind) if "mlflow.parentRunId" not in r.data.tags]


def _children(store: str, parent) -> list:
    client = MlflowClient(tracking_uri=store)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )


def _ray_project(root: Path, document: dict, cluster: Cluster) -> tuple[Path, dict, str]:
    """A project whose params send training to ``cluster``, its data generated."""
    document["execution"] = {"engine": "ray", "address": cluster.address, "shards": 4}
    project = make_project(root, document)
    store = f"sqlite:///{project / 'mlflow.db'}"
    env = {**cluster.env, "MLFLOW_TRACKING_URI": store}
    run([str(BIN / "lrsched"), "generate", "--train", "data/train.csv", "--test", "data/test.csv"],
        project, env)  # fmt: skip
    return project, env, store


def _local_twin(project: Path, env: dict) -> dict[str, bytes]:
    """The same train with the local engine, in a copy: its outputs."""
    twin = copy_project(project, project.parent / "local-twin")
    document = yaml.safe_load((twin / "params.yaml").read_text())
    document["execution"] = {"engine": "local", "address": "auto", "shards": "auto"}
    (twin / "params.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    for output in TRAIN_OUTPUTS:
        subprocess.run(["rm", "-rf", str(twin / output)], check=True)
    local_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{twin / 'mlflow.db'}"}
    run(train_command(), twin, local_env)
    return train_outputs(twin)


def test_dvc_exp_run_on_ray_gives_the_local_lock_and_trains_on_both_nodes(
    reproduced, cluster, tmp_path
):
    """`dvc exp run -S execution.engine=ray -S execution.address=HOST:PORT`, as the docs give
    it (-f: the local run already made every output), run from inside the namespace. Two
    shards: `auto` keeps a sweep this small in one (docs/cluster.md#speed)."""
    project = copy_project(reproduced["root"], tmp_path / "project")
    local_lock = (project / "dvc.lock").read_text()
    store = f"sqlite:///{project / 'mlflow.db'}"
    command = [
        "dvc", "exp", "run", "-f",
        "-S", "execution.engine=ray", "-S", f"execution.address={cluster.address}",
        "-S", "execution.shards=2",
    ]  # fmt: skip
    repro = cluster.run(command, cwd=project)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "as Ray tasks (2 shards) on the cluster at 127.0.0.1:6379" in repro.stdout

    # Every stage ran again, on the cluster, and wrote the very bytes the local engine did:
    # the same lock, hash for hash (execution is no stage's dependency).
    assert (project / "dvc.lock").read_text() == local_lock
    assert yaml.safe_load((project / "params.yaml").read_text())["execution"]["engine"] == "ray"

    nodes = cluster.nodes()
    assert len(nodes) == 2 and all(nodes.values())
    for kind in ("train", "tune"):
        parent = max(_parents(store, kind), key=lambda r: r.info.start_time)
        tags = parent.data.tags
        assert tags["execution.engine"] == "ray", kind
        assert tags["execution.address"] == cluster.address, kind
        children = _children(store, parent)
        assert children, kind
        per_child = [set(child.data.tags["execution.nodes"].split(",")) for child in children]
        assert all(found <= set(nodes) for found in per_child), kind
        # Both nodes trained: a shard each (train), workloads on each (tune).
        assert set().union(*per_child) == set(nodes) == set(tags["execution.nodes"].split(","))
    local = [r for r in _parents(store, "train") if r.data.tags["execution.engine"] == "local"]
    assert local, "the copied store keeps the local run, tagged as such"


def test_a_killed_driver_leaves_its_runs_failed_and_its_tasks_stopped(cluster, tmp_path):
    document = tiny_document(epochs=3000)  # killed as soon as it trains: the length costs nothing
    document["train"]["seeds"] = 12
    project, env, store = _ray_project(tmp_path / "project", document, cluster)
    driver = cluster.popen(
        train_command(), cwd=project, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until(lambda: runs(store, "RUNNING") and any(cluster.running_units().values()))
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    # Ray ends a dead driver's tasks: nothing keeps training for nobody.
    wait_until(lambda: not any(cluster.running_units().values()), seconds=60)
    killed = runs(store, "RUNNING")
    assert [r.data.tags["lrsched.kind"] for r in killed] == ["train"]
    assert not (project / "outputs" / "metrics.json").exists()

    # The next train (here a short one, on the local engine) marks it FAILED, as after any
    # killed train.
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_document(), sort_keys=False))
    again = run(train_command(), project, env)
    assert "marked FAILED 1 run(s) that a killed train left RUNNING" in again.stdout
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(killed[0].info.run_id).info.status == "FAILED"


def test_a_worker_node_killed_mid_sweep_loses_and_repeats_no_run(tmp_path):
    with two_nodes(prompt_death=True) as cluster:  # its own: it loses a node
        _kill_a_worker_node_mid_sweep(cluster, tmp_path)


def _kill_a_worker_node_mid_sweep(cluster: Cluster, tmp_path: Path) -> None:
    # Long enough (shards of about 3 s) for a unit to be caught running on the worker node.
    document = tiny_document(epochs=3000)
    document["train"]["seeds"] = 6
    project, env, store = _ray_project(tmp_path / "project", document, cluster)
    driver = cluster.popen(
        train_command(), cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    while not cluster.running_units()["worker"] and driver.poll() is None:
        time.sleep(0.05)
    assert driver.poll() is None, "the sweep ended before a unit ran on the worker node"
    cluster.kill_worker_node()
    killed_at = time.monotonic()
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stdout + stderr
    assert list(cluster.nodes().values()).count(True) == 1  # the worker node is gone
    print(f"finished {time.monotonic() - killed_at:.1f} s after the node was killed")

    # One parent, a FINISHED child per schedule with every step: none missing, none twice.
    (parent,) = _parents(store, "train")
    assert parent.info.status == "FINISHED"
    assert_whole(store, parent, document)
    names = [child.info.run_name for child in _children(store, parent)]
    assert sorted(names) == sorted(document["schedulers"])
    # The retried units computed what the local engine computes.
    assert train_outputs(project) == _local_twin(project, env)
