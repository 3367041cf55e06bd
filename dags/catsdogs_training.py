"""catsdogs_training: ingest → validate → prepare → transform → train → promote → deploy,
nightly or when enough new labels exist.

Wiring only: the stages come from `catsdogs.orchestration.stage_table.PIPELINE`, the tasks from
`catsdogs.orchestration.runners.make_task` ($CATSDOGS_RUNNER=docker|local|kubernetes).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, chain

from catsdogs.orchestration.monitoring import LABELLED_ASSET
from catsdogs.orchestration.runners import make_task, runner
from catsdogs.orchestration.runners.common import (
    TEMPLATE_FILTERS,
    TEMPLATE_MACROS,
    dag_params,
    default_args,
    schedule,
)
from catsdogs.orchestration.stage_table import PIPELINE, TRAINING_DAG_ID

SETTINGS = runner()
MODE = SETTINGS.runner
NIGHTLY = CronTriggerTimetable(schedule("training", SETTINGS), timezone="UTC",
                               run_immediately=False)

DOC_MD = f"""
# Cats vs dogs: nightly retraining

Each task runs one stage of the `catsdogs` CLI (mode: **{MODE}**;
`CATSDOGS_RUNNER=docker|local|kubernetes`):

| task | what it does |
|------|--------------|
""" + "\n".join(f"| `{s.name}` | {s.description} |" for s in PIPELINE) + """

* **docker** mode runs each stage in the worker image on the shared volume `/data`; `train` and
  `promote` get the host's GPUs when the *Use GPUs* param is on.
* **local** mode runs the same commands as Bash tasks in the Airflow environment.
* **kubernetes** mode runs each stage as a pod of the worker image on a shared volume claim at
  `/data`, with the stage's CPU/memory requests; `train` and `promote` get a GPU node when the
  *Use GPUs* param is on.
* The trigger form's params become `--set section.key=value` overrides of `params.yaml`.
* `validate` is a gate: a refused data set fails the run at once (no retries), nothing is trained.
* Besides the nightly schedule, a labelled-data event of `catsdogs_monitoring` (asset
  `catsdogs://feedback/labelled`: at least `feedback.retrain_labels` labelled production pictures
  newer than the last ingest) starts a run whose ingest merges them
  (`CATSDOGS_RETRAIN_ON_LABELS=0` turns that off). A drift event alone does not retrain.
* `train` registers a challenger in MLflow (`CatsDogsCNN`); its **MLflow run** button opens the run.
  `promote` moves `@champion` to it when it beats the champion on the chosen metric.
* `deploy` rolls `@champion` out behind a health-gated switch and checks it on the live endpoint
  with labelled test pictures; a failed check moves `@champion` back, redeploys the previous
  champion and fails the task with the reason. When promote kept the champion and it already
  serves, nothing is rebuilt or restarted (the task's summary says so). To roll back by hand,
  trigger **catsdogs_rollback** (param `rollback_to`) or run `catsdogs rollback`.
"""

with DAG(
    dag_id=TRAINING_DAG_ID,
    description="Cats vs dogs: ingest, validate, prepare, transform, train, promote, deploy",
    # No start date: the first run is the next 02:00 after the DAG appears (never a missed one).
    # Nightly OR on new labels: the monitoring DAG's labelled-data event starts a run at once.
    schedule=(AssetOrTimeSchedule(timetable=NIGHTLY, assets=LABELLED_ASSET)
              if SETTINGS.retrain_on_labels else NIGHTLY),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,   # active from its first appearance: no toggle to find
    dagrun_timeout=timedelta(hours=10),
    default_args=default_args(SETTINGS),
    params=dag_params(),
    user_defined_macros=TEMPLATE_MACROS,
    user_defined_filters=TEMPLATE_FILTERS,
    doc_md=DOC_MD,
    tags=["catsdogs", "ml", "training", MODE],
) as dag:
    chain(*(make_task(stage, SETTINGS) for stage in PIPELINE))
