"""Each run's trained LogicNet as an MLflow model; the best one in the Model Registry; the data
each run read as MLflow dataset inputs. Real MLflow, real store, real `mlflow models serve`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from pipeline.problems import data
from tests.conftest import BIN, project_env, run, tiny_document
from tests.servers import free_port, stop, wait_for_http

pytestmark = pytest.mark.pipeline
MODEL_NAME = "lrsched-logicnet"
TRAIN = [
    "train", "--train", "data/train.csv", "--test", "data/test.csv", "--curves", "curves",
    "--models", "models", "--metrics", "metrics.json", "--steps", "steps.csv",
    "--ranking", "ranking.md", "--report", "report.md",
]  # fmt: skip


@pytest.fixture
def store(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The project's embedded store (where its stages write), as this process's too."""
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def train(project: Path, lr: float | None = None) -> subprocess.CompletedProcess:
    """generate + train in ``project`` on its params (``lr``: changed first)."""
    if lr is not None:
        document = yaml.safe_load((project / "params.yaml").read_text())
        document["train"]["lr"] = lr
        (project / "params.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    env = project_env(project)
    lrsched = str(BIN / "lrsched")
    run([lrsched, "generate", "--train", "data/train.csv", "--test", "data/test.csv"], project, env)
    return run([lrsched, *TRAIN], project, env)


def newest_train(client: MlflowClient) -> tuple:
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
    return parent, {child.info.run_name: child for child in children}


def torch_probabilities(weights: Path, points: np.ndarray) -> np.ndarray:
    """LogicNet's class probabilities from the saved weights with plain torch ops: the
    reference the MLflow model must match (first seed)."""
    saved = torch.load(weights, weights_only=True)
    x = torch.tensor(points, dtype=torch.float32)
    hidden = torch.tanh(x @ saved["Liner1.weight"][0].T + saved["Liner1.bias"][0])
    logits = hidden @ saved["Liner2.weight"][0].T + saved["Liner2.bias"][0]
    return torch.softmax(logits, dim=1).double().numpy()


def test_every_run_logs_an_mlflow_model_that_predicts_as_pytorch(project, store):
    train(project)
    client = MlflowClient(store)
    _, children = newest_train(client)
    names = list(tiny_document()["schedulers"])
    assert sorted(children) == sorted(names)
    points = data.read_test_sets(project / "data/test.csv")[0.2].features

    for name, child in children.items():
        model = mlflow.pyfunc.load_model(f"runs:/{child.info.run_id}/model")
        predicted = model.predict(pd.DataFrame(points, columns=["x1", "x2"]))
        expected = torch_probabilities(project / "models" / f"{name}.pt", points)
        assert list(predicted.columns) == ["class", "probability_0", "probability_1"]
        np.testing.assert_allclose(
            predicted[["probability_0", "probability_1"]], expected, atol=1e-6
        )
        np.testing.assert_array_equal(predicted["class"], expected.argmax(axis=1))
        # A plain (n, 2) array is read by position; a frame by its names, in any order.
        pd.testing.assert_frame_equal(model.predict(points), predicted)
        swapped = pd.DataFrame({"x2": points[:, 1], "x1": points[:, 0]})
        pd.testing.assert_frame_equal(model.predict(swapped), predicted)
    with pytest.raises(Exception, match=r"columns \['x1', 'x2'\]"):
        model.predict(pd.DataFrame({"x": points[:, 0], "y": points[:, 1]}))

    # What MLflow's tools read: the flavor, the signature, the example, pinned requirements.
    info = mlflow.models.get_model_info(f"runs:/{children['StepLR'].info.run_id}/model")
    assert "python_function" in info.flavors
    assert info.signature.inputs.to_dict() == [{"type": "double", "required": True}] * 2
    assert info.signature.outputs.input_names() == ["class", "probability_0", "probability_1"]
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    example = json.loads((local / "input_example.json").read_text())
    assert example["columns"] == ["x1", "x2"] and len(example["data"]) == 5
    requirements = (local / "requirements.txt").read_text().split()
    assert requirements == [
        f"{package}=={metadata.version(package)}" for package in ("mlflow", "numpy", "pandas")
    ]  # every one pinned; torch is not needed to serve the model
    # The model carries the run's final metrics and params.
    logged = client.get_logged_model(info.model_id)
    assert logged.source_run_id == children["StepLR"].info.run_id
    assert {m.key for m in logged.metrics} >= {"final_loss", "test_accuracy"}
    assert logged.params["scheduler.gamma"] == children["StepLR"].data.params["scheduler.gamma"]


def test_runs_name_their_data_and_source(project, store):
    train(project)
    train(project)  # the same data twice: the same digests
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("lr-schedulers")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 * (1 + len(tiny_document()["schedulers"]))
    md5 = {
        path: hashlib.md5((project / path).read_bytes()).hexdigest()
        for path in ("data/train.csv", "data/test.csv")
    }
    commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    for found in runs:
        inputs = {i.dataset.name: i for i in found.inputs.dataset_inputs}
        assert sorted(inputs) == sorted(md5)
        for path, entry in inputs.items():
            assert entry.dataset.digest == md5[path]
            assert json.loads(entry.dataset.source) == {
                "path": path,
                "rev": commit,
                "md5": md5[path],
            }
            assert json.loads(entry.dataset.profile)["num_rows"] > 0
        contexts = {i.dataset.name: i.tags[0].value for i in found.inputs.dataset_inputs}
        assert contexts == {"data/train.csv": "training", "data/test.csv": "testing"}
        tags = found.data.tags
        assert tags["mlflow.source.name"] == "lrsched train"  # not under DVC: the command
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"]
        assert tags["mlflow.source.git.commit"] == commit


def test_the_best_run_is_registered_and_a_better_one_takes_the_champion_alias(project, store):
    client = MlflowClient(store)
    first = train(project)
    parent, children = newest_train(client)
    metrics = json.loads((project / "metrics.json").read_text())
    best = next(name for name, row in metrics.items() if row["rank"] == 1.0)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert str(champion.version) == "1"
    assert champion.run_id == children[best].info.run_id
    assert champion.tags["git.commit"] == parent.data.tags["git.commit"]
    assert champion.tags["params.sha256"] == parent.data.tags["params.sha256"]
    assert float(champion.tags["final_loss"]) == pytest.approx(metrics[best]["final_loss"])
    assert f"as {MODEL_NAME} version 1: now the champion" in first.stdout

    # A smaller rate: a worse best run. Registered, but the alias stays.
    worse = train(project, lr=0.002)
    assert "version 2: the champion stays version 1" in worse.stdout
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
    assert client.get_model_version(MODEL_NAME, "2").run_id != champion.run_id

    # A larger rate: a better one. The alias moves to it.
    better = train(project, lr=0.05)
    assert "version 3: now the champion" in better.stdout
    moved = client.get_model_version_by_alias(MODEL_NAME, "champion")
    _, children = newest_train(client)
    best = next(
        name
        for name, row in json.loads((project / "metrics.json").read_text()).items()
        if row["rank"] == 1.0
    )
    assert (str(moved.version), moved.run_id) == ("3", children[best].info.run_id)
    assert float(moved.tags["final_loss"]) < float(champion.tags["final_loss"])
    # The champion loads by its alias.
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    assert len(model.predict(pd.DataFrame({"x1": [0.0], "x2": [0.5]}))) == 1


def test_registering_can_be_turned_off(project, store):
    document = yaml.safe_load((project / "params.yaml").read_text())
    document["mlflow"]["registered_model"] = None
    (project / "params.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = train(project)
    assert "registered" not in result.stdout
    assert MlflowClient(store).search_registered_models() == []


@pytest.mark.server
def test_mlflow_models_serve_answers_as_the_pytorch_model(project, store):
    train(project)
    points = data.read_test_sets(project / "data/test.csv")[0.2].features[:50]
    metrics = json.loads((project / "metrics.json").read_text())
    best = next(name for name, row in metrics.items() if row["rank"] == 1.0)
    port = free_port()
    log = project / "serve.log"
    env = {**project_env(project), "MLFLOW_TRACKING_URI": store}
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, log)
        body = {"dataframe_split": {"columns": ["x1", "x2"], "data": points.tolist()}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            predictions = pd.DataFrame(json.loads(reply.read())["predictions"])
        plain = urllib.request.Request(  # the same points as a plain array
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": points.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(plain, timeout=60) as reply:
            from_array = pd.DataFrame(json.loads(reply.read())["predictions"])
    finally:
        stop(server)
    expected = torch_probabilities(project / "models" / f"{best}.pt", points)
    np.testing.assert_allclose(predictions[["probability_0", "probability_1"]], expected, atol=1e-6)
    np.testing.assert_array_equal(predictions["class"], expected.argmax(axis=1))
    pd.testing.assert_frame_equal(from_array, predictions)
