"""Start the tracking server behind MLflow's basic-auth app, its secrets from the environment.

    python mlflow_auth_entrypoint.py mlflow server --app-name basic-auth ...

MLflow reads the auth app's settings from an ini file (``MLFLOW_AUTH_CONFIG_PATH``). This writes
that file at start, into a fresh folder only this user can read, from the environment, then
replaces itself with the command. Each secret comes from its variable or, Docker-secrets style,
from the file that ``<VARIABLE>_FILE`` names (one of the two, not both):

- ``MLFLOW_AUTH_DATABASE_URI`` (required): the SQLAlchemy URI of the users and permissions
  database. It must outlive the container, or every user but the admin is lost on a restart.
- ``MLFLOW_AUTH_ADMIN_PASSWORD``: the admin's password, required until the admin user exists
  (MLflow creates it on the first start; it ignores the variable after that).
- ``MLFLOW_FLASK_SERVER_SECRET_KEY`` (MLflow refuses to start without it): signs the sign-up
  page's CSRF tokens; the same for every worker.
- ``MLFLOW_AUTH_ADMIN_USERNAME`` (default ``admin``).
- ``MLFLOW_AUTH_DEFAULT_PERMISSION`` (default ``READ``): what a signed-in user may do on an
  experiment or model nobody granted them anything on.
- ``MLFLOW_AUTH_CACHE_TTL_SECONDS`` (default ``0``, off): how long each server worker trusts a
  user and password it has checked. Basic auth sends the password with every request, and each
  check is a scrypt hash of about 80 ms of CPU; a pipeline run makes hundreds of requests. A
  password changed or a user deleted through the API is forgotten at once by the worker that
  handled it, and by the other workers within this many seconds.

Only the standard library: it runs in the server image before MLflow does.
"""

from __future__ import annotations

import configparser
import io
import os
import sys
import tempfile
from pathlib import Path

SECRETS = (
    "MLFLOW_AUTH_DATABASE_URI",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
)
# The auth app's other settings, read from the environment into the ini.
SETTINGS = ("MLFLOW_AUTH_DEFAULT_PERMISSION", "MLFLOW_AUTH_CACHE_TTL_SECONDS")
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")


class Refused(Exception):
    pass


def resolve(name: str, env: dict[str, str]) -> str | None:
    """``name``'s value from the variable or from the file ``name_FILE`` names."""
    value, path = env.get(name), env.get(f"{name}_FILE")
    if value and path:
        raise Refused(f"both {name} and {name}_FILE are set; set one")
    if path:
        try:
            # Secret files usually end in a newline that is not part of the secret.
            return Path(path).read_text().rstrip("\r\n")
        except OSError as error:
            raise Refused(f"{name}_FILE: cannot read {path}: {error.strerror}") from None
    return value or None


def auth_config(env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The ini text, and the environment the server should run with."""
    resolved = {name: resolve(name, env) for name in SECRETS}
    if not resolved["MLFLOW_AUTH_DATABASE_URI"]:
        raise Refused(
            "set MLFLOW_AUTH_DATABASE_URI (or MLFLOW_AUTH_DATABASE_URI_FILE): the database that "
            "keeps the users and their permissions"
        )
    permission = env.get("MLFLOW_AUTH_DEFAULT_PERMISSION") or "READ"
    if permission not in PERMISSIONS:
        raise Refused(
            f"MLFLOW_AUTH_DEFAULT_PERMISSION={permission!r}: use one of {', '.join(PERMISSIONS)}"
        )
    cache_ttl = env.get("MLFLOW_AUTH_CACHE_TTL_SECONDS") or "0"
    if not (cache_ttl.isascii() and cache_ttl.isdigit()):
        raise Refused(
            f"MLFLOW_AUTH_CACHE_TTL_SECONDS={cache_ttl!r}: use a whole number of seconds, 0 for off"
        )
    # MLflow reads the file with ConfigParser's interpolation, which takes % as its own.
    config = configparser.RawConfigParser()
    config["mlflow"] = {
        "default_permission": permission,
        "database_uri": resolved["MLFLOW_AUTH_DATABASE_URI"].replace("%", "%%"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "auth_cache_ttl_seconds": str(int(cache_ttl)),
    }
    text = io.StringIO()
    config.write(text)
    written = {*SECRETS, *(f"{name}_FILE" for name in SECRETS), *SETTINGS}
    server_env = {k: v for k, v in env.items() if k not in written}
    # MLflow reads these three from the environment itself, ahead of the file. An empty one is
    # left out: MLflow would take it as set, and say nothing clearer than when it is missing.
    server_env["MLFLOW_AUTH_ADMIN_USERNAME"] = resolved["MLFLOW_AUTH_ADMIN_USERNAME"] or "admin"
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        if resolved[name]:
            server_env[name] = resolved[name]
    return text.getvalue(), server_env


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: mlflow_auth_entrypoint.py COMMAND [ARGS...]")
    try:
        text, env = auth_config(dict(os.environ))
    except Refused as error:
        sys.exit(f"mlflow-auth-entrypoint: {error}")
    folder = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))  # mode 0700
    path = folder / "basic_auth.ini"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as ini:
        ini.write(text)
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(path)
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
    main(sys.argv[1:])
