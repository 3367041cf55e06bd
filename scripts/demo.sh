#!/usr/bin/env bash
# `make demo`: the whole pipeline through real services on this host (no Docker):
#   1. an MLflow server (SQLite) and Airflow 3 (local mode, embedded SQLite): scripts/airflow-services.sh
#   2. `python -m demo.steps run`: data (Kaggle when credentials exist, else a
#      generated stand-in set, said loudly; DEMO_SOURCE=dir:PATH|archive:PATH|kaggle:OWNER/DATASET
#      picks one), then the catsdogs_training DAG triggered through the REST API v2 and followed
#   3. the champion served: the run's deploy task already rolled it out behind a local HAProxy
#      (two `bentoml serve` slots; scripts/serve.sh leaves it as is), then the summary
# The services keep running for you to explore; `make demo-stop` stops them.
#
# Knobs: DEMO_EPOCHS (1), DEMO_IMAGE_SIZE (128), DEMO_ARCH (mobilenet_v2), DEMO_BATCH_SIZE (32),
#        DEMO_SYNTHETIC_PER_CLASS (300), AIRFLOW_PORT (8080), MLFLOW_PORT (5000), BENTO_PORT (3000).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_DIR="${DEMO_DIR:-$ROOT/.demo}"
BIN="${VENV_BIN:-$ROOT/.venv/bin}"
PY="$BIN/python"
export DEMO_DIR VENV_BIN="$BIN"

say() { printf '\033[1;36m[demo]\033[0m %s\n' "$*"; }

# --- 1. services ---------------------------------------------------------------------------------
bash "$ROOT/scripts/airflow-services.sh" start
# shellcheck disable=SC1091
. "$DEMO_DIR/env.sh"

# --- 2. the data, then the run through the REST API (demo/steps.py) ------------------------------
# (the tooling in demo/ is not part of the installed package: found through PYTHONPATH)
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m demo.steps run --demo-dir "$DEMO_DIR"

# --- 3. serve the champion, then say where everything is ----------------------------------------
say "serving the champion (scripts/serve.sh: the deploy task's rollout, or nothing to do)"
MLFLOW_TRACKING_URI="$MLFLOW_TRACKING_URI" bash "$ROOT/scripts/serve.sh"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m demo.steps summary --demo-dir "$DEMO_DIR"
