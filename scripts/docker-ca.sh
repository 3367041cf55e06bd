#!/usr/bin/env bash
# Copies the host's extra CA certificates (TLS-intercepting proxies) into docker/ca-certificates/,
# the optional extra-CA input every project Dockerfile trusts. Set CATSDOGS_EXTRA_CA_DIR to use
# another folder of *.crt files; nothing to copy is fine.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
src="${CATSDOGS_EXTRA_CA_DIR:-/usr/local/share/ca-certificates}"
dest="$ROOT/docker/ca-certificates"
shopt -s nullglob
certs=("$src"/*.crt)
for cert in "${certs[@]}"; do cp -f "$cert" "$dest/"; done
echo "docker-ca: ${#certs[@]} extra CA certificate(s) from $src" >&2
