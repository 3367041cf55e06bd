# catsdogs: `make demo` runs the pipeline end to end then serves the champion; `make test` runs
# every test. Both create (or reuse) the virtual environment in .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv system-deps tools test lint demo demo-stop bench clean up down logs images

help:
	@echo "make demo    pipeline end to end (Airflow + MLflow), then serve the champion"
	@echo "make test    create/reuse .venv and run the whole test suite"
	@echo "make lint    ruff"
	@echo "make bench   benchmarks (real photos in ../shared)"
	@echo "make images build the Docker images (docker compose platform, docs/compose.md)"
	@echo "make up     start the platform in docker compose; make down / make logs"

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(BIN)/pip install -q --disable-pip-version-check -r requirements.txt 2>&1 \
	  | { grep -v '^WARNING: Location' || true; }
	set -o pipefail; $(BIN)/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 \
	  | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -c "import torch, torchvision, airflow, mlflow, bentoml, great_expectations, catsdogs" >/dev/null 2>&1 \
	|| { echo "the venv is incomplete: rm -rf $(VENV) and run make again"; exit 1; }
	touch $(STAMP)

venv: $(STAMP)

# Debian packages, checked (installed as root) in the first seconds, before the venv's minutes:
# the tests drive chromium, promtool, haproxy... for real; the demo needs haproxy, curl, python3.11-venv.
system-deps:
	bash scripts/ensure-system-deps.sh test

# Offline tools kept in .tools/ (never committed): helm.
tools: venv
	$(BIN)/python scripts/fetch_tools.py

lint: venv
	$(BIN)/ruff check .

# Two pytest-xdist workers (TEST_WORKERS=0: one process); each test file is one unit of work,
# the Docker tests one unit handed out first (tests/conftest.py).
TEST_WORKERS ?= 2
test: system-deps venv tools
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

demo:
	bash scripts/ensure-system-deps.sh demo
	$(MAKE) --no-print-directory venv
	bash scripts/demo.sh

# Stop what `make demo` left running (MLflow, the Airflow services, the Bento service).
# Airflow first (no task starts a slot after), then HAProxy and every slot recorded or recognised.
demo-stop:
	bash scripts/airflow-services.sh stop
	CATSDOGS_DATA_DIR="$${DEMO_DIR:-$(CURDIR)/.demo}/data" bash scripts/serve.sh stop

bench: venv
	$(BIN)/python benchmarks/transform_speed.py
	$(BIN)/python benchmarks/data_growth.py
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/serve_load.py
	$(BIN)/python benchmarks/decode_cost.py
	$(BIN)/python benchmarks/batch_scoring.py

clean:
	rm -rf data .demo test-artifacts .pytest_cache

# The platform in docker compose (docs/compose.md): images, start (waits for health), stop, logs.
images:
	bash scripts/docker-images.sh

up:
	bash scripts/docker-up.sh

down:
	docker compose --profile serving --profile logs down

logs:
	docker compose --profile serving logs -f --tail=100

# Serving (docs/serving.md): import the registry's champion into the Bento model store, package a
# bento (BENTO_BASE_IMAGE=... picks the image's base), serve it in the background on BENTO_PORT.
.PHONY: bento-import bento-build serve
bento-import: venv
	$(BIN)/python -m bentoservice.import_model $(if $(MODEL_URI),--model-uri $(MODEL_URI))

bento-build: bento-import
	$(BIN)/python -m bentoservice.package --base-image "$(BENTO_BASE_IMAGE)" --out-dir .demo/bento

serve: venv
	bash scripts/serve.sh
