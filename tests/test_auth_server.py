"""The team's tracking server behind MLflow's basic-auth app, for real: who gets in, who writes.

One server for the module, started as docker/compose.yaml starts it (through
docker/mlflow_auth_entrypoint.py, users and permissions in the tracking database), and set up as
docs/sharing.md tells the admin to: the team's experiment and registered model made first, a
writers role with EDIT on both, a writer in it, and a reader with the default READ.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec

import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from stages.plot import FIGURES
from tests.conftest import BIN, ROOT, lean_document, make_project, project_env, run
from tests.servers import ENTRYPOINT, AuthServer, mlflow_auth_server, postgres, require
from tests.test_models import newest_train

DOCUMENT = yaml.safe_load((ROOT / "params.yaml").read_text())
EXPERIMENT = DOCUMENT["mlflow"]["experiment"]
MODEL = DOCUMENT["mlflow"]["registered_model"]
# Not a URI-safe password: the entrypoint and MLflow must carry it as it is.
ADMIN_PASSWORD = f"admin-{secrets.token_hex(8)}%@:/"


@dataclass
class Team:
    server: AuthServer
    experiment_id: str
    admin_run: str  # a run in the team's experiment, for the reader to read
    writer: tuple[str, str]
    reader: tuple[str, str]


@contextlib.contextmanager
def signed_in(user: tuple[str, str] | None) -> Iterator[None]:
    """MLflow's client (and AuthServiceClient) as ``user``, through the standard variables."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            patch.delenv(name, raising=False)
        if user is not None:
            patch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
            patch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
        yield


def rest(
    server: AuthServer, path: str, body: dict | None = None, user: tuple[str, str] | None = None
) -> tuple[int, str]:
    """A raw REST call (POST with a body, else GET): its status and body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{server.url}/api/2.0/mlflow/{path}", data, {"Content-Type": "application/json"}
    )
    if user is not None:
        token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def inventory(team: Team) -> dict[str, set[str]]:
    """Everything a write could add, as the admin sees it: experiments, runs, models, versions."""
    with signed_in(team.server.admin):
        client = MlflowClient(team.server.url)
        experiments = client.search_experiments(view_type=ViewType.ALL)
        runs = client.search_runs(
            [e.experiment_id for e in experiments], run_view_type=ViewType.ALL, max_results=5000
        )
        models = client.search_registered_models()
        versions = client.search_model_versions()
    return {
        "experiments": {e.experiment_id for e in experiments},
        "runs": {r.info.run_id for r in runs},
        "models": {m.name for m in models},
        "versions": {f"{v.name}/{v.version}" for v in versions},
    }


def status_of(call) -> int:
    with pytest.raises(MlflowException) as refused:
        call()
    return refused.value.get_http_status_code()


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> Iterator[Team]:
    folder = tmp_path_factory.mktemp("auth-server")
    with postgres() as database, mlflow_auth_server(database, folder, ADMIN_PASSWORD) as server:
        # Importing it needs Flask-WTF, as the server does: mlflow_auth_server checked.
        from mlflow.server.auth.client import AuthServiceClient

        writer = ("wanda", f"writer-{secrets.token_hex(8)}")
        reader = ("rita", f"reader-{secrets.token_hex(8)}")
        with signed_in(server.admin):
            admin = AuthServiceClient(server.url)
            client = MlflowClient(server.url)
            for username, password in (writer, reader):
                admin.create_user(username, password)
            # The admin makes both first: any signed-in user may create an experiment or a
            # model, and whoever does is its manager.
            experiment_id = client.create_experiment(EXPERIMENT)
            client.create_registered_model(MODEL)
            role = admin.create_role("default", "lrsched-writers")
            admin.add_role_permission(role.id, "experiment", experiment_id, "EDIT")
            admin.add_role_permission(role.id, "registered_model", MODEL, "EDIT")
            admin.assign_role(writer[0], role.id)
            admin_run = client.create_run(experiment_id, run_name="admin's").info.run_id
            client.log_metric(admin_run, "loss", 0.5)
            client.set_terminated(admin_run)
        yield Team(server, experiment_id, admin_run, writer, reader)


@pytest.mark.server
def test_without_credentials_every_call_is_refused_and_nothing_is_written(team):
    before = inventory(team)
    calls = {
        "runs/create": {"experiment_id": team.experiment_id},
        "runs/search": {"experiment_ids": [team.experiment_id]},
        "experiments/search": {"max_results": 10},
        "experiments/create": {"name": "anonymous"},
        "registered-models/create": {"name": "anonymous-model"},
    }
    for path, body in calls.items():
        status, text = rest(team.server, path, body)
        assert status == 401, (path, status, text)
    status, _ = rest(team.server, f"runs/get?run_id={team.admin_run}")
    assert status == 401
    # What makes a browser ask for a name and password.
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{team.server.url}/", timeout=30)
    assert anonymous.value.code == 401
    assert anonymous.value.headers["WWW-Authenticate"] == 'Basic realm="mlflow"'
    # The health check, as compose and the tests use it, needs none.
    with urllib.request.urlopen(f"{team.server.url}/health", timeout=30) as reply:
        assert reply.status == 200
    with signed_in(None):
        assert status_of(lambda: MlflowClient(team.server.url).search_experiments()) == 401
    assert inventory(team) == before


@pytest.mark.server
def test_a_wrong_password_is_refused_and_lrsched_says_why(team, tmp_path):
    before = inventory(team)
    for user in ((team.writer[0], "not-the-password"), ("nobody", team.writer[1])):
        for path, body in (
            ("experiments/search", {"max_results": 10}),
            ("runs/create", {"experiment_id": team.experiment_id}),
        ):
            status, _ = rest(team.server, path, body, user)
            assert status == 401, (user, path, status)
    # The project's own client path (`lrsched ui` reads the experiment's id over HTTP).
    env = project_env(tmp_path) | {
        "MLFLOW_TRACKING_URI": team.server.url,
        "MLFLOW_TRACKING_USERNAME": team.writer[0],
    }
    link = [str(BIN / "lrsched"), "ui", "--print-link", "--params", str(ROOT / "params.yaml")]
    refused = subprocess.run(
        link, cwd=tmp_path, capture_output=True, text=True,
        env=env | {"MLFLOW_TRACKING_PASSWORD": "not-the-password"},
    )  # fmt: skip
    assert refused.returncode == 1, refused
    assert "401" in refused.stderr and "not authenticated" in refused.stderr, refused.stderr
    allowed = run(link, tmp_path, env | {"MLFLOW_TRACKING_PASSWORD": team.writer[1]})
    expected = f"{team.server.url}/#/experiments/{team.experiment_id}/runs"
    assert allowed.stdout.strip() == expected
    # The pipeline: the first stage that opens the store (tune) stops, and writes no output.
    project = make_project(tmp_path / "project")
    stopped = subprocess.run(
        [str(BIN / "dvc"), "repro"], cwd=project, capture_output=True, text=True,
        env=project_env(project) | {
            "MLFLOW_TRACKING_URI": team.server.url,
            "MLFLOW_TRACKING_USERNAME": team.writer[0],
            "MLFLOW_TRACKING_PASSWORD": "not-the-password",
        },
    )  # fmt: skip
    assert stopped.returncode != 0
    assert "cannot use the MLflow store" in stopped.stderr and "401" in stopped.stderr, stopped
    assert "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in stopped.stderr
    assert "Start the tracking server" not in stopped.stderr  # it is up: the login failed
    assert not (project / "outputs").exists() and not (project / "figures").exists()
    assert inventory(team) == before


@pytest.mark.server
def test_a_reader_browses_the_team_but_cannot_write_to_it(team):
    before = inventory(team)
    with signed_in(team.reader):
        client = MlflowClient(team.server.url)
        assert EXPERIMENT in {e.name for e in client.search_experiments()}
        assert client.get_experiment_by_name(EXPERIMENT).experiment_id == team.experiment_id
        found = client.search_runs([team.experiment_id])
        assert team.admin_run in {r.info.run_id for r in found}
        assert client.get_run(team.admin_run).data.metrics == {"loss": 0.5}
        assert [m.value for m in client.get_metric_history(team.admin_run, "loss")] == [0.5]
        assert client.get_registered_model(MODEL).name == MODEL
        refused = {
            "create a run": lambda: client.create_run(team.experiment_id),
            "log to a run": lambda: client.log_metric(team.admin_run, "loss", 9.0),
            "tag a run": lambda: client.set_tag(team.admin_run, "by", "rita"),
            "end a run": lambda: client.set_terminated(team.admin_run, "FAILED"),
            "delete a run": lambda: client.delete_run(team.admin_run),
            "tag the experiment": lambda: client.set_experiment_tag(
                team.experiment_id, "by", "rita"
            ),
            "rename the experiment": lambda: client.rename_experiment(team.experiment_id, "x"),
            "add a model version": lambda: client.create_model_version(
                MODEL, f"runs:/{team.admin_run}/model", run_id=team.admin_run
            ),
            "tag the model": lambda: client.set_registered_model_tag(MODEL, "by", "rita"),
            "create a run in Default": lambda: client.create_run("0"),
        }
        statuses = {what: status_of(call) for what, call in refused.items()}
    assert statuses == dict.fromkeys(refused, 403)
    assert inventory(team) == before
    with signed_in(team.server.admin):
        admin_run = MlflowClient(team.server.url).get_run(team.admin_run)
    assert admin_run.info.status == "FINISHED" and admin_run.data.tags.get("by") is None


@pytest.mark.server
def test_a_reader_can_still_create_and_write_experiments_and_models_of_their_own(team):
    """What READ does not stop (docs/sharing.md says so): creating an experiment or a registered
    model, which its creator then manages, and writing runs there; the team's stay closed."""
    with signed_in(team.reader):
        client = MlflowClient(team.server.url)
        own = client.create_experiment("rita-scratch")
        run_id = client.create_run(own).info.run_id
        client.log_metric(run_id, "loss", 1.0)
        client.create_registered_model("rita-model")
        # A team name already taken by the admin stays the team's.
        with pytest.raises(MlflowException, match="RESOURCE_ALREADY_EXISTS"):
            client.create_registered_model(MODEL)
        assert status_of(lambda: client.create_run(team.experiment_id)) == 403
    with signed_in(team.writer):
        writer = MlflowClient(team.server.url)
        assert writer.get_run(run_id).data.metrics == {"loss": 1.0}  # READ, by default
        assert status_of(lambda: writer.create_run(own)) == 403


@pytest.mark.server
def test_members_change_their_own_password_and_no_one_elses(team):
    from mlflow.server.auth.client import AuthServiceClient

    first, second = f"first-{secrets.token_hex(8)}", f"second-{secrets.token_hex(8)}"
    with signed_in(team.server.admin):
        AuthServiceClient(team.server.url).create_user("pat", first)
    with signed_in(("pat", first)):
        own = AuthServiceClient(team.server.url)
        own.update_user_password("pat", second, current_password=first)
    with signed_in(("pat", second)):
        own = AuthServiceClient(team.server.url)
        assert status_of(lambda: own.update_user_password(team.reader[0], "taken-over-123")) == 403
        assert EXPERIMENT in {e.name for e in MlflowClient(team.server.url).search_experiments()}
    status, _ = rest(team.server, "experiments/search", {"max_results": 1}, ("pat", first))
    assert status == 401
    status, _ = rest(team.server, "experiments/search", {"max_results": 1}, team.reader)
    assert status == 200


@pytest.mark.server
def test_the_pipeline_logs_everything_with_a_writers_credentials(team, tmp_path):
    # The tuning at its smallest (a workload tuned, one held out, two schedules) and three
    # trained schedules: each child run is one more round of HTTP calls, and the subject here is
    # who may write, not what the runs compute (tests/test_team_server.py takes every schedule).
    project = make_project(tmp_path / "project", lean_document())
    env = project_env(project) | {
        "MLFLOW_TRACKING_URI": team.server.url,
        "MLFLOW_TRACKING_USERNAME": team.writer[0],
        "MLFLOW_TRACKING_PASSWORD": team.writer[1],
    }
    run([str(BIN / "dvc"), "repro"], project, env)
    params = yaml.safe_load((project / "params.yaml").read_text())
    with signed_in(team.reader):  # what the writer logged, the reader sees
        client = MlflowClient(team.server.url)
        parent, children = newest_train(client)
        assert parent.info.experiment_id == team.experiment_id
        assert parent.info.status == "FINISHED"
        assert sorted(children) == sorted(params["schedulers"])
        for name, child in children.items():
            assert child.info.status == "FINISHED", name
            assert {"final_loss", "rank"} <= set(child.data.metrics), name
            history = client.get_metric_history(child.info.run_id, "lr")
            assert len(history) == params["train"]["epochs"], name
        figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
        assert figures == {f"figures/{name}" for name in FIGURES}
        weights = {a.path for a in client.list_artifacts(children["StepLR"].info.run_id, "weights")}
        assert weights == {"weights/StepLR.pt"}
        tune = client.search_runs(
            [team.experiment_id], filter_string="tags.`lrsched.kind` = 'tune'", max_results=1
        )
        assert tune and tune[0].info.status == "FINISHED"
        champion = client.get_model_version_by_alias(MODEL, "champion")
        best = min(children, key=lambda name: children[name].data.metrics["rank"])
        assert champion.run_id == children[best].info.run_id
        experiment = client.get_experiment(team.experiment_id)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    metrics = json.loads((project / "outputs" / "metrics.json").read_text())
    assert sorted(metrics) == sorted(params["schedulers"])


@pytest.mark.server
def test_the_entrypoint_writes_what_mlflow_reads(tmp_path):
    """Secrets from variables and from ``*_FILE``s reach MLflow's own reader as they were."""
    require("Flask-WTF (MLflow's basic-auth app needs it)", find_spec("flask_wtf") is not None)
    database = "postgresql+psycopg2://mlflow:p%40ss%25word@postgres:5432/mlflow"
    (tmp_path / "database").write_text(f"{database}\n")
    (tmp_path / "key").write_text("the-flask-key\n")
    show = """
import json, os, stat
from pathlib import Path
from mlflow.server.auth.config import read_auth_config
ini = Path(os.environ["MLFLOW_AUTH_CONFIG_PATH"])
modes = [stat.S_IMODE(ini.stat().st_mode), stat.S_IMODE(ini.parent.stat().st_mode)]
print(json.dumps({"config": read_auth_config()._asdict(), "env": dict(os.environ), "modes": modes}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "MLFLOW_AUTH_DATABASE_URI_FILE": str(tmp_path / "database"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": str(tmp_path / "key"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MLFLOW_AUTH_CACHE_TTL_SECONDS": "45",
    }
    started = run([sys.executable, str(ENTRYPOINT), sys.executable, "-c", show], tmp_path, env)
    shown = json.loads(started.stdout)
    config, server_env = shown["config"], shown["env"]
    assert config["database_uri"] == database
    assert config["default_permission"] == "READ"
    assert config["auth_cache_ttl_seconds"] == 45
    assert (config["admin_username"], config["admin_password"]) == ("admin", ADMIN_PASSWORD)
    assert server_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "the-flask-key"
    # Only what MLflow reads from its environment: the rest stays in the private ini.
    assert {k for k in server_env if k.startswith("MLFLOW_")} == {
        "MLFLOW_AUTH_CONFIG_PATH",
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    }
    assert shown["modes"] == [0o600, 0o700]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "set MLFLOW_AUTH_DATABASE_URI"),
        ({"MLFLOW_AUTH_DATABASE_URI": ""}, "set MLFLOW_AUTH_DATABASE_URI"),
        (
            {"MLFLOW_AUTH_DATABASE_URI": "sqlite:///a.db", "MLFLOW_AUTH_DATABASE_URI_FILE": "/x"},
            "both MLFLOW_AUTH_DATABASE_URI and MLFLOW_AUTH_DATABASE_URI_FILE are set",
        ),
        (
            {"MLFLOW_AUTH_DATABASE_URI_FILE": "/nonexistent/secret"},
            "MLFLOW_AUTH_DATABASE_URI_FILE: cannot read /nonexistent/secret",
        ),
        (
            {"MLFLOW_AUTH_DATABASE_URI": "sqlite:///a.db", "MLFLOW_AUTH_DEFAULT_PERMISSION": "ALL"},
            "MLFLOW_AUTH_DEFAULT_PERMISSION='ALL': use one of READ, USE, EDIT, MANAGE",
        ),
        (
            {"MLFLOW_AUTH_DATABASE_URI": "sqlite:///a.db", "MLFLOW_AUTH_CACHE_TTL_SECONDS": "1m"},
            "MLFLOW_AUTH_CACHE_TTL_SECONDS='1m': use a whole number of seconds, 0 for off",
        ),
    ],
)
def test_the_entrypoint_refuses_to_start_a_server_it_cannot_configure(env, message, tmp_path):
    marker = tmp_path / "started"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    refused = subprocess.run(
        [sys.executable, str(ENTRYPOINT), "touch", str(marker)],
        env=clean | env, capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == 1
    assert message in refused.stderr, refused.stderr
    assert not marker.exists()
