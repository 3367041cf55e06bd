"""The compose e2e's drift step, kept apart from the stack and serving set-up so either can change
on its own: it needs only a URL that serves predictions, the Airflow client, and the Prometheus
and Alertmanager URLs.

Darkened real photos sent to the service (their rows land in the prediction log, the stack's
Postgres database `monitoring`) make the `catsdogs_monitoring` DAG detect drift and announce
`catsdogs://monitoring/drift`; with no labelled production pictures its `labels` task counts 0
and `labelled_data_event` announces nothing, so no `catsdogs_training` run starts (drift alone
never retrains); Prometheus scrapes the pushed drift and label gauges from the Pushgateway and
Alertmanager receives `CatsdogsDataDrift`."""

from __future__ import annotations

import io
import json
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from PIL import Image, ImageEnhance

from catsdogs.orchestration.airflow_client import AirflowClient
from catsdogs.orchestration.stage_table import MONITORING_DAG_ID, TRAINING_DAG_ID
from tests.e2e.compose import http_json, wait_until
from tests.servers import open_local

DRIFT_PICTURES = 80   # above monitor.min_rows (50)


def darkened_jpeg(photo: Path) -> bytes:
    """The photo at 35% brightness, as JPEG bytes."""
    with Image.open(photo) as image:
        dark = ImageEnhance.Brightness(image.convert("RGB")).enhance(0.35)
    buffer = io.BytesIO()
    dark.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def post_picture(predict_url: str, data: bytes, name: str) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(predict_url, data=body, method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    with open_local(request, timeout=60) as response:
        return json.loads(response.read())


def _asset_runs(client: AirflowClient) -> set[str]:
    runs = client.request("GET", f"/api/v2/dags/{TRAINING_DAG_ID}/dagRuns?limit=100")
    return {r["dag_run_id"] for r in runs["dag_runs"] if r["run_type"] == "asset_triggered"}


def drift_asks_for_labels_and_alerts(predict_url: str, photos: list[Path],
                                         client: AirflowClient, prometheus_url: str,
                                         alertmanager_url: str) -> dict[str, Any]:
    """Run the drift step; returns its figures (drift score, signals, seconds to the alert)."""
    for photo in photos[:DRIFT_PICTURES]:
        answer = post_picture(predict_url, darkened_jpeg(photo), photo.name)
        assert answer.get("label") in ("cat", "dog"), answer
    time.sleep(10)   # the prediction log writes in batches every few seconds

    client.wait_for_dag(MONITORING_DAG_ID, timeout=300)
    client.unpause(MONITORING_DAG_ID)
    before = _asset_runs(client)
    # Cool-down 0 for this run: the hourly schedule may already have run during the e2e and
    # announced drift (the load rounds send one photo hundreds of times), which would make this
    # run's drift event a cool-down skip.
    run_id = client.trigger(MONITORING_DAG_ID, {"overrides": ["monitor.cooldown_hours=0"]},
                            run_id=f"e2e-drift-{uuid.uuid4().hex[:8]}")
    state = client.follow(MONITORING_DAG_ID, run_id, timeout=900, poll_s=5)
    tasks = client.task_instances(MONITORING_DAG_ID, run_id)
    states = {k: v["state"] for k, v in tasks.items()}
    assert state == "success", states
    summary = client.xcom(MONITORING_DAG_ID, run_id, "monitor")
    assert summary["drift_detected"] is True, summary
    assert summary["rows"] >= DRIFT_PICTURES and summary["pushed"] is True, summary
    assert states["drift_event"] == "success", (
        states, client.task_log(MONITORING_DAG_ID, run_id, "drift_event", 1)[-2000:])
    waiting = client.xcom(MONITORING_DAG_ID, run_id, "labels")
    assert waiting["new_labels"] == 0 and waiting["pushed"] is True, waiting
    assert states["labelled_data_event"] == "skipped", states
    t0 = time.monotonic()

    seen: list[dict[str, Any]] = []

    def drift_alert() -> list[dict[str, Any]]:
        """CatsdogsDataDrift for the version this run checked. Alertmanager may also hold one
        for another version (an earlier monitoring run's, until it expires), in any order."""
        alerts = http_json(f"{alertmanager_url}/api/v2/alerts")
        seen[:] = [alert["labels"] for alert in alerts
                   if alert["labels"].get("alertname") == "CatsdogsDataDrift"]
        return [labels for labels in seen
                if labels.get("model_version") == str(summary["model_version"])]

    try:
        wait_until(drift_alert, 240, interval=5, what="CatsdogsDataDrift in Alertmanager")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; v{summary['model_version']} checked, drift alerts: "
                             f"{seen}") from None
    query = urllib.parse.quote('catsdogs_drift_detected{job="catsdogs_monitor"}')
    series = http_json(f"{prometheus_url}/api/v1/query?query={query}")["data"]["result"]
    assert series and series[0]["value"][1] == "1", series
    query = urllib.parse.quote('catsdogs_labels_waiting{job="catsdogs_labels"}')
    series = http_json(f"{prometheus_url}/api/v1/query?query={query}")["data"]["result"]
    assert series and series[0]["value"][1] == "0", series
    # the drift event started no training run (the alert wait above gave the scheduler time)
    started = _asset_runs(client) - before
    assert not started, f"training runs started by an asset event: {started}"
    return {"drift_score": summary["drift_score"],
            "drifted": [k for k, v in summary["signals"].items() if v["drifted"]],
            "labels_waiting": waiting["new_labels"], "labels_needed": waiting["needed"],
            "alert_s": round(time.monotonic() - t0, 1)}
