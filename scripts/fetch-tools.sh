#!/usr/bin/env bash
# Fetches offline tools into .tools/ (git-ignored). Filled by the Helm work.
set -euo pipefail
mkdir -p .tools
