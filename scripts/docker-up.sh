#!/usr/bin/env bash
# `make up`: start the platform with docker compose (engine checked, images built when missing).
# Settings come from .env (see .env.example; its missing secrets are generated first); build/images.env (written by docker-images.sh)
# supplies the base/project image names, .env wins over it. Detects the Docker socket's group
# and, with CATSDOGS_GPU=auto (default), turns GPUs on when the engine has the NVIDIA runtime.
# The Bento service starts too once its image exists (scripts/docker-bento.sh builds it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
log() { echo "docker-up: $*" >&2; }
bash scripts/docker-engine.sh
# Compose has no default for any secret: the first run writes strong random ones into .env (600).
"${PYTHON:-python3}" -m demo.compose_env .env
set -a
# shellcheck disable=SC1091
[ -f build/images.env ] && . build/images.env
# shellcheck disable=SC1091
[ -f .env ] && . .env
set +a
: "${CATSDOGS_WORKER_IMAGE:=catsdogs-worker:latest}"
if ! docker image inspect "${AIRFLOW_IMAGE:-catsdogs-airflow:latest}" "${MLFLOW_IMAGE:-catsdogs-mlflow:latest}" \
     "$CATSDOGS_WORKER_IMAGE" >/dev/null 2>&1; then
  log "project images missing: building them (scripts/docker-images.sh)"
  bash scripts/docker-images.sh >/dev/null
  set -a; . build/images.env; [ -f .env ] && . .env; set +a
fi
socket="${DOCKER_SOCKET:-/var/run/docker.sock}"
export DOCKER_GID="${DOCKER_GID:-$(stat -c %g "$socket")}"
if [ "${CATSDOGS_GPU:-auto}" = auto ]; then
  if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then CATSDOGS_GPU=true; else CATSDOGS_GPU=false; fi
fi
export CATSDOGS_GPU
log "GPUs for train/promote: $CATSDOGS_GPU; the Bento service is rolled out by the DAG's deploy task"
docker compose up -d --wait "$@"
log "Airflow http://localhost:${AIRFLOW_PORT:-8080}  MLflow http://localhost:${MLFLOW_PORT:-5000}  Prometheus http://localhost:${PROMETHEUS_PORT:-9090}  Grafana http://localhost:${GRAFANA_PORT:-3001}"
