#!/usr/bin/env bash
# The demo's services on this host, no Docker: an MLflow server (SQLite backend) and Airflow 3
# (api-server, scheduler, dag-processor, triggerer; embedded SQLite, LocalExecutor, local mode:
# each stage runs as a Bash task with this venv's `catsdogs`).
#
#   scripts/airflow-services.sh start    start (or restart) them, wait until healthy
#   scripts/airflow-services.sh stop     stop them (SIGTERM to each process group, then SIGKILL)
#   scripts/airflow-services.sh status   which are running
#
# Everything lives under .demo/ (DEMO_DIR): pid files in pids/, logs in logs/, the Airflow home,
# the MLflow store and the data dir. Ports: AIRFLOW_PORT (8080), MLFLOW_PORT (5000); DEMO_HOST
# (127.0.0.1) is the address they listen on.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_DIR="${DEMO_DIR:-$ROOT/.demo}"
BIN="${VENV_BIN:-$ROOT/.venv/bin}"
HOST="${DEMO_HOST:-127.0.0.1}"
AIRFLOW_PORT="${AIRFLOW_PORT:-8080}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
PIDS="$DEMO_DIR/pids"
LOGS="$DEMO_DIR/logs"
SERVICES=(mlflow api-server scheduler dag-processor triggerer)

say() { printf '\033[1m[services]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[services] error:\033[0m %s\n' "$*" >&2; exit 1; }

running() {  # NAME -> 0 when its process group is alive
  local pidfile="$PIDS/$1.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

stop_one() {
  local name="$1" pidfile="$PIDS/$1.pid" pid
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    say "stopped $name (process group $pid)"
  fi
  rm -f "$pidfile"
}

start_one() {  # NAME ARGV... : own process group (setsid), pid file, log file
  local name="$1"; shift
  setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! >"$PIDS/$name.pid"
}

wait_http() {  # URL NAME TIMEOUT_S
  local url="$1" name="$2" timeout="$3" waited=0
  until curl -fs -o /dev/null --max-time 3 "$url"; do
    running "$name" || die "$name exited while starting; last lines of $LOGS/$name.log:
$(tail -n 30 "$LOGS/$name.log" 2>/dev/null)"
    (( waited >= timeout )) && die "$name not answering at $url after ${timeout}s (see $LOGS/$name.log)"
    sleep 1; waited=$((waited + 1))
  done
}

port_free() {
  ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

write_env() {
  # The environment every Airflow process (and the demo) shares, from the Python module that the
  # tests' services use too (demo/local_airflow.py: tooling, not in the installed package);
  # secrets are generated once into the Airflow home (mode 0600).
  mkdir -p "$DEMO_DIR/data" "$DEMO_DIR/mlflow" "$PIDS" "$LOGS"
  # env.sh holds the JWT and API secrets: readable by this user only.
  (umask 077; rm -f "$DEMO_DIR/env.sh"
   PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$BIN/python" -m demo.local_airflow env \
     --home "$DEMO_DIR/airflow" \
     --data-dir "$DEMO_DIR/data" --mlflow-uri "http://$HOST:$MLFLOW_PORT" --host "$HOST" \
     --port "$AIRFLOW_PORT" --venv-bin "$BIN" >"$DEMO_DIR/env.sh")
  # shellcheck disable=SC1091
  . "$DEMO_DIR/env.sh"
}

start() {
  [[ -x "$BIN/airflow" && -x "$BIN/mlflow" ]] || die "no venv at $BIN: run 'make venv' first"
  stop
  write_env
  for port in "$MLFLOW_PORT" "$AIRFLOW_PORT"; do
    port_free "$port" || die "port $port on $HOST is taken; free it or set MLFLOW_PORT / AIRFLOW_PORT"
  done
  say "MLflow server on $MLFLOW_TRACKING_URI (SQLite: $DEMO_DIR/mlflow/mlflow.db)"
  start_one mlflow env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$BIN/mlflow" server \
    --backend-store-uri "sqlite:///$DEMO_DIR/mlflow/mlflow.db" \
    --artifacts-destination "$DEMO_DIR/mlflow/artifacts" \
    --host "$HOST" --port "$MLFLOW_PORT" --workers 1
  say "Airflow metadata database (SQLite: $AIRFLOW_HOME/airflow.db)"
  "$BIN/airflow" db migrate >>"$LOGS/airflow-db-migrate.log" 2>&1 \
    || die "airflow db migrate failed (see $LOGS/airflow-db-migrate.log)"
  start_one api-server "$BIN/airflow" api-server --host "$HOST" --port "$AIRFLOW_PORT"
  for name in scheduler dag-processor triggerer; do start_one "$name" "$BIN/airflow" "$name"; done
  say "waiting for MLflow and the Airflow API server"
  wait_http "$MLFLOW_TRACKING_URI/health" mlflow 180
  wait_http "$AIRFLOW_URL/api/v2/monitor/health" api-server 180
  for name in scheduler dag-processor triggerer; do
    running "$name" || die "$name exited; last lines of $LOGS/$name.log:
$(tail -n 30 "$LOGS/$name.log")"
  done
  say "up: Airflow $AIRFLOW_URL, MLflow $MLFLOW_TRACKING_URI (logs in $LOGS)"
}

stop() {
  mkdir -p "$PIDS"
  for (( i=${#SERVICES[@]}-1; i>=0; i-- )); do stop_one "${SERVICES[i]}"; done
  # task processes run in sessions of their own: stop those left (the serving slots stay)
  if [[ -x "$BIN/python" ]]; then
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$BIN/python" -m demo.local_airflow sweep \
      --home "$DEMO_DIR/airflow"
  fi
}

status() {
  for name in "${SERVICES[@]}"; do
    if running "$name"; then echo "$name: running (pid $(cat "$PIDS/$name.pid"))"
    else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
