"""docker/compose.yaml, checked without an engine: pinned, healthy, and flags MLflow accepts."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.conftest import BIN, ROOT

COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def test_every_service_is_pinned_checked_and_local():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "mlflow"}
    for name, service in services.items():
        assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+[\w.-]*", service["image"]), (name, service)
        assert service["healthcheck"]["test"], name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in COMPOSE["volumes"], (name, volume)
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.slow  # starts the mlflow command
def test_server_command_uses_only_flags_this_mlflow_accepts():
    command = COMPOSE["services"]["mlflow"]["command"]
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


def test_server_image_matches_the_locked_versions():
    dockerfile = (ROOT / "docker" / "mlflow-server.Dockerfile").read_text()
    lock = (ROOT / "requirements" / "lock.txt").read_text() + (
        ROOT / "requirements" / "test.txt"
    ).read_text()
    for pin in re.findall(r"([\w-]+==[\d.]+)", dockerfile):
        assert pin in lock, pin
    assert "USER mlflow" in dockerfile
