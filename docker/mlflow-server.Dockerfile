# The tracking server for docker/compose.yaml: MLflow with the PostgreSQL driver, as non-root.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
FROM ${BASE_IMAGE}

# The same versions as requirements/lock.txt and requirements/test.txt.
RUN python -m pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.13 \
    && useradd --create-home --uid 10001 mlflow \
    && mkdir /mlartifacts && chown mlflow /mlartifacts

# The name resolves: useradd above made it, with the fixed uid 10001 (tests/test_compose.py
# checks for this line).
# hadolint ignore=DL3066
USER mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
