#!/usr/bin/env bash
# The champion's Bento image: import models:/CatsDogsCNN@champion from the MLflow server into the
# Bento model store, `bentoml build` the service, `bentoml containerize` it as IMAGE
# (default $BENTO_IMAGE or catsdogs-service:latest): one self-contained image to push elsewhere.
# Compose and Kubernetes do NOT need it: the training DAG's deploy task builds each version's
# image as one model layer on the service runtime image (catsdogs.deployment.images,
# docs/rollout.md), far cheaper than this full build.
#   MLFLOW_TRACKING_URI   the MLflow server (default http://localhost:${MLFLOW_PORT:-5000})
#   BENTOML_HOME          the Bento store (default build/bentoml)
# Needs the project's venv (make venv) for bentoml and the service code.
#   BENTO_BASE_IMAGE      the bento's base image (default: BASE_IMAGE from build/images.env,
#                         i.e. the local stand-in where Docker Hub is unreachable)
#   CATSDOGS_CALIBRATION_IMAGES  photos the import measures the serving variants on (default: the importer's)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
log() { echo "docker-bento: $*" >&2; }
set -a
# shellcheck disable=SC1091
[ -f build/images.env ] && . build/images.env
# shellcheck disable=SC1091
[ -f .env ] && . .env
set +a
IMAGE="${1:-${BENTO_IMAGE:-catsdogs-service:latest}}"
BIN="$ROOT/.venv/bin"
[ -x "$BIN/bentoml" ] || { log "no .venv/bin/bentoml: run make venv first"; exit 2; }
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://localhost:${MLFLOW_PORT:-5000}}"
export BENTOML_HOME="${BENTOML_HOME:-$ROOT/build/bentoml}"
export DOCKER_BUILDKIT=0

log "importing ${CATSDOGS_MODEL_URI:-models:/CatsDogsCNN@champion} from $MLFLOW_TRACKING_URI"
import_args=()
[ -z "${CATSDOGS_MODEL_URI:-}" ] || import_args+=(--model-uri "$CATSDOGS_MODEL_URI")
[ -z "${CATSDOGS_CALIBRATION_IMAGES:-}" ] || import_args+=(--calibration-images "$CATSDOGS_CALIBRATION_IMAGES")
"$BIN/python" -m bentoservice.import_model "${import_args[@]}" >&2

# The bento's base image: BENTO_BASE_IMAGE, else make images' BASE_IMAGE, else python:3.11-slim,
# with the extra CA certificates trusted (pip, uv, requests) and, when build/wheelhouse can be
# filled, torch found there (UV_FIND_LINKS, served on 127.0.0.1, build run with --network host).
bash scripts/docker-ca.sh
# shellcheck source=scripts/docker-lib.sh
. scripts/docker-lib.sh
start_wheelhouse "$ROOT" "$(sed -n 's/^torch==//p' requirements.txt)" \
  "$(sed -n 's/^torchvision==//p' requirements.txt)"
base_src="${BENTO_BASE_IMAGE:-${BASE_IMAGE:-python:3.11-slim}}"
bento_base="catsdogs-bento-base:latest"
log "base image $bento_base on $base_src"
mkdir -p build
docker build -q --network host -t "$bento_base" -f - . >/dev/null <<DOCKERFILE
FROM $base_src
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt UV_NATIVE_TLS=1
${WHEELHOUSE_URL:+ENV UV_FIND_LINKS=$WHEELHOUSE_URL PIP_FIND_LINKS=$WHEELHOUSE_URL}
DOCKERFILE
log "bentoml build (bentoservice/package.py)"
tag="$("$BIN/python" -m bentoservice.package --base-image "$bento_base" --out-dir build/bento | tail -1)"
log "built bento $tag"
start=$SECONDS
log "bentoml containerize $tag -> $IMAGE"
"$BIN/bentoml" containerize "$tag" --image-tag "$IMAGE" --opt network=host >&2
log "$IMAGE built in $((SECONDS - start)) s, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')"

