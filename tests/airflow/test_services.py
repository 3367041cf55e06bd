"""Real Airflow services (api-server, scheduler, dag-processor, triggerer; SQLite, LocalExecutor,
local mode): trigger the DAG through REST API v2 with `conf` and watch it end."""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.conftest import DAG_ID
from tests.airflow.harness import FAKE_KAGGLE, AirflowServices, register_tiny, scoring_inbox
from tests.browser import chromium_page

pytestmark = pytest.mark.services
STAGES = ("ingest", "validate", "prepare", "transform", "train", "promote", "deploy")


@pytest.fixture
def services(airflow_services: AirflowServices) -> AirflowServices:
    """The session's services with the DAG parsed (active from its first appearance)."""
    airflow_services.wait_for_dag(DAG_ID)
    return airflow_services


def test_project_dags_are_active_when_they_first_appear(airflow_services: AirflowServices) -> None:
    """No toggle to find: the rollback DAG runs when triggered from the UI, the hourly drift
    check and the nightly run are scheduled, from the DAGs' first parse (nothing unpauses the
    rollback DAG anywhere in the tests)."""
    from catsdogs.orchestration.stage_table import (
        MONITORING_DAG_ID,
        ROLLBACK_DAG_ID,
        SCORING_DAG_ID,
        TRAINING_DAG_ID,
    )

    for dag_id in (ROLLBACK_DAG_ID, MONITORING_DAG_ID, TRAINING_DAG_ID, SCORING_DAG_ID):
        assert airflow_services.wait_for_dag(dag_id)["is_paused"] is False, dag_id


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
        services: AirflowServices, tiny_conf: dict[str, Any], mlflow_server: str,
        artifacts_dir: Path) -> None:
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
    assert link.startswith(f"{mlflow_server}/#/experiments/")
    assert link.endswith("?workflowType=machine_learning")    # the runs view, not GenAI traces
    mlflow_run = link.removesuffix("?workflowType=machine_learning").rsplit("/", 1)[1]
    client = MlflowClient(tracking_uri=mlflow_server)
    assert client.search_model_versions(f"run_id='{mlflow_run}'")
    assert client.get_model_version_by_alias("CatsDogsCNN", "champion").version

    for task_id in ("ingest", "train"):
        assert _secret_free(services, run_id, task_id) == []
    plugins = services.request("GET", "/api/v2/plugins")["plugins"]
    assert "catsdogs" in [plugin["name"] for plugin in plugins]

    # The button is part of the serialised DAG, on train and promote only: the links endpoint
    # (what the UI's task page asks) lists it. (`GET /dags/{id}/tasks/{task}` answers
    # "extra_links": [] for every task in Airflow 3.3.2: its TaskResponse has no field for them.)
    for task_id, expected in (("train", ["MLflow run"]), ("promote", ["MLflow run"]),
                              ("transform", [])):
        listed = services.client.task_links(DAG_ID, run_id, task_id)
        assert sorted(listed) == expected, (task_id, listed)
        assert all(url and url.startswith(f"{mlflow_server}/#/experiments/")
                   for url in listed.values())
    # Each stage's summary is the task's XCom return value: data, not a scraped log line.
    client = services.client
    summaries = {stage: client.xcom(DAG_ID, run_id, stage) for stage in STAGES}
    assert all(summary["stage"] == stage for stage, summary in summaries.items())
    assert summaries["train"]["run_id"] == mlflow_run
    assert summaries["promote"]["status"] in ("done", "skipped")
    # The reverse link: the MLflow run names the DAG run that trained it and links back to it.
    # (A run reused by train's idempotency names the DAG run that trained it first.)
    # Every try of a task, with the stage table's Celery queue (recorded, ignored by the
    # LocalExecutor these services run).
    assert [(t["try_number"], t["state"], t["queue"])
            for t in client.task_tries(DAG_ID, run_id, "train")] == [(1, "success", "gpu")]
    assert client.task_tries(DAG_ID, run_id, "ingest")[0]["queue"] == "default"
    tags = MlflowClient(tracking_uri=mlflow_server).get_run(mlflow_run).data.tags
    trained_by = tags["airflow.dag_run_id"]
    assert trained_by == run_id or summaries["train"]["skipped"]
    assert tags["airflow.run_url"].endswith(
        f"/dags/{DAG_ID}/runs/{urllib.parse.quote(trained_by, safe='')}")
    assert tags["airflow.run_url"] in tags["mlflow.note.content"]
    assert _ui_link(services, run_id, artifacts_dir) == link


def _ui_link(services: AirflowServices, run_id: str, artifacts_dir: Path) -> str:
    """The train task's Details page in the real Airflow UI (headless chromium): the URL behind
    its "MLflow run" button; a screenshot goes to test-artifacts/."""
    token = [{"name": "_token", "value": services.client.token, "url": services.url}]
    with chromium_page(1400, 900, cookies=token) as page:
        page.goto(f"{services.url}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id)}"
                  "/tasks/train/details")
        button = page.get_by_role("link", name="MLflow run")
        button.wait_for(timeout=60_000)
        page.screenshot(path=str(artifacts_dir / "airflow-train-task-mlflow-button.png"))
        return button.get_attribute("href") or ""


def test_second_run_reports_every_stage_up_to_date(
        services: AirflowServices, tiny_conf: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """The same data and params again: every stage skips, and the demo's follower says so."""
    from demo.steps import trigger_and_follow

    with caplog.at_level(logging.INFO, logger="demo"):
        record = trigger_and_follow(services.client, tiny_conf, "admin / admin", timeout=420)
    assert record["state"] == "success", services.log_tail()
    assert {stage: s["skipped"] for stage, s in record["summaries"].items()} == \
        dict.fromkeys(STAGES, True)
    reported = [line for line in caplog.messages if "up to date" in line]
    assert len(reported) == len(STAGES), caplog.messages


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


def test_batch_scoring_run_through_the_services(airflow_services: AirflowServices,
                                                mlflow_server: str, sample_dir: Path,
                                                tmp_path: Path) -> None:
    """catsdogs_batch_scoring triggered through REST API v2 with its form's conf: the summary in
    XCom, the report on the data volume, the "MLflow run" link to the scoring run."""
    from catsdogs.orchestration.stage_table import SCORING_DAG_ID

    name = "CatsDogsScoringServices"
    version = register_tiny(mlflow_server, name, airflow_services.env)
    photos = scoring_inbox(sample_dir, tmp_path / "inbox")
    airflow_services.wait_for_dag(SCORING_DAG_ID)
    run_id = airflow_services.trigger(SCORING_DAG_ID, {"images": str(photos),
                                                       "model": f"models:/{name}/{version}"})
    state = airflow_services.wait_for_run(SCORING_DAG_ID, run_id, timeout=300)
    tasks = airflow_services.task_states(SCORING_DAG_ID, run_id)
    assert state == "success", ({t: ti["state"] for t, ti in tasks.items()},
                                airflow_services.log_tail())
    summary = airflow_services.client.xcom(SCORING_DAG_ID, run_id, "score")
    assert (summary["count"], summary["rejected"], summary["version"]) == (7, 1, version)
    assert summary["rejections"] == {"not_an_image": 1}
    assert (Path(summary["report"]) / "scores.parquet").is_file()
    links = airflow_services.request(
        "GET", f"/api/v2/dags/{SCORING_DAG_ID}/dagRuns/{urllib.parse.quote(run_id)}"
               "/taskInstances/score/links")
    assert links["extra_links"]["MLflow run"] == (
        f"{mlflow_server}/#/experiments/{summary['experiment_id']}/runs/{summary['run_id']}"
        "?workflowType=machine_learning")
