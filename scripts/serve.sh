#!/usr/bin/env bash
# Serve the champion: import models:/CatsDogsCNN@champion (MLFLOW_TRACKING_URI from the
# environment; unset = the embedded store in the data dir) into the Bento model store, start
# `bentoml serve` in the background on ${BENTO_PORT:-3000}, wait for /readyz, print the URL.
#   scripts/serve.sh          (re)start;   scripts/serve.sh stop    stop it
# Env: MODEL_URI (default models:/CatsDogsCNN@champion), BENTO_HOST (default 127.0.0.1),
#      BENTO_PORT, CATSDOGS_RUN_DIR (pid and log; default .demo), CATSDOGS_* (docs/serving.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUN_DIR=${CATSDOGS_RUN_DIR:-.demo}
PORT=${BENTO_PORT:-3000}
HOST=${BENTO_HOST:-127.0.0.1}
PID_FILE=$RUN_DIR/bento.pid
LOG_FILE=$RUN_DIR/bento.log
mkdir -p "$RUN_DIR"

stop() {
  if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    pid=$(cat "$PID_FILE")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    echo "stopped the Bento server (pid $pid)"
  fi
  rm -f "$PID_FILE"
}

if [ "${1:-start}" = "stop" ]; then stop; exit 0; fi

"$BIN/python" -m bentoservice.import_model --model-uri "${MODEL_URI:-models:/CatsDogsCNN@champion}"
stop
setsid "$BIN/bentoml" serve bentoservice.service:CatsDogs --host "$HOST" --port "$PORT" \
  >"$LOG_FILE" 2>&1 < /dev/null &
echo $! > "$PID_FILE"
for _ in $(seq 240); do
  if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then
    echo "catsdogs is serving the champion at http://$HOST:$PORT/ (API docs: /docs; log: $LOG_FILE)"
    exit 0
  fi
  if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    echo "the Bento server exited; last lines of $LOG_FILE:" >&2; tail -30 "$LOG_FILE" >&2; exit 1
  fi
  sleep 0.5
done
echo "the Bento server did not become ready in 120 s; see $LOG_FILE" >&2
exit 1
