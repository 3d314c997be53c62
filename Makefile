# Quick start on a fresh machine: `make demo`, then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: venv bootstrap images up down status demo test unit integration lint bench clean

$(STAMP): pyproject.toml requirements.lock
	@echo "==> Creating the project environment in $(VENV) (torch is large: a few minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install python3-venv (apt-get install python3-venv)"; exit 1; }
	@$(BIN)/python -m pip install $(PIP_QUIET) -c requirements.lock -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import sandbox, torch, azureml.core" || { echo "error: the environment is incomplete; see the pip output above"; exit 1; }
	@touch $@

venv: $(STAMP)

bootstrap: $(STAMP)
	$(BIN)/aml-sandbox bootstrap

images: bootstrap
	$(BIN)/aml-sandbox images build

up: $(STAMP)
	$(BIN)/aml-sandbox up

down: $(STAMP)
	$(BIN)/aml-sandbox down

status: $(STAMP)
	$(BIN)/aml-sandbox status

# The whole tutorial, locally: stack up, data, upload, submit, the driver log followed, metrics.
# DEMO_IMAGES=5000 make demo uses a smaller data set (default: the full 50,000 images).
demo: $(STAMP)
	$(BIN)/python control/demo.py $(if $(DEMO_IMAGES),--images $(DEMO_IMAGES))

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: images
	$(BIN)/pytest tests/integration

# Unit and integration tests against real Docker and real Azurite (installed and started if needed).
test: images lint
	$(BIN)/pytest

# Regenerates the measured part of docs/benchmarks.md (about half an hour; BENCH_ARGS=--quick for less).
bench: $(STAMP)
	$(BIN)/aml-sandbox up
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
