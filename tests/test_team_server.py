"""A team's tracking server, for real: MLflow on PostgreSQL, the pipeline over HTTP."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient

from stages.plot import FIGURES
from tests.conftest import BIN, make_project, project_env, run
from tests.servers import mlflow_server, postgres

pytestmark = pytest.mark.slow


def newest_children(uri: str) -> dict:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("lr-schedulers")
    parent = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`lrsched.kind` = 'train'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    return client, parent, {child.data.tags["scheduler"]: child for child in children}


def test_pipeline_against_a_postgres_backed_server_matches_the_embedded_store(tmp_path):
    project = make_project(tmp_path / "project")
    env = project_env(project)
    with postgres() as database, mlflow_server(database, tmp_path / "server") as server:
        assert server.url.startswith("http://127.0.0.1:")
        run([str(BIN / "dvc"), "repro"], project, {**env, "MLFLOW_TRACKING_URI": server.url})
        remote, remote_parent, remote_runs = newest_children(server.url)
        figures = {a.path for a in remote.list_artifacts(remote_parent.info.run_id, "figures")}
        weights = {
            a.path for a in remote.list_artifacts(remote_runs["StepLR"].info.run_id, "model")
        }
        remote_history = {
            (name, key): [(m.step, m.value) for m in remote.get_metric_history(r.info.run_id, key)]
            for name, r in remote_runs.items()
            for key in ("lr", "loss")
        }

    # The same stage against the embedded store: the same runs, values and step counts.
    run([str(BIN / "dvc"), "repro", "-f", "-s", "train"], project, env)
    local, _, local_runs = newest_children(f"sqlite:///{project / 'mlflow.db'}")
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert sorted(remote_runs) == sorted(local_runs) == sorted(params["schedulers"])
    for name, local_run in local_runs.items():
        remote_run = remote_runs[name]
        assert remote_run.info.status == "FINISHED"
        assert remote_run.data.metrics == local_run.data.metrics
        assert remote_run.data.params == local_run.data.params
        for key in ("lr", "loss"):
            history = [
                (m.step, m.value) for m in local.get_metric_history(local_run.info.run_id, key)
            ]
            assert remote_history[(name, key)] == history
            assert len(history) == params["train"]["epochs"]
    assert figures == {f"figures/{name}" for name in FIGURES}
    assert weights == {"model/StepLR.pt"}
