"""`make demo`'s logic (scripts/demo.sh only starts and stops processes around it).

`python -m demo.steps run` chooses the data (DEMO_SOURCE, else Kaggle when credentials exist,
else a generated stand-in set, said loudly), seeds the ImageNet weights when it can, triggers
`catsdogs_training` on the local Airflow stack through the REST API v2 and follows it task by task
(a stage that found its outputs up to date says so), then keeps the stage summaries in
`<demo dir>/last-run.json`. `python -m demo.steps summary` prints the closing
block once the service runs: where to look and how to log in, the model's test scores,
promote's decision and why, the MLflow run, the data the model learnt from, and a `curl` to try.

Knobs (environment): DEMO_SOURCE, DEMO_ARCH (mobilenet_v2), DEMO_EPOCHS (1), DEMO_BATCH_SIZE (32),
DEMO_IMAGE_SIZE (128), DEMO_SYNTHETIC_PER_CLASS (300: a test split of 60, enough for the deploy task's post-deploy check), BENTO_PORT (3000).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from catsdogs.config import load_params
from catsdogs.data import provenance
from catsdogs.data.provenance import Provenance
from catsdogs.errors import UserError
from catsdogs.orchestration.airflow_client import AirflowClient, AirflowError
from catsdogs.orchestration.stage_table import (
    MONITORING_DAG_ID,
    PIPELINE,
    ROLLBACK_DAG_ID,
    SCORING_DAG_ID,
    TRAINING_DAG_ID,
)
from catsdogs.tracking import run_url
from demo.local_airflow import ADMIN, PROJECT_DIR, admin_password

log = logging.getLogger("demo")

RUN_RECORD = "last-run.json"
PROJECT_DAGS = (TRAINING_DAG_ID, MONITORING_DAG_ID, ROLLBACK_DAG_ID, SCORING_DAG_ID)
BANNER = "#" * 80


def _loud(*lines: str) -> None:
    log.warning("\n".join(("", BANNER, *(f"##  {line}" for line in lines), BANNER, "")))


def choose_source(demo_dir: Path) -> str:
    """DEMO_SOURCE; else the params' Kaggle data set when credentials exist; else a generated
    stand-in set in `<demo dir>/synthetic` (made once), announced loudly."""
    if os.environ.get("DEMO_SOURCE"):
        log.info("data: %s (DEMO_SOURCE)", os.environ["DEMO_SOURCE"])
        return os.environ["DEMO_SOURCE"]
    from catsdogs.data.kaggle import has_credentials

    if has_credentials():
        source = load_params(PROJECT_DIR / "params.yaml").data.source
        log.info("data: Kaggle credentials found: downloading the real data set (%s)", source)
        return source
    from catsdogs.data.synthetic import generate_dataset

    per_class = int(os.environ.get("DEMO_SYNTHETIC_PER_CLASS", "300"))
    folder = demo_dir / "synthetic" / f"per-class-{per_class}"
    if not provenance.is_generated(folder):  # its marker is written last: a cut-off set is redone
        generate_dataset(folder, per_class=per_class)
    _loud("NO KAGGLE CREDENTIALS: this demo uses a small GENERATED stand-in data set",
          f"({per_class} synthetic images per class in {folder}), NOT real photos.",
          "The model learns coloured shapes, not cats and dogs. For the real data set",
          "export KAGGLE_USERNAME and KAGGLE_KEY (or save ~/.kaggle/kaggle.json), or",
          "run with DEMO_SOURCE=dir:/path/to/photos (cat/ and dog/ sub-folders).")
    return f"dir:{folder}"


def _weights(arch: str) -> str:
    """`imagenet` when mobilenet_v2's ImageNet file is (or can be put) in the torch cache."""
    if arch != "mobilenet_v2":
        log.info("weights: none (only mobilenet_v2's ImageNet file can be seeded offline)")
        return "none"
    from catsdogs.training.weights import seed_cache

    try:
        log.info("weights: ImageNet mobilenet_v2 from %s", seed_cache())
        return "imagenet"
    except UserError as exc:
        log.info("weights: none, training from scratch (%s)", exc)
        return "none"


def run_conf(source: str) -> dict[str, Any]:
    """The trigger form's values for a demo run that ends in minutes on a CPU."""
    arch = os.environ.get("DEMO_ARCH", "mobilenet_v2")
    return {
        "data_source": source,
        "arch": arch,
        "epochs": int(os.environ.get("DEMO_EPOCHS", "1")),
        "batch_size": int(os.environ.get("DEMO_BATCH_SIZE", "32")),
        "overrides": [f"model.weights={_weights(arch)}",
                      f"transform.image_size={int(os.environ.get('DEMO_IMAGE_SIZE', '128'))}",
                      "train.num_workers=0"],
    }


def client_from_env() -> tuple[AirflowClient, str]:
    """A client for the local stack (AIRFLOW_URL, AIRFLOW_HOME from its env.sh) and the login."""
    password = admin_password(Path(os.environ["AIRFLOW_HOME"]))
    return AirflowClient(os.environ["AIRFLOW_URL"], ADMIN, password), password


def trigger_and_follow(client: AirflowClient, conf: dict[str, Any], login: str,
                       timeout: float = 3600) -> dict[str, Any]:
    """Unpause the project's DAGs (the DAGs declare it too; a DAG paused by hand in an earlier
    demo comes back), trigger the training DAG with `conf`, report each task as it changes, and return the
    record {"run_id", "state", "url", "summaries": {task: summary document}}."""
    for dag_id in PROJECT_DAGS:   # all active: a rollback or the hourly drift check from the UI runs
        client.wait_for_dag(dag_id)
        client.unpause(dag_id)
    run_id = client.trigger(TRAINING_DAG_ID, conf)
    url = client.run_url(TRAINING_DAG_ID, run_id)
    log.info("run %s: %s  (login: %s)", run_id, url, login)
    summaries: dict[str, Any] = {}

    def report(task_id: str, state: str) -> None:
        shown = state
        if state == "success":
            summaries[task_id] = client.xcom(TRAINING_DAG_ID, run_id, task_id)
            if (summaries[task_id] or {}).get("skipped"):
                shown = "success (up to date: skipped)"
        log.info("  %-10s %s", task_id, shown)

    state = client.follow(TRAINING_DAG_ID, run_id, timeout=timeout, on_change=report)
    return {"run_id": run_id, "state": state, "url": url, "summaries": summaries}


def _failed_tasks(client: AirflowClient, run_id: str) -> list[str]:
    return [task for task, ti in client.task_instances(TRAINING_DAG_ID, run_id).items()
            if ti["state"] == "failed"]


def run(demo_dir: Path) -> int:
    """`demo run`: choose the data, trigger, follow; 0 when the run succeeded."""
    conf = run_conf(choose_source(demo_dir))
    client, password = client_from_env()
    log.info("triggering %s through the REST API v2 with conf %s", TRAINING_DAG_ID, json.dumps(conf))
    record = trigger_and_follow(client, conf, f"{ADMIN} / {password}")
    (demo_dir / RUN_RECORD).write_text(json.dumps(record, indent=2))
    if record["state"] != "success":
        failed = ", ".join(_failed_tasks(client, record["run_id"])) or "?"
        log.error("the run failed at %s: open the task's log in the Airflow UI (%s) or %s",
                  failed, record["url"], demo_dir / "airflow" / "logs")
        return 1
    log.info("run succeeded: every stage of %s", ", ".join(s.name for s in PIPELINE))
    return 0


def summary_lines(record: dict[str, Any], login: str, mlflow_ui: str, service: str,
                  trained_on: Provenance | None) -> list[str]:
    """The closing block: a list of lines (no colours), from the run record and what the
    champion was trained on (None when not recorded)."""
    train = record["summaries"].get("train") or {}
    promote = record["summaries"].get("promote") or {}
    test = train.get("test") or {}
    lines = [f"Airflow run : {record['url']}   (login: {login})",
             f"MLflow UI   : {mlflow_ui}"]
    if train.get("run_id") and train.get("experiment_id"):
        lines.append(f"MLflow run  : {run_url(mlflow_ui, train['experiment_id'], train['run_id'])}")
    if test:
        lines.append(f"Test scores : F1 {test.get('f1', float('nan')):.4f}, accuracy "
                     f"{test.get('accuracy', float('nan')):.4f} (model v{train.get('version')})")
    if promote:
        if promote.get("skipped"):
            lines.append(f"Promotion   : up to date: {promote.get('message')}")
        else:
            decision = "promoted" if promote.get("promoted") else "rejected"
            lines.append(f"Promotion   : {decision}: {promote.get('reason')}")
    deploy = record["summaries"].get("deploy")
    if deploy:
        lines.append(f"Deployment  : {deploy.get('message')}")
    if trained_on is not None:
        lines.append(f"Trained on  : {trained_on.source}")
        if trained_on.synthetic:
            lines.append(f"              {trained_on.note()}")
    lines += [f"Service     : {service}/   (API docs: {service}/docs)",
              f"Try it      : curl -F image=@cat.jpg {service}/predict",
              "Stop it all : make demo-stop"]
    return lines


def _champion_data() -> Provenance | None:
    """What the served champion was trained on (its registry tags), None when not recorded."""
    from mlflow import MlflowClient

    from catsdogs.registry.names import CHAMPION
    from catsdogs.registry.record import find

    champion = find(MlflowClient(), load_params(PROJECT_DIR / "params.yaml").mlflow
                    .registered_model_name, CHAMPION)
    return champion.data if champion is not None else None


def summary(demo_dir: Path) -> int:
    """`demo summary`: the closing block of `make demo`."""
    record = json.loads((demo_dir / RUN_RECORD).read_text())
    password = admin_password(Path(os.environ["AIRFLOW_HOME"]))
    service = f"http://{os.environ.get('BENTO_HOST', '127.0.0.1')}:" \
              f"{os.environ.get('BENTO_PORT', '3000')}"
    mlflow_ui = os.environ.get("CATSDOGS_MLFLOW_UI_URL") or os.environ["MLFLOW_TRACKING_URI"]
    block = summary_lines(record, f"{ADMIN} / {password}", mlflow_ui, service, _champion_data())
    log.info("\n%s\n%s\n%s", BANNER, "\n".join(block), BANNER)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.steps",
                                     description="make demo's steps (scripts/demo.sh)")
    parser.add_argument("step", choices=("run", "summary"))
    parser.add_argument("--demo-dir", type=Path, default=Path(os.environ.get("DEMO_DIR", ".demo")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[demo] %(message)s", stream=sys.stdout)
    try:
        return run(args.demo_dir) if args.step == "run" else summary(args.demo_dir)
    except (AirflowError, UserError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
