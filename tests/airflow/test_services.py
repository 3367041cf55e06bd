"""Real Airflow services (api-server, scheduler, dag-processor, triggerer; SQLite, LocalExecutor,
local mode): trigger the DAG through REST API v2 with `conf` and watch it end."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest

from tests.airflow.conftest import DAG_ID
from tests.airflow.harness import FAKE_KAGGLE, AirflowServices

pytestmark = pytest.mark.services
STAGES = ("ingest", "validate", "prepare", "transform", "train", "promote")


@pytest.fixture
def services(airflow_services: AirflowServices) -> AirflowServices:
    """The session's services with the DAG parsed and unpaused (new DAGs start paused)."""
    dag = airflow_services.wait_for_dag(DAG_ID)
    if dag["is_paused"]:
        airflow_services.request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    return airflow_services


def _versions(tracking_uri: str) -> int:
    from mlflow import MlflowClient

    return len(MlflowClient(tracking_uri=tracking_uri).search_model_versions(
        "name='CatsDogsCNN'"))


def _secret_free(services: AirflowServices, run_id: str, task_id: str) -> list[str]:
    """Where the fake Kaggle key shows up for one task: rendered fields, log, XCom values."""
    base = f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/{task_id}"
    secret, found = FAKE_KAGGLE["KAGGLE_KEY"], []
    if secret in str(services.request("GET", base)["rendered_fields"]):
        found.append("rendered_fields")
    if secret in str(services.request("GET", f"{base}/logs/1?full_content=true")):
        found.append("log")
    for entry in services.request("GET", f"{base}/xcomEntries")["xcom_entries"]:
        value = services.request("GET", f"{base}/xcomEntries/{entry['key']}")
        if secret in str(value):
            found.append(f"xcom {entry['key']}")
    return found


def test_triggered_run_succeeds_with_link_and_no_secrets(
        services: AirflowServices, tiny_conf: dict[str, Any], mlflow_server: str) -> None:
    from mlflow import MlflowClient

    run_id = services.trigger(DAG_ID, tiny_conf)
    state = services.wait_for_run(DAG_ID, run_id)
    tasks = services.task_states(DAG_ID, run_id)
    assert state == "success", ({t: ti["state"] for t, ti in tasks.items()}, services.log_tail())
    assert {t: ti["state"] for t, ti in tasks.items()} == dict.fromkeys(STAGES, "success")

    # The train task's "MLflow run" link names the run behind a registered version (trained now,
    # or reused by train's idempotency when the same data and params were trained before).
    quoted = urllib.parse.quote(run_id)
    links = services.request(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances/train/links")
    link = links["extra_links"]["MLflow run"]
    assert link.startswith(f"{mlflow_server}/#/runs/")
    mlflow_run = link.rsplit("/", 1)[1]
    client = MlflowClient(tracking_uri=mlflow_server)
    assert client.search_model_versions(f"run_id='{mlflow_run}'")
    assert client.get_model_version_by_alias("CatsDogsCNN", "champion").version

    for task_id in ("ingest", "train"):
        assert _secret_free(services, run_id, task_id) == []
    plugins = services.request("GET", "/api/v2/plugins")["plugins"]
    assert "catsdogs" in [plugin["name"] for plugin in plugins]


def test_form_refuses_out_of_bounds_conf(services: AirflowServices) -> None:
    with pytest.raises(RuntimeError, match="HTTP 400"):
        services.trigger(DAG_ID, {"epochs": 0})
    with pytest.raises(RuntimeError, match="HTTP 400"):
        services.trigger(DAG_ID, {"arch": "vgg16"})


def test_validation_failure_is_final_and_nothing_is_trained(
        services: AirflowServices, tiny_conf: dict[str, Any], mlflow_server: str) -> None:
    before = _versions(mlflow_server)
    conf = {**tiny_conf, "overrides": [*tiny_conf["overrides"],
                                       "validation.min_samples_per_class=1000"]}
    run_id = services.trigger(DAG_ID, conf)
    assert services.wait_for_run(DAG_ID, run_id) == "failed"
    tasks = services.task_states(DAG_ID, run_id)
    assert tasks["ingest"]["state"] == "success"
    assert tasks["validate"]["state"] == "failed"
    assert tasks["validate"]["try_number"] == 1          # final: no retry on a refused data set
    assert {tasks[t]["state"] for t in STAGES[2:]} == {"upstream_failed"}
    assert _versions(mlflow_server) == before
