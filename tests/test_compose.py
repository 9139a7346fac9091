"""docker/compose.yaml, checked without an engine: pinned, healthy, and flags MLflow and Ray
accept; the tracking server behind MLflow's basic-auth app with every secret from the
environment; the `cluster` profile's Ray nodes started only on request."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from importlib.metadata import entry_points

import pytest
import yaml

from tests.conftest import BIN, ROOT
from tests.servers import AUTH_CACHE, NO_JOBS

DOCKER = ROOT / "docker"
TEXT = (DOCKER / "compose.yaml").read_text()
COMPOSE = yaml.safe_load(TEXT)
SERVICES = COMPOSE["services"]
SERVER_DOCKERFILE = (DOCKER / "mlflow-server.Dockerfile").read_text()
CLUSTER = {"ray-head", "ray-worker"}
# `${NAME:?message}`: compose refuses to start while NAME is unset or empty.
REQUIRED = re.compile(r"\$\{(\w+):\?[^}]+\}")


def test_every_service_is_pinned_checked_and_local():
    assert set(SERVICES) == {"postgres", "mlflow", *CLUSTER}
    for name, service in SERVICES.items():
        assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+[\w.-]*", service["image"]), (name, service)
        assert service["healthcheck"]["test"], name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in COMPOSE["volumes"], (name, volume)
    assert SERVICES["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.server  # starts the mlflow command
def test_server_command_uses_only_flags_this_mlflow_accepts():
    command = SERVICES["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    accepted = subprocess.run(
        [str(BIN / "mlflow"), "server", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags = [word for word in command if word.startswith("--")]
    assert flags, command
    for flag in flags:
        assert re.search(rf"(^|\s){re.escape(flag)}[\s/=]", accepted), flag
    backend = command[command.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://")  # the driver tests/servers.py runs
    app = command[command.index("--app-name") + 1]
    assert app in {e.name for e in entry_points(group="mlflow.app")}


def test_server_image_matches_the_locked_versions():
    lock = (ROOT / "requirements" / "lock.txt").read_text() + (
        ROOT / "requirements" / "test.txt"
    ).read_text()
    for pin in re.findall(r"([\w-]+==[\d.]+)", SERVER_DOCKERFILE):
        assert pin in lock, pin
    assert "USER mlflow" in SERVER_DOCKERFILE


def test_the_server_lets_in_only_the_team():
    """Basic auth, started through the entrypoint that writes its settings from the
    environment; every secret a required variable, none written in the file."""
    server = SERVICES["mlflow"]
    command = server["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    # The image's entrypoint, which compose leaves alone, is the auth one; the build context
    # holds the file it copies.
    assert "entrypoint" not in server
    entrypoint = '["python", "/usr/local/bin/mlflow-auth-entrypoint"]'
    assert f"ENTRYPOINT {entrypoint}" in SERVER_DOCKERFILE
    copied = re.search(
        r"^COPY (\S+) /usr/local/bin/mlflow-auth-entrypoint$", SERVER_DOCKERFILE, re.M
    )
    context = (DOCKER / server["build"]["context"]).resolve()
    assert copied and (context / copied[1]).is_file()
    assert (
        context / server["build"]["dockerfile"]
    ).resolve() == DOCKER / "mlflow-server.Dockerfile"
    # What compose sets is what the entrypoint reads.
    spec = importlib.util.spec_from_file_location(
        "entrypoint", DOCKER / "mlflow_auth_entrypoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    environment = server["environment"]
    # Besides, only what the tests' servers set too (MLflow reads it itself).
    assert set(environment) <= {*module.SECRETS, *module.SETTINGS, *NO_JOBS}
    assert NO_JOBS.items() <= environment.items()
    assert AUTH_CACHE.items() <= environment.items()
    assert environment["MLFLOW_AUTH_DEFAULT_PERMISSION"] == "READ"
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert REQUIRED.fullmatch(environment[name]), (name, environment[name])
    # The users' database is the tracking database, with the same required password.
    assert (
        environment["MLFLOW_AUTH_DATABASE_URI"] == command[command.index("--backend-store-uri") + 1]
    )


def test_no_secret_is_written_in_the_compose_file():
    secret_names = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b")
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if secret_names.search(key):
                assert REQUIRED.fullmatch(str(value)), (name, key, value)
    # Every password inside a URI (user:password@host) is a required variable.
    in_uris = re.findall(r"://[^/\s:@]+:([^@\n]+)@", TEXT)
    assert in_uris
    for password in in_uris:
        assert REQUIRED.fullmatch(password), password
    # No value names a secret but through a variable (a `KEY=value` in a command, say).
    for value in _scalars(SERVICES):
        assert not re.search(r"password|secret|token", re.sub(r"\$\{[^}]*\}", "", value), re.I)


def test_the_cluster_starts_only_with_its_profile():
    for name, service in SERVICES.items():
        assert service.get("profiles") == (["cluster"] if name in CLUSTER else None), name
    # The pipeline's CPU image, as docker/Dockerfile tags it, built here and never pulled.
    tags = re.findall(r"^ARG LRSCHED_IMAGE=(\S+-cpu)$", (DOCKER / "Dockerfile").read_text(), re.M)
    for name in CLUSTER:
        service = SERVICES[name]
        assert [service["image"]] == tags and service["pull_policy"] == "never", name
        assert "volumes" not in service and "build" not in service, name
        assert _bytes(service["shm_size"]) > _flag(service["command"], "--object-store-memory")
    head, worker = SERVICES["ray-head"]["command"], SERVICES["ray-worker"]["command"]
    assert head[:4] == ["ray", "start", "--head", "--block"]
    assert worker[:3] == ["ray", "start", "--block"]
    port = _flag(head, "--port")
    assert SERVICES["ray-head"]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"--address=ray-head:{port}" in worker
    assert SERVICES["ray-worker"]["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    for command in (head, worker):
        assert "--disable-usage-stats" in command
        assert re.fullmatch(r"--num-cpus=\$\{\w+:-\d+\}", _option(command, "--num-cpus"))
    assert "--include-dashboard=false" in head
    assert SERVICES["ray-head"]["healthcheck"]["test"][1:4] == ["ray", "status", "--address"]
    worker_check = " ".join(SERVICES["ray-worker"]["healthcheck"]["test"])
    assert "6380" in worker_check and "--node-manager-port=6380" in worker


def test_the_cluster_commands_use_only_flags_this_ray_accepts():
    ray = BIN / "ray"
    if not ray.exists():
        pytest.skip("Ray is not installed in this venv (pip install -e '.[ray]')")
    check_ray_flags(str(ray))


def check_ray_flags(ray: str) -> None:
    """Every flag of the cluster's `ray start` and `ray status` commands is one this Ray lists."""
    start = subprocess.run(
        [ray, "start", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in CLUSTER:
        command = SERVICES[name]["command"]
        assert command[:2] == ["ray", "start"]
        for word in command[2:]:
            flag = word.split("=")[0]
            assert re.search(rf"^\s+{re.escape(flag)}\b", start, re.M), (name, flag)
    status = subprocess.run(
        [ray, "status", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"^\s+--address\b", status, re.M)


def _scalars(node) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _scalars(value)]
    if isinstance(node, list):
        return [s for value in node for s in _scalars(value)]
    return [str(node)]


def _option(command: list[str], flag: str) -> str:
    (found,) = [word for word in command if word.split("=")[0] == flag]
    return found


def _flag(command: list[str], flag: str) -> int:
    return int(_option(command, flag).split("=", 1)[1])


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)b?", size.lower()).groups()
    return int(number) * 1024 ** " kmg".index(unit or " ")
