"""catsdogs_batch_scoring: label every picture of a folder or archive with a registered model
(`catsdogs score --images DIR|archive:PATH --model URI`), on demand from the trigger form.

Wiring only: the task comes from the stage table's `score` entry and
`catsdogs.orchestration.runners.make_task` ($CATSDOGS_RUNNER=docker|local|kubernetes), the
trigger form from `runners.common.scoring_params`.
"""

from __future__ import annotations

from airflow.sdk import DAG

from catsdogs.orchestration.runners import make_task, runner
from catsdogs.orchestration.runners.common import (
    TEMPLATE_FILTERS,
    TEMPLATE_MACROS,
    default_args,
    scoring_params,
)
from catsdogs.orchestration.stage_table import SCORE_STAGE, SCORING_DAG_ID

SETTINGS = runner()

DOC_MD = """
# Cats vs dogs: batch scoring

* **score** labels every picture under *Pictures* (a folder, searched recursively, or
  `archive:PATH`, a zip or tar) with *Model* (default `@champion`, resolved once when the task
  starts), decoding them like the service does, in batches over all cores.
* One row per picture (path, sha256, label, confidence, probabilities, out-of-distribution score,
  model version, or why it was rejected) in `reports/scoring/<run>/scores.parquet` and
  `scores.csv` under the data dir; the counts are the task's XCom `return_value`.
* The task's **MLflow run** button opens the scoring run, whose artifacts are the report.
* A re-run with the same pictures and version is skipped; a run that was stopped continues
  where it stopped.
"""

with DAG(
    dag_id=SCORING_DAG_ID,
    description="Cats vs dogs: label every picture of a folder or archive with a registered model",
    schedule=None,
    catchup=False,
    is_paused_upon_creation=False,   # active from its first appearance: no toggle to find
    default_args=default_args(SETTINGS),
    params=scoring_params(),
    user_defined_macros=TEMPLATE_MACROS,
    user_defined_filters=TEMPLATE_FILTERS,
    doc_md=DOC_MD,
    tags=["catsdogs", "ml", "scoring", SETTINGS.runner],
) as dag:
    make_task(SCORE_STAGE, SETTINGS)
