# `make run` and `make test` do all set-up on a fresh machine: a venv in .venv with the locked
# dependencies, then the pipeline or the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# DVC runs each stage's `lrsched ...` command through the shell: put the venv first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: run test check lint format bench image-test clean

run: $(VENV)/.runtime  ## run the whole pipeline on params.yaml
	dvc repro
	@echo
	@echo "Figures:   $(CURDIR)/figures/*.png"
	@echo "Metrics:   $(BIN)/dvc metrics show"
	@echo "MLflow UI: $(BIN)/lrsched ui   (then open http://127.0.0.1:5000)"

test: lint  ## lint, then the whole test suite (what CI runs)
	pytest

check: lint  ## the inner loop, under a minute: lint, then the fast tests (no pipeline runs)
	pytest -m "not slow"

lint: $(VENV)/.test  ## ruff check, ruff format --check, mypy (pipeline/, stages/), hadolint
	ruff check .
	ruff format --check .
	mypy
	hadolint docker/*Dockerfile

format: $(VENV)/.test
	ruff format .
	ruff check --fix .

bench: $(VENV)/.runtime  ## time the pipeline against the tutorial-style reference
	python scripts/benchmark.py

image-test: $(VENV)/.runtime  ## build the CPU image with podman, dvc repro in it, compare with the host (root)
	python scripts/image_test.py

$(VENV)/.runtime: requirements/lock.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements/test.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/test.txt
	touch $@

clean:  ## remove the venv and the outputs (the MLflow store mlflow.db is kept)
	rm -rf $(VENV) data outputs figures dvc_plots
