#!/usr/bin/env bash
# Builds the project's images (catsdogs-airflow, catsdogs-mlflow, catsdogs-worker, and on the worker
# catsdogs-service-runtime: the Bento service without a model, docker/service/Dockerfile) on their shared
# base catsdogs-python-base (docker/base/project.Dockerfile), itself on the base image chosen by
# docker-base-images.sh, and writes the choice to build/images.env for compose.
#   CATSDOGS_IMAGES="airflow mlflow worker service"  which images to build (default all four;
#       service needs the worker image, it is built after it)
#   CATSDOGS_TORCH_SOURCE=wheelhouse|index   wheelhouse (default): the host's pip fetches the torch
#       wheels once into build/wheelhouse (local disk or PyPI) and serves them to the build on
#       127.0.0.1, so rebuilds never download torch again; index: pip inside the build uses
#       the package index (TORCH_INDEX_URL, e.g. https://download.pytorch.org/whl/cpu).
#   CATSDOGS_IMAGE_TAG=latest
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export DOCKER_BUILDKIT=0
log() { echo "docker-images: $*" >&2; }
TAG="${CATSDOGS_IMAGE_TAG:-latest}"
IMAGES="${CATSDOGS_IMAGES:-airflow mlflow worker service}"
TORCH_VERSION="$(sed -n 's/^torch==//p' requirements.txt)"
TORCHVISION_VERSION="$(sed -n 's/^torchvision==//p' requirements.txt)"

set -a
# shellcheck disable=SC1091
[ -f .env ] && . .env
set +a
mkdir -p build
# shellcheck source=scripts/docker-lib.sh
. "$ROOT/scripts/docker-lib.sh"
if [[ " $IMAGES " == *" worker "* ]] && ! docker image inspect "catsdogs-worker:$TAG" >/dev/null 2>&1; then
  # torch with its CUDA libraries: the wheels, their unpacking in the build and the layer itself
  require_disk 20 "building catsdogs-worker:$TAG (torch with CUDA)"
fi

bash scripts/docker-ca.sh
bash scripts/docker-base-images.sh >build/images.env
# shellcheck disable=SC1091
. build/images.env
log "base image: $BASE_IMAGE"
# The block every project image shares (settings, extra CA certificates, uv), built once.
PROJECT_BASE="catsdogs-python-base:$TAG"
docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -f docker/base/project.Dockerfile \
  -t "$PROJECT_BASE" . >build/docker-build-python-base.log 2>&1 \
  || { log "$PROJECT_BASE FAILED:"; tail -30 build/docker-build-python-base.log >&2; exit 1; }

torch_args=(--build-arg "TORCH_VERSION=$TORCH_VERSION" --build-arg "TORCHVISION_VERSION=$TORCHVISION_VERSION"
            --build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-}" --build-arg "TORCH_FIND_LINKS=${TORCH_FIND_LINKS:-}")
if [ -z "${TORCH_FIND_LINKS:-}" ] && [[ " $IMAGES " == *" worker "* ]] && [ "${CATSDOGS_TORCH_SOURCE:-wheelhouse}" = wheelhouse ]; then
  start_wheelhouse "$ROOT" "$TORCH_VERSION" "$TORCHVISION_VERSION"
  [ -z "$WHEELHOUSE_URL" ] || torch_args+=(--build-arg "TORCH_FIND_LINKS=$WHEELHOUSE_URL")
fi

# The images are independent: build them side by side (pip downloads overlap with unpacking).
pids=()
for name in $IMAGES; do
  [ "$name" = service ] && continue   # on the worker image: after the others
  args=(--network host --build-arg "BASE_IMAGE=$PROJECT_BASE" -f "docker/$name/Dockerfile" -t "catsdogs-$name:$TAG")
  [ "$name" = worker ] && args+=("${torch_args[@]}")
  log "building catsdogs-$name:$TAG (log: build/docker-build-$name.log)"
  ( start=$SECONDS
    if docker build "${args[@]}" . >"build/docker-build-$name.log" 2>&1; then
      size="$(docker image inspect -f '{{.Size}}' "catsdogs-$name:$TAG" | awk '{printf "%.2f GB", $1/1e9}')"
      log "catsdogs-$name:$TAG built in $((SECONDS - start)) s, $size"
    else
      log "catsdogs-$name:$TAG FAILED after $((SECONDS - start)) s:"; tail -30 "build/docker-build-$name.log" >&2
      exit 1
    fi ) &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || exit 1
if [[ " $IMAGES " == *" service "* ]]; then
  log "building catsdogs-service-runtime:$TAG on catsdogs-worker:$TAG (log: build/docker-build-service.log)"
  start=$SECONDS
  docker build --network host --build-arg "WORKER_IMAGE=catsdogs-worker:$TAG" \
    -f docker/service/Dockerfile -t "catsdogs-service-runtime:$TAG" . >build/docker-build-service.log 2>&1 \
    || { log "catsdogs-service-runtime:$TAG FAILED:"; tail -30 build/docker-build-service.log >&2; exit 1; }
  log "catsdogs-service-runtime:$TAG built in $((SECONDS - start)) s"
  echo "CATSDOGS_SERVICE_RUNTIME_IMAGE=catsdogs-service-runtime:$TAG" >>build/images.env
fi
{
  echo "PROJECT_BASE_IMAGE=$PROJECT_BASE"
  echo "AIRFLOW_IMAGE=catsdogs-airflow:$TAG"
  echo "MLFLOW_IMAGE=catsdogs-mlflow:$TAG"
  echo "CATSDOGS_WORKER_IMAGE=catsdogs-worker:$TAG"
} >>build/images.env
cat build/images.env
