"""A team's tracking server, for real: MLflow on PostgreSQL, the pipeline over HTTP."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from stages.plot import FIGURES
from tests.conftest import BIN, make_project, project_env, run
from tests.servers import mlflow_server, postgres
from tests.test_models import newest_train, torch_probabilities

pytestmark = pytest.mark.server


def test_pipeline_against_a_postgres_backed_server_matches_the_embedded_store(
    tmp_path, monkeypatch
):
    project = make_project(tmp_path / "project")
    env = project_env(project)
    with postgres() as database, mlflow_server(database, tmp_path / "server") as server:
        assert server.url.startswith("http://127.0.0.1:")
        run([str(BIN / "dvc"), "repro"], project, {**env, "MLFLOW_TRACKING_URI": server.url})
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)  # for models:/ below
        remote = MlflowClient(tracking_uri=server.url)
        remote_parent, remote_runs = newest_train(remote)
        figures = {a.path for a in remote.list_artifacts(remote_parent.info.run_id, "figures")}
        weights = {
            a.path for a in remote.list_artifacts(remote_runs["StepLR"].info.run_id, "weights")
        }
        # The registry on the server: the champion is the best run's model, and it loads.
        champion = remote.get_model_version_by_alias("lrsched-logicnet", "champion")
        best = min(remote_runs, key=lambda name: remote_runs[name].data.metrics["rank"])
        assert champion.run_id == remote_runs[best].info.run_id
        assert champion.tags["git.commit"] == remote_parent.data.tags["git.commit"]
        served = mlflow.pyfunc.load_model("models:/lrsched-logicnet@champion")
        points = np.array([[0.0, 0.5], [1.0, -0.5], [-1.0, 0.8]])
        predicted = served.predict(pd.DataFrame(points, columns=["x1", "x2"]))
        # The data each run read, named by DVC's MD5 (it fits PostgreSQL's 36-character digest).
        inputs = {i.dataset.name: i.dataset.digest for i in remote_runs[best].inputs.dataset_inputs}
        remote_history = {
            (name, key): [(m.step, m.value) for m in remote.get_metric_history(r.info.run_id, key)]
            for name, r in remote_runs.items()
            for key in ("lr", "loss")
        }

    # The same stage against the embedded store: the same runs, values and step counts.
    run([str(BIN / "dvc"), "repro", "-f", "-s", "train"], project, env)
    local = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    _, local_runs = newest_train(local)
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
    assert weights == {"weights/StepLR.pt"}
    np.testing.assert_allclose(
        predicted[["probability_0", "probability_1"]],
        torch_probabilities(project / "outputs/models" / f"{best}.pt", points),
        atol=1e-6,
    )
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    locked = {out["path"]: out["md5"] for out in lock["stages"]["generate"]["outs"]}
    assert inputs == {path: locked[path] for path in ("data/train.csv", "data/test.csv")}
