#!/usr/bin/env bash
# Serve the champion locally: `catsdogs deploy` with the local target (catsdogs.deployment):
# models:/CatsDogsCNN@champion imported into the Bento model store, `bentoml serve` started on an
# idle slot port, /readyz awaited, a local HAProxy on ${BENTO_PORT:-3000} switched to it, the old
# slot drained and stopped, then the post-deploy check (labelled test pictures through HAProxy).
# When the champion already serves, nothing is restarted.
#   scripts/serve.sh          deploy (or leave as is);   scripts/serve.sh stop    stop HAProxy and the slots
# Env: MLFLOW_TRACKING_URI (unset = the embedded store in the data dir), CATSDOGS_DATA_DIR,
#      BENTO_HOST (127.0.0.1), BENTO_PORT (3000), CATSDOGS_BENTO_SLOT_PORTS (3010,3011),
#      CATSDOGS_SERVE_DIR (state and logs; default <data dir>/serving), CATSDOGS_* (docs/serving.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export PYTHONPATH="$PWD/include:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-start}" = "stop" ]; then
  exec "$BIN/python" -m catsdogs.deployment.targets.local stop
fi
export CATSDOGS_DEPLOY_TARGET=local
exec "$BIN/python" -m catsdogs.cli deploy
