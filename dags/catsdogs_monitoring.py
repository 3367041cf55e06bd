"""catsdogs_monitoring: hourly drift check of the served model and count of new labels; enough
new labels trigger catsdogs_training.

Wiring only: the `monitor` and `labels` stages come from the stage table (run like the training
stages, $CATSDOGS_RUNNER=docker|local|kubernetes), the event decisions from
`catsdogs.orchestration.monitoring`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, Param, task

from catsdogs.orchestration.monitoring import (
    DRIFT_ASSET,
    LABELLED_ASSET,
    cooldown_hours,
    drift_event,
    labels_event,
)
from catsdogs.orchestration.runners import make_task, runner
from catsdogs.orchestration.runners.common import (
    OVERRIDE_PATTERN,
    TEMPLATE_FILTERS,
    TEMPLATE_MACROS,
    default_args,
    overrides_from_params,
    schedule,
)
from catsdogs.orchestration.stage_table import MONITORING_DAG_ID, STAGES

SETTINGS = runner()
MONITOR = next(stage for stage in STAGES if stage.name == "monitor")
LABELS = next(stage for stage in STAGES if stage.name == "labels")

DOC_MD = """
# Cats vs dogs: drift monitoring

* **monitor** compares the last window of the prediction log with the served model version's
  reference profile (Evidently: embedding, prediction, confidence and image-property drift),
  logs the HTML report to MLflow and `reports/monitoring/`, pushes the scores to the Pushgateway.
* **drift_event** announces the asset `catsdogs://monitoring/drift` when drift was detected and
  the last drift event is older than the cool-down (`monitor.cooldown_hours`; a run's
  `overrides` may set it). Drift alone does
  not retrain: it asks for labels (alert `CatsdogsLabelsNeeded` while too few exist).
* **labels** counts the labelled production pictures newer than the last ingest and pushes
  `catsdogs_labels_waiting` / `catsdogs_labels_needed`.
* **labelled_data_event** announces the asset `catsdogs://feedback/labelled` when they reach
  `feedback.retrain_labels`: `catsdogs_training` runs on that event (besides its nightly
  schedule) and merges them.
* Too few predictions in the window: the drift check is skipped, no drift event.
"""

with DAG(
    dag_id=MONITORING_DAG_ID,
    description="Cats vs dogs: drift of the served model's inputs and new labels; enough new "
                "labels trigger retraining",
    schedule=CronTriggerTimetable(schedule("monitoring", SETTINGS), timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,   # active from its first appearance: no toggle to find
    dagrun_timeout=timedelta(hours=1),
    default_args=default_args(SETTINGS),
    params={"overrides": Param([], type="array", items={"type": "string",
                                                        "pattern": OVERRIDE_PATTERN},
                               title="Overrides", description="section.key=value settings, "
                               "e.g. monitor.window_hours=6")},
    user_defined_macros=TEMPLATE_MACROS,
    user_defined_filters=TEMPLATE_FILTERS,
    doc_md=DOC_MD,
    tags=["catsdogs", "ml", "monitoring", SETTINGS.runner],
) as dag:
    monitor = make_task(MONITOR, SETTINGS)

    @task(task_id="drift_event", inlets=[DRIFT_ASSET], outlets=[DRIFT_ASSET],
          execution_timeout=timedelta(minutes=5))
    def announce(summary: dict[str, Any] | None, *, inlet_events: Any = None,
                 outlet_events: Any = None, params: Any = None) -> dict[str, Any]:
        """Announce the drift asset (or skip: no drift, too few rows, cool-down)."""
        cooldown = cooldown_hours(runner(), overrides_from_params(params or {}))
        return drift_event(summary, list(inlet_events[DRIFT_ASSET]),
                           outlet_events[DRIFT_ASSET], cooldown)

    announce(monitor.output)
    labels = make_task(LABELS, SETTINGS)

    @task(task_id="labelled_data_event", inlets=[LABELLED_ASSET], outlets=[LABELLED_ASSET],
          execution_timeout=timedelta(minutes=5))
    def announce_labels(summary: dict[str, Any] | None, *, inlet_events: Any = None,
                        outlet_events: Any = None) -> dict[str, Any]:
        """Announce the labelled-data asset (or skip: too few new labels, or already asked)."""
        return labels_event(summary, list(inlet_events[LABELLED_ASSET]),
                            outlet_events[LABELLED_ASSET])

    announce_labels(labels.output)
