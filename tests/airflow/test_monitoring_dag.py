"""catsdogs_monitoring: its shape (monitor → drift_event, labels → labelled_data_event), hourly
schedule, the drift and labelled-data assets it announces, the stages' private environment, the
drift-event decision with its cool-down, and the labelled-data decision."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from airflow.sdk import CronTriggerTimetable
from airflow.sdk.exceptions import AirflowSkipException

from catsdogs.errors import UserError
from catsdogs.orchestration.monitoring import (
    DRIFT_ASSET,
    LABELLED_ASSET,
    cooldown_hours,
    drift_event,
    labels_event,
)
from catsdogs.orchestration.runners.common import overrides_from_params
from catsdogs.orchestration.runners.docker import StageDockerOperator
from catsdogs.orchestration.runners.kubernetes import StageKubernetesPodOperator
from catsdogs.orchestration.runners.local import StageBashOperator
from catsdogs.orchestration.stage_table import MONITORING_DAG_ID, PIPELINE, STAGES
from catsdogs.settings import RunnerSettings

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
DRIFT = {"drift_detected": True, "drift_score": 0.5, "model_version": "3", "rows": 80,
         "report": "/data/reports/monitoring/drift.html", "run_id": "abc",
         "queued_for_review": 12}


@pytest.mark.parametrize("runner", ["docker", "local", "kubernetes"])
def test_monitor_then_drift_event(parse_dag, runner: str) -> None:
    dag = parse_dag(runner, dag_id=MONITORING_DAG_ID)
    dag.check_cycle()
    assert sorted(dag.task_ids) == ["drift_event", "labelled_data_event", "labels", "monitor"]
    assert [t.task_id for t in dag.get_task("monitor").downstream_list] == ["drift_event"]
    assert [t.task_id for t in dag.get_task("labels").downstream_list] == [
        "labelled_data_event"]
    assert not dag.get_task("labels").upstream_list   # counted even when the drift check fails
    kind = {"docker": StageDockerOperator, "local": StageBashOperator,
            "kubernetes": StageKubernetesPodOperator}[runner]
    assert isinstance(dag.get_task("monitor"), kind) and isinstance(dag.get_task("labels"), kind)
    event = dag.get_task("drift_event")
    assert [a.uri for a in event.outlets] == [a.uri for a in event.inlets] == [DRIFT_ASSET.uri]
    labelled = dag.get_task("labelled_data_event")
    assert [a.uri for a in labelled.outlets] == [a.uri for a in labelled.inlets] == [
        LABELLED_ASSET.uri]
    assert dag.catchup is False and dag.max_active_runs == 1
    for task in dag.tasks:
        assert task.retries >= 1 and task.execution_timeout is not None


def test_monitor_and_labels_are_stages_but_not_training_tasks() -> None:
    monitor = next(stage for stage in STAGES if stage.name == "monitor")
    labels = next(stage for stage in STAGES if stage.name == "labels")
    assert monitor not in PIPELINE and monitor.dag_task is False
    assert labels not in PIPELINE and labels.dag_task is False
    assert "reports/monitoring" in monitor.outputs


def test_hourly_by_default_and_overridable(parse_dag) -> None:
    timetable = parse_dag("local", dag_id=MONITORING_DAG_ID).timetable
    assert isinstance(timetable, CronTriggerTimetable)
    assert timetable.expression == "0 * * * *"  # @hourly
    other = parse_dag("local", dag_id=MONITORING_DAG_ID, CATSDOGS_MONITOR_SCHEDULE="*/10 * * * *")
    assert other.timetable.expression == "*/10 * * * *"
    # the same rule as the training DAG's: the setting, else the Airflow Variable, else hourly
    variable = parse_dag("local", dag_id=MONITORING_DAG_ID, CATSDOGS_MONITOR_SCHEDULE="",
                         AIRFLOW_VAR_CATSDOGS_MONITOR_SCHEDULE="*/20 * * * *")
    assert variable.timetable.expression == "*/20 * * * *"


def test_monitor_command_takes_overrides(parse_dag) -> None:
    task = parse_dag("local", dag_id=MONITORING_DAG_ID).get_task("monitor")
    assert task.bash_command.startswith("catsdogs monitor")
    assert overrides_from_params({"overrides": ["monitor.window_hours=6"]}) == [
        "monitor.window_hours=6"]


def test_docker_mode_passes_the_log_url_privately(parse_dag, monkeypatch) -> None:
    secret = "postgresql://monitor:pa55word@postgres/monitoring"
    monkeypatch.setenv("CATSDOGS_PREDICTION_LOG_URL", secret)
    dag = parse_dag("docker", dag_id=MONITORING_DAG_ID)
    for task in (dag.get_task("monitor"), dag.get_task("labels")):
        assert task.private_env == ("CATSDOGS_PREDICTION_LOG_URL", "CATSDOGS_PUSHGATEWAY_URL")
        assert secret not in str(task.environment) and secret not in str(task.command)


def _outlet() -> SimpleNamespace:
    return SimpleNamespace(extra={})


@pytest.mark.parametrize("summary", [None, {"drift_detected": False, "message": "no drift"},
                                     {"drift_detected": False, "reason": "not_enough_rows"}])
def test_no_drift_no_event(summary) -> None:
    outlet = _outlet()
    with pytest.raises(AirflowSkipException):
        drift_event(summary, [], outlet, 24, NOW)
    assert outlet.extra == {}


def test_drift_emits_an_event_with_its_evidence() -> None:
    outlet = _outlet()
    extra = drift_event(DRIFT, [], outlet, 24, NOW)
    assert outlet.extra == extra
    assert extra["drift_score"] == 0.5 and extra["model_version"] == "3"
    assert extra["mlflow_run_id"] == "abc"
    assert extra["queued_for_review"] == 12   # the drift event's pictures waiting for labels


def test_cool_down_after_the_last_drift_event() -> None:
    recent = [SimpleNamespace(timestamp=NOW - dt.timedelta(hours=30)),
              SimpleNamespace(timestamp=NOW - dt.timedelta(hours=3))]
    with pytest.raises(AirflowSkipException, match="cool-down"):
        drift_event(DRIFT, recent, _outlet(), 24, NOW)
    old = [SimpleNamespace(timestamp=NOW - dt.timedelta(hours=25))]
    assert drift_event(DRIFT, old, _outlet(), 24, NOW)["rows"] == 80
    assert drift_event(DRIFT, recent, _outlet(), 0, NOW)["rows"] == 80


def test_a_runs_override_sets_its_cool_down(tmp_path, monkeypatch) -> None:
    """Precedence: the run's `monitor.cooldown_hours=` override, then
    $CATSDOGS_DRIFT_COOLDOWN_HOURS, then params.yaml ($CATSDOGS_PARAMS)."""
    params = tmp_path / "params.yaml"
    params.write_text("monitor:\n  cooldown_hours: 12\n")
    monkeypatch.setenv("CATSDOGS_PARAMS", str(params))
    plain, from_env = RunnerSettings(), RunnerSettings(drift_cooldown_hours=6)
    assert cooldown_hours(plain) == 12
    assert cooldown_hours(plain, ["train.epochs=1"]) == 12
    assert cooldown_hours(from_env) == 6
    assert cooldown_hours(from_env, ["monitor.cooldown_hours=0"]) == 0
    assert cooldown_hours(plain, overrides_from_params({"overrides": ["monitor.cooldown_hours=2"]})) == 2
    with pytest.raises(UserError, match="cooldown_hours"):
        cooldown_hours(plain, ["monitor.cooldown_hours=-1"])


LABELS = {"new_labels": 60, "needed": 50, "enough": True, "since": NOW.isoformat()}


@pytest.mark.parametrize("summary", [None, {"enough": False, "message": "10 new labels"}])
def test_too_few_labels_no_event(summary) -> None:
    outlet = _outlet()
    with pytest.raises(AirflowSkipException, match="no labelled-data event"):
        labels_event(summary, [], outlet)
    assert outlet.extra == {}


def test_enough_labels_emit_one_event_until_an_ingest_reads_them() -> None:
    outlet = _outlet()
    assert labels_event(LABELS, [], outlet) == outlet.extra == {
        "new_labels": 60, "needed": 50, "since": NOW.isoformat()}
    # an event before the last ingest: that run merged its labels, these are new
    older = [SimpleNamespace(timestamp=NOW - dt.timedelta(hours=1))]
    assert labels_event(LABELS, older, _outlet())["new_labels"] == 60
    # an event after it: its training run has not ingested yet, no second run
    newer = [SimpleNamespace(timestamp=NOW + dt.timedelta(minutes=5))]
    with pytest.raises(AirflowSkipException, match="newer than the last ingest"):
        labels_event(LABELS, newer, _outlet())
    with pytest.raises(AirflowSkipException, match="newer than the last ingest"):
        labels_event(LABELS | {"since": None}, older, _outlet())
