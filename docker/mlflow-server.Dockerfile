# The tracking server for docker/compose.yaml: MLflow with the PostgreSQL driver and its basic-auth
# app, as non-root. The build context is this folder (compose.yaml says so).
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE}

# The same versions as requirements/lock.txt and requirements/test.txt. Flask-WTF and WTForms are
# what mlflow[auth] adds: the basic-auth app does not start without them.
RUN python -m pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.13 \
        Flask-WTF==1.3.0 WTForms==3.3.2 \
    && useradd --create-home --uid 10001 mlflow \
    && mkdir /mlartifacts && chown mlflow /mlartifacts

# Writes the auth app's settings from the environment (or *_FILE secrets) at start; root owns it.
COPY mlflow_auth_entrypoint.py /usr/local/bin/mlflow-auth-entrypoint

# The name resolves: useradd above made it, with the fixed uid 10001 (tests/test_compose.py
# checks for this line).
# hadolint ignore=DL3066
USER mlflow
EXPOSE 5000
ENTRYPOINT ["python", "/usr/local/bin/mlflow-auth-entrypoint"]
CMD ["mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", "5000"]
