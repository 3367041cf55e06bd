#!/usr/bin/env bash
# `make demo`: the whole pipeline through real services on this host (no Docker):
#   1. an MLflow server (SQLite) and Airflow 3 (local mode, embedded SQLite): scripts/airflow-services.sh
#   2. data: Kaggle when credentials exist, else a generated stand-in set (said loudly);
#      DEMO_SOURCE=dir:PATH|archive:PATH|kaggle:OWNER/DATASET picks one explicitly
#   3. the catsdogs_training DAG unpaused and triggered through the REST API v2, watched to the end
#   4. the Airflow and MLflow URLs and the login, then the champion served (scripts/serve.sh)
# The services keep running for you to explore; `make demo-stop` stops them.
#
# Knobs: DEMO_EPOCHS (1), DEMO_IMAGE_SIZE (128), DEMO_ARCH (mobilenet_v2), DEMO_BATCH_SIZE (32),
#        DEMO_SYNTHETIC_PER_CLASS (60), AIRFLOW_PORT (8080), MLFLOW_PORT (5000), BENTO_PORT (3000).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO_DIR="${DEMO_DIR:-$ROOT/.demo}"
BIN="${VENV_BIN:-$ROOT/.venv/bin}"
PY="$BIN/python"
DAG_ID=catsdogs_training
export DEMO_DIR VENV_BIN="$BIN"

say() { printf '\033[1;36m[demo]\033[0m %s\n' "$*"; }
loud() { printf '\033[1;33m%s\033[0m\n' "$@"; }
die() { printf '\033[1;31m[demo] error:\033[0m %s\n' "$*" >&2; exit 1; }

# --- 1. the data source -------------------------------------------------------------------------
if [[ -n "${DEMO_SOURCE:-}" ]]; then
  SOURCE="$DEMO_SOURCE"
  say "data: $SOURCE (DEMO_SOURCE)"
elif "$PY" -c 'import sys; from catsdogs.data.kaggle import has_credentials; sys.exit(0 if has_credentials() else 1)'; then
  SOURCE="$("$PY" -c 'from catsdogs.config import load_params; print(load_params("'"$ROOT"'/params.yaml").data.source)')"
  say "data: Kaggle credentials found: downloading the real data set ($SOURCE)"
else
  SYNTH="$DEMO_DIR/synthetic"
  PER_CLASS="${DEMO_SYNTHETIC_PER_CLASS:-60}"
  if [[ ! -f "$SYNTH/.complete-$PER_CLASS" ]]; then
    rm -rf "$SYNTH"
    "$PY" -c "from pathlib import Path; from catsdogs.data.synthetic import generate_dataset; generate_dataset(Path('$SYNTH'), per_class=$PER_CLASS)"
    touch "$SYNTH/.complete-$PER_CLASS"
  fi
  SOURCE="dir:$SYNTH"
  loud "" \
    "################################################################################" \
    "##  NO KAGGLE CREDENTIALS: this demo uses a small GENERATED stand-in data set" \
    "##  ($PER_CLASS synthetic images per class in $SYNTH), NOT real photos." \
    "##  The model learns coloured shapes, not cats and dogs. For the real data set" \
    "##  export KAGGLE_USERNAME and KAGGLE_KEY (or save ~/.kaggle/kaggle.json), or" \
    "##  run with DEMO_SOURCE=dir:/path/to/photos (cat/ and dog/ sub-folders)." \
    "################################################################################" ""
fi

# --- 2. pretrained weights (offline-friendly), then the parameters of the run -------------------
ARCH="${DEMO_ARCH:-mobilenet_v2}"
WEIGHTS=none
mkdir -p "$DEMO_DIR/logs"
if [[ "$ARCH" == mobilenet_v2 ]] && "$PY" -m catsdogs.training.weights >>"$DEMO_DIR/logs/weights.log" 2>&1; then
  WEIGHTS=imagenet
  say "weights: ImageNet mobilenet_v2 from the torchvision cache"
else
  say "weights: none (ImageNet weights could not be seeded; training from scratch)"
fi
CONF="$("$PY" - "$SOURCE" "$ARCH" "$WEIGHTS" <<'EOF'
import json, os, sys
source, arch, weights = sys.argv[1:4]
print(json.dumps({
    "data_source": source,
    "arch": arch,
    "epochs": int(os.environ.get("DEMO_EPOCHS", "1")),
    "batch_size": int(os.environ.get("DEMO_BATCH_SIZE", "32")),
    "overrides": [f"model.weights={weights}",
                  f"transform.image_size={int(os.environ.get('DEMO_IMAGE_SIZE', '128'))}",
                  "train.num_workers=0"],
}))
EOF
)"

# --- 3. services, then the run through the REST API ---------------------------------------------
bash "$ROOT/scripts/airflow-services.sh" start
# shellcheck disable=SC1091
. "$DEMO_DIR/env.sh"
PASSWORD="$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' "$DEMO_DIR/airflow/passwords.json")"

say "triggering $DAG_ID through the REST API v2 with conf $CONF"
"$PY" - "$AIRFLOW_URL" "$PASSWORD" "$DAG_ID" "$CONF" <<'EOF' | tee "$DEMO_DIR/last-run.txt"
"""Log in, wait for the DAG, unpause, trigger, follow the tasks to the end (exit 1 on failure)."""
import json, sys, time, urllib.error, urllib.request
from datetime import datetime

url, password, dag_id, conf = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

def call(method, path, body=None, token=None):
    req = urllib.request.Request(url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{method} {path}: HTTP {exc.code}: {exc.read().decode()[:500]}")

token = call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]
deadline = time.monotonic() + 300
while True:
    errors = call("GET", "/api/v2/importErrors", token=token)
    if errors["total_entries"]:
        raise SystemExit(f"the DAG does not import: {errors['import_errors']}")
    try:
        req = urllib.request.Request(f"{url}/api/v2/dags/{dag_id}",
                                     headers={"Authorization": f"Bearer {token}"})
        urllib.request.urlopen(req, timeout=30).close()
        break
    except urllib.error.HTTPError as exc:
        if exc.code != 404 or time.monotonic() > deadline:
            raise SystemExit(f"DAG {dag_id} not available: HTTP {exc.code}")
        time.sleep(2)
call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False}, token)
run = call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}, token)
run_id = run["dag_run_id"]
print(f"[demo] run {run_id}: {url}/dags/{dag_id}/runs/{run_id}", flush=True)
seen = {}
while True:
    time.sleep(3)
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"
    run = call("GET", path, token=token)
    for ti in call("GET", f"{path}/taskInstances", token=token)["task_instances"]:
        if ti["state"] and seen.get(ti["task_id"]) != ti["state"]:
            seen[ti["task_id"]] = ti["state"]
            print(f"[demo]   {ti['task_id']:<10} {ti['state']}", flush=True)
    if run["state"] in ("success", "failed"):
        break
start = datetime.fromisoformat(run["start_date"])
end = datetime.fromisoformat(run["end_date"])
print(f"[demo] run {run['state']} in {(end - start).total_seconds():.0f} s "
      f"(DAG run start to end)", flush=True)
if run["state"] != "success":
    failed = [t for t, s in seen.items() if s == "failed"]
    raise SystemExit(f"[demo] the run failed at {', '.join(failed) or '?'}: open the task's log "
                     f"in the Airflow UI ({url}) or .demo/airflow/logs/")
EOF

# --- 4. where to look, then serve the champion ---------------------------------------------------
loud "" "Airflow UI : $AIRFLOW_URL   (login: admin / $PASSWORD)" \
        "MLflow UI  : $MLFLOW_TRACKING_URI" \
        "Logs       : $DEMO_DIR/logs   stop everything: make demo-stop" ""
say "serving the champion (scripts/serve.sh)"
MLFLOW_TRACKING_URI="$MLFLOW_TRACKING_URI" bash "$ROOT/scripts/serve.sh"
