"""Real servers for the tests, on 127.0.0.1 only: PostgreSQL and the MLflow tracking server,
open or behind its basic-auth app."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.conftest import BIN, ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def require(what: str, found: bool) -> None:
    """Skip where a system service is missing, but fail in CI, whose .ci/run installs it."""
    if found:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; .ci/run should have installed it")
    pytest.skip(f"{what} is not installed (see .ci/run)")


def wait_for_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} not ready in {seconds} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def _serving(command: list[str], env: dict, url: str, log: Path) -> Iterator[subprocess.Popen]:
    """A server process, logging to ``log``, once ``url``/health answers; stopped afterwards."""
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_for_http(f"{url}/health", process, log)
        yield process
    finally:
        stop(process)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


# As docker/compose.yaml runs the server: without MLflow's job runner (seven processes, each
# importing MLflow, for GenAI scorers and trace roll-ups, which this project never logs).
NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# How long the auth server trusts a checked password, as docker/compose.yaml sets it.
AUTH_CACHE = {"MLFLOW_AUTH_CACHE_TTL_SECONDS": "30"}


@contextlib.contextmanager
def mlflow_server(backend_uri: str, folder: Path, port: int | None = None) -> Iterator[Server]:
    """``mlflow server`` with its own artifact store, proxied (``mlflow-artifacts:``)."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"mlflow-server-{port}.log"
    command = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | NO_JOBS
    url = f"http://127.0.0.1:{port}"
    with _serving(command, env, url, log) as process:
        yield Server(url, process, log)


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A private PostgreSQL cluster on 127.0.0.1; yields the SQLAlchemy URI of database mlflow."""
    binaries = _postgres_bin()
    require("PostgreSQL (Debian's postgresql package)", binaries is not None)
    # initdb refuses to run as root: the cluster then belongs to the postgres user, in a folder
    # of its own (pytest's temp folders are closed to other users).
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="lrsched-postgres-"))
    data = folder / "pgdata"
    if as_user:
        shutil.chown(folder, "postgres")
    port = free_port()
    log = folder / "postgres.log"
    subprocess.run(
        [*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
        check=True, capture_output=True,
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder}"
    subprocess.run(
        [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
         "-w", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        subprocess.run(
            [*as_user, str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port),
             "-U", "postgres", "mlflow"],
            check=True, capture_output=True,
        )  # fmt: skip
        # SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3; name the driver we install.
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


ENTRYPOINT = ROOT / "docker" / "mlflow_auth_entrypoint.py"


@dataclass
class AuthServer(Server):
    admin: tuple[str, str]


@contextlib.contextmanager
def mlflow_auth_server(
    backend_uri: str, folder: Path, admin_password: str, port: int | None = None
) -> Iterator[AuthServer]:
    """``mlflow server --app-name basic-auth`` started as the server image starts it: through
    ``docker/mlflow_auth_entrypoint.py``, with the users in the backend's own database (as in
    docker/compose.yaml), the admin's password from a secret file and the rest from the
    environment."""
    require("Flask-WTF (MLflow's basic-auth app needs it)", find_spec("flask_wtf") is not None)
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"mlflow-auth-server-{port}.log"
    secret = folder / "admin_password"
    secret.write_text(f"{admin_password}\n")
    secret.chmod(0o600)
    command = [
        sys.executable, str(ENTRYPOINT),
        str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | NO_JOBS
    env |= AUTH_CACHE | {
        "MLFLOW_AUTH_DATABASE_URI": backend_uri,
        "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(secret),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }
    url = f"http://127.0.0.1:{port}"
    with _serving(command, env, url, log) as process:
        yield AuthServer(url, process, log, ("admin", admin_password))
