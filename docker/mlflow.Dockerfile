# syntax=docker/dockerfile:1
# MLflow tracking server with the PostgreSQL driver (no torch). Build context: docker/.
# The MLflow version must equal the pin in pyproject.toml (tests/test_docker.py checks this).
FROM python:3.12-slim

ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}"

RUN groupadd --gid 1000 mlflow \
    && useradd --create-home --uid 1000 --gid 1000 --shell /bin/sh mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts
USER 1000:1000
WORKDIR /home/mlflow
VOLUME ["/mlartifacts"]
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
