# `make run` and `make test` do all set-up on a fresh machine: a venv in .venv with the locked
# dependencies, then the pipeline or the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# make's own commands (dvc, pytest, ruff, mypy, hadolint, python) are the venv's.
export PATH := $(BIN):$(PATH)

# Every program the venv runs (.venv/bin/dvc, .venv/bin/lrsched, ...) puts the venv's bin first on
# PATH for the processes it starts, as activation does, so that DVC finds the stages' `lrsched`
# from a shell that was never activated: scripts/venv_path.py, run at every interpreter start
# from a .pth file in the venv. The stamp depends on it, so an existing venv gets the current one.

.PHONY: run test check lint format bench image-test test-times clean

# What it prints last runs as shown from the project root, in any shell (tests/test_newcomer.py).
run: $(VENV)/.path  ## run the whole pipeline on params.yaml
	dvc repro
	@echo
	@echo "Figures:   figures/*.png"
	@echo "Metrics:   $(VENV)/bin/dvc metrics show"
	@link=$$($(VENV)/bin/lrsched ui --print-link) && \
	echo "MLflow UI: $(VENV)/bin/lrsched ui   then open $$link"

test: lint  ## lint, then the whole test suite (what CI runs), its report in test-artifacts/
	pytest --junitxml=test-artifacts/suite.xml

check: lint  ## the inner loop: lint, then the fast tests (no pipeline, server, browser...)
	pytest -m "not slow"

lint: $(VENV)/.test $(VENV)/.path  ## ruff check, ruff format --check, mypy (pipeline/, stages/), hadolint, function length
	ruff check .
	ruff format --check .
	mypy
	hadolint docker/*Dockerfile
	python scripts/check_function_length.py

format: $(VENV)/.test $(VENV)/.path
	ruff format .
	ruff check --fix .

bench: $(VENV)/.path  ## time the pipeline against the tutorial-style reference
	python scripts/benchmark.py

test-times: test  ## the whole suite, timed into docs/testing.md's table
	python scripts/test_times.py test-artifacts/suite.xml

image-test: $(VENV)/.path  ## build the CPU image with podman, dvc repro in it, compare with the host (root)
	python scripts/image_test.py

$(VENV)/.runtime: requirements/lock.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.path: $(VENV)/.runtime scripts/venv_path.py Makefile
	site=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') && \
	cp scripts/venv_path.py "$$site/_lrsched_venv_path.py" && \
	echo "import _lrsched_venv_path" > "$$site/lrsched-venv-path.pth"
	touch $@

# The tests need the optional Ray engine too (requirements/ray.txt); `make run` does not.
$(VENV)/.test: $(VENV)/.runtime requirements/test.txt requirements/ray.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-r requirements/test.txt -r requirements/ray.txt
	touch $@

clean:  ## remove the venv and the outputs (the MLflow store mlflow.db is kept)
	rm -rf $(VENV) data outputs figures dvc_plots
