"""The drift → labels → retraining loop on real Airflow services (local mode, the session's
MLflow server): a drifted prediction log makes catsdogs_monitoring's `monitor` task detect drift
and its `drift_event` task announce `catsdogs://monitoring/drift`, which starts no training run
(drift alone never retrains); once enough production pictures are labelled, the `labels` task
counts them, `labelled_data_event` announces `catsdogs://feedback/labelled`, and the scheduler
starts one asset-triggered catsdogs_training run, which trains on the source plus those pictures;
a later check, after that ingest, asks for no second run.

The log rows are generated (shifted embedding, darker pictures) to keep this test about the
wiring; the drift method is proven on real photos in tests/monitoring/test_drift_proof.py."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

from catsdogs.monitoring.prediction_log import default_url
from catsdogs.orchestration.airflow_client import AirflowError
from catsdogs.orchestration.stage_table import MONITORING_DAG_ID, TRAINING_DAG_ID
from tests.airflow.harness import SERVICE_LABELS, AirflowServices
from tests.data.helpers import label_pictures, smooth_jpeg
from tests.monitoring.logs import generated_rows, register_with_reference, write_log

pytestmark = pytest.mark.services
LABELS = SERVICE_LABELS   # feedback.retrain_labels of the monitoring runs, min_labels of ingest


def _asset_runs(services: AirflowServices) -> list[dict[str, Any]]:
    runs = services.request("GET", f"/api/v2/dags/{TRAINING_DAG_ID}/dagRuns?limit=100")
    return [run for run in runs["dag_runs"] if run["run_type"] == "asset_triggered"]


def _events(services: AirflowServices, patience_s: float = 180) -> list[dict[str, Any]]:
    """The monitoring DAG's asset events. Airflow 3.3 answers 500 while an event's created DAG
    run is queued with no start date yet (apache/airflow#71360): asked again until it starts."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            answer = services.request("GET", "/api/v2/assets/events?source_dag_id="
                                      f"{MONITORING_DAG_ID}&limit=100")
            return answer["asset_events"]
        except AirflowError as exc:
            if exc.status != 500 or time.monotonic() > deadline:
                raise
            time.sleep(3)


def _check(services: AirflowServices, overrides: list[str]) -> dict[str, dict[str, Any]]:
    run_id = services.trigger(MONITORING_DAG_ID, {"overrides": overrides})
    assert services.wait_for_run(MONITORING_DAG_ID, run_id, timeout=600) == "success", \
        services.log_tail()
    return services.task_states(MONITORING_DAG_ID, run_id) | {
        "summary": services.client.xcom(MONITORING_DAG_ID, run_id, "monitor"),
        "labels_summary": services.client.xcom(MONITORING_DAG_ID, run_id, "labels")}


def test_drift_asks_for_labels_and_enough_labels_retrain_once(airflow_services: AirflowServices,
                                                               monkeypatch, tmp_path: Path
                                                               ) -> None:
    services = airflow_services
    monkeypatch.setenv("MLFLOW_TRACKING_URI", services.env["MLFLOW_TRACKING_URI"])
    reference = generated_rows(200, seed=11).assign(split="val")
    version = register_with_reference(reference)
    url = default_url(Path(services.env["CATSDOGS_DATA_DIR"]))
    write_log(url, generated_rows(80, shift=1.5, seed=12), version)
    for dag_id in (MONITORING_DAG_ID, TRAINING_DAG_ID):
        services.wait_for_dag(dag_id)
        services.client.unpause(dag_id)
    before = {run["dag_run_id"] for run in _asset_runs(services)}
    overrides = [f"feedback.retrain_labels={LABELS}"]

    first = _check(services, overrides)
    assert first["monitor"]["state"] == "success"
    assert first["summary"]["drift_detected"] is True, first["summary"]
    assert first["summary"]["model_version"] == version
    assert first["drift_event"]["state"] == "success"
    assert first["labels_summary"]["new_labels"] == 0
    assert first["labelled_data_event"]["state"] == "skipped"
    events = _events(services)
    assert [e["uri"] for e in events] == ["catsdogs://monitoring/drift"]
    assert events[0]["extra"]["model_version"] == version

    # labelled production pictures (answered two days ago: outside the drift window)
    label_pictures(url, tmp_path / "kept",
                   [(smooth_jpeg(i), "cat" if i % 2 else "dog") for i in range(LABELS)], 0,
                   dt.datetime.now(dt.UTC) - dt.timedelta(hours=LABELS),
                   answered=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    second = _check(services, overrides)
    assert second["drift_event"]["state"] == "skipped"   # inside the drift cool-down
    assert second["labels_summary"]["new_labels"] == LABELS
    assert second["labelled_data_event"]["state"] == "success"
    labelled = [e for e in _events(services) if e["uri"] == "catsdogs://feedback/labelled"]
    assert len(labelled) == 1 and labelled[0]["extra"]["new_labels"] == LABELS

    deadline, started = time.monotonic() + 180, []
    while not started and time.monotonic() < deadline:
        started = [r for r in _asset_runs(services) if r["dag_run_id"] not in before]
        time.sleep(2)
    assert len(started) == 1, f"no asset-triggered {TRAINING_DAG_ID} run\n{services.log_tail()}"
    # The retraining runs to its end (the services' params file is the tiny offline one) and its
    # ingest merges the labelled production pictures into the training data.
    retraining = started[0]["dag_run_id"]
    state = services.wait_for_run(TRAINING_DAG_ID, retraining, timeout=600)
    tasks = services.task_states(TRAINING_DAG_ID, retraining)
    assert state == "success", ({t: ti["state"] for t, ti in tasks.items()}, services.log_tail())
    ingest = services.client.xcom(TRAINING_DAG_ID, retraining, "ingest")
    assert ingest["feedback"] == LABELS, ingest
    assert ingest["feedback_per_class"] == {"cat": LABELS // 2, "dog": LABELS - LABELS // 2}
    train = services.client.xcom(TRAINING_DAG_ID, retraining, "train")
    assert train["status"] == "done" and not train["skipped"], train

    # the ingest merged them: no second run asked for; the run's own cool-down override (0 h)
    # lets its drift event through although the first one is minutes old
    third = _check(services, overrides + ["monitor.cooldown_hours=0"])
    assert third["labelled_data_event"]["state"] == "skipped"
    assert third["summary"]["drift_detected"] is True, third["summary"]
    assert third["drift_event"]["state"] == "success"
    assert len([e for e in _events(services) if e["uri"] == "catsdogs://feedback/labelled"]) == 1
    time.sleep(10)
    # the drift event of the first check started nothing: one run, the labels' one
    assert {r["dag_run_id"] for r in _asset_runs(services)} - before == {
        started[0]["dag_run_id"]}
