#!/usr/bin/env bash
# Installs the Debian packages a command needs, when missing, before any long work starts:
#   scripts/ensure-system-deps.sh demo    `make demo`: python3.11-venv (the venv), curl (service
#                                         health waits), haproxy (the local rollout's switch)
#   scripts/ensure-system-deps.sh test    `make test`: the demo's, plus chromium (web page),
#                                         promtool, Alertmanager and Pushgateway (monitoring tests)
# As root (or with sudo) it installs them; otherwise it names every missing one with the command
# to install it and exits 1, in the first seconds.
set -euo pipefail
profile="${1:-test}"
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
python3.11 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3.11-venv)
have curl || need+=(curl)
have haproxy || need+=(haproxy)                 # the local rollout switches traffic with it
if [ "$profile" = test ]; then
  have chromium || need+=(chromium)
  have promtool || need+=(prometheus)           # promtool: alert rule tests
  have prometheus-alertmanager || need+=(prometheus-alertmanager)
  have prometheus-pushgateway || need+=(prometheus-pushgateway)
elif [ "$profile" != demo ]; then
  echo "usage: $0 demo|test" >&2; exit 2
fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"
  else
    echo "missing Debian packages for 'make $profile': ${need[*]}" >&2
    echo "install them first:  sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
    exit 1
  fi
fi
echo "installing Debian packages for 'make $profile': ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
