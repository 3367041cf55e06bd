#!/usr/bin/env bash
# Base images for the project's Dockerfiles and for compose's Postgres, Prometheus, Redis,
# Alertmanager, Pushgateway and the HAProxy proxy.
# Uses the official images (python:3.11-slim, postgres:16, prom/prometheus, redis,
# prom/alertmanager, prom/pushgateway) when present or pullable; otherwise (no Docker Hub) builds
# stand-ins from Debian packages on a debootstrap root file system. The proxy is built here either
# way (Debian's haproxy with socat, on debian:bookworm-slim or the debootstrap root). Prints KEY=VALUE lines for compose/.env on stdout; logs go to stderr.
#   CATSDOGS_BASE=auto|official|local   (default auto)
#   CATSDOGS_BASE_REBUILD=1              rebuild the local stand-ins even when they exist
#   scripts/docker-base-images.sh debian only the bare Debian root file system (the fresh-machine
#                                        check's starting point): prints DEBIAN_IMAGE=...
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
MODE="${CATSDOGS_BASE:-auto}"
export DOCKER_BUILDKIT=0
log() { echo "docker-base-images: $*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }
pullable() { have "$1" || timeout 120 docker pull -q "$1" >/dev/null 2>&1; }

OFFICIAL_PYTHON=python:3.11-slim
OFFICIAL_POSTGRES=postgres:16
OFFICIAL_PROMETHEUS=prom/prometheus:v2.55.1
OFFICIAL_REDIS=redis:7.2
OFFICIAL_ALERTMANAGER=prom/alertmanager:v0.27.0
OFFICIAL_PUSHGATEWAY=prom/pushgateway:v1.9.0
OFFICIAL_DEBIAN=debian:bookworm-slim
LOCAL_DEBIAN=catsdogs-base/debian:bookworm
LOCAL_PYTHON=catsdogs-base/python:3.11
LOCAL_POSTGRES=catsdogs-base/postgres:15
LOCAL_PROMETHEUS=catsdogs-base/prometheus:2
LOCAL_REDIS=catsdogs-base/redis:7
LOCAL_ALERTMANAGER=catsdogs-base/alertmanager:0
LOCAL_PUSHGATEWAY=catsdogs-base/pushgateway:1
PROXY=catsdogs-base/haproxy:2.6

ONLY="${1:-all}"
if [ "$ONLY" != debian ] && { [ "$MODE" = official ] || { [ "$MODE" = auto ] && pullable "$OFFICIAL_PYTHON" \
     && pullable "$OFFICIAL_POSTGRES" && pullable "$OFFICIAL_PROMETHEUS" \
     && pullable "$OFFICIAL_REDIS" && pullable "$OFFICIAL_ALERTMANAGER" \
     && pullable "$OFFICIAL_PUSHGATEWAY" && pullable "$OFFICIAL_DEBIAN"; }; }; then
  log "using the official base images"
  echo "BASE_IMAGE=$OFFICIAL_PYTHON"
  echo "POSTGRES_IMAGE=$OFFICIAL_POSTGRES"
  echo "PROMETHEUS_IMAGE=$OFFICIAL_PROMETHEUS"
  echo "REDIS_IMAGE=$OFFICIAL_REDIS"
  echo "ALERTMANAGER_IMAGE=$OFFICIAL_ALERTMANAGER"
  echo "PUSHGATEWAY_IMAGE=$OFFICIAL_PUSHGATEWAY"
  if [ "${CATSDOGS_BASE_REBUILD:-0}" = 1 ] || ! have "$PROXY"; then
    mkdir -p build
    docker build --network host --build-arg "DEBIAN_IMAGE=$OFFICIAL_DEBIAN" \
      -f docker/base/haproxy.Dockerfile -t "$PROXY" . >build/docker-build-base-haproxy.log 2>&1 \
      || { log "$PROXY FAILED:"; tail -30 build/docker-build-base-haproxy.log >&2; exit 1; }
  fi
  echo "PROXY_IMAGE=$PROXY"
  exit 0
fi

log "building local base images from Debian packages (no Docker Hub)"
bash "$ROOT/scripts/docker-ca.sh"
rebuild="${CATSDOGS_BASE_REBUILD:-0}"
if [ "$rebuild" = 1 ] || ! have "$LOCAL_DEBIAN"; then
  command -v debootstrap >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  rootfs="$(mktemp -d /tmp/catsdogs-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap bookworm (minbase) into $rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - "$LOCAL_DEBIAN" >/dev/null
  rm -rf "$rootfs"
fi
if [ "$ONLY" = debian ]; then echo "DEBIAN_IMAGE=$LOCAL_DEBIAN"; exit 0; fi
build() {  # image dockerfile; in the background, its log in build/
  if [ "$rebuild" = 1 ] || ! have "$1"; then
    log "building $1"
    local name; name="$(basename "$2" .Dockerfile)"
    ( docker build --network host --build-arg "DEBIAN_IMAGE=$LOCAL_DEBIAN" \
        -f "$2" -t "$1" . >"build/docker-build-base-$name.log" 2>&1 \
      || { log "$1 FAILED:"; tail -30 "build/docker-build-base-$name.log" >&2; exit 1; } ) &
    pids+=($!)
  fi
}
mkdir -p build
pids=()
build "$LOCAL_PYTHON" docker/base/python.Dockerfile
build "$LOCAL_POSTGRES" docker/base/postgres.Dockerfile
build "$LOCAL_PROMETHEUS" docker/base/prometheus.Dockerfile
build "$LOCAL_REDIS" docker/base/redis.Dockerfile
build "$LOCAL_ALERTMANAGER" docker/base/alertmanager.Dockerfile
build "$LOCAL_PUSHGATEWAY" docker/base/pushgateway.Dockerfile
build "$PROXY" docker/base/haproxy.Dockerfile
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || exit 1
echo "BASE_IMAGE=$LOCAL_PYTHON"
echo "POSTGRES_IMAGE=$LOCAL_POSTGRES"
echo "PROMETHEUS_IMAGE=$LOCAL_PROMETHEUS"
echo "REDIS_IMAGE=$LOCAL_REDIS"
echo "ALERTMANAGER_IMAGE=$LOCAL_ALERTMANAGER"
echo "PUSHGATEWAY_IMAGE=$LOCAL_PUSHGATEWAY"
echo "PROXY_IMAGE=$PROXY"
