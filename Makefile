# catsdogs: `make demo` runs the pipeline end to end then serves the champion; `make test` runs
# every test. Both create (or reuse) the virtual environment in .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv system-deps tools test lint demo bench clean up down logs

help:
	@echo "make demo    pipeline end to end (Airflow + MLflow), then serve the champion"
	@echo "make test    create/reuse .venv and run the whole test suite"
	@echo "make lint    ruff"
	@echo "make bench   benchmarks (real photos in ../shared)"

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v '^WARNING: Location' || true
	$(BIN)/python -c "import torch, torchvision, airflow, mlflow, bentoml, great_expectations, catsdogs"
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests drive for real (headless chromium for the web page test).
system-deps:
	bash scripts/ensure-system-deps.sh

# Offline tools kept in .tools/ (never committed): helm.
tools: venv
	bash scripts/fetch-tools.sh

lint: venv
	$(BIN)/ruff check .

test: venv system-deps tools
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv
	bash scripts/demo.sh

bench: venv
	$(BIN)/python benchmarks/transform_speed.py
	$(BIN)/python benchmarks/train_quality.py
	$(BIN)/python benchmarks/serve_load.py

clean:
	rm -rf data .demo test-artifacts .pytest_cache
