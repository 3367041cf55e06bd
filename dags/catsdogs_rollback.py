"""catsdogs_rollback: one step back. Moves @champion to the previous champion (or the version
given in the trigger form's `rollback_to`) and deploys it with the same rollout and post-deploy
check as the training DAG's `deploy` task (`catsdogs rollback [--to VERSION]`).

Wiring only: the task comes from the stage table's `rollback` entry and
`catsdogs.orchestration.runners.make_task` ($CATSDOGS_RUNNER=docker|local|kubernetes).
"""

from __future__ import annotations

from airflow.sdk import DAG

from catsdogs.orchestration.runners import make_task, runner
from catsdogs.orchestration.runners.common import (
    TEMPLATE_FILTERS,
    TEMPLATE_MACROS,
    default_args,
    rollback_params,
)
from catsdogs.orchestration.stage_table import ROLLBACK_DAG_ID, ROLLBACK_STAGE

SETTINGS = runner()

with DAG(
    dag_id=ROLLBACK_DAG_ID,
    description="Roll @champion back to the previous champion (or a given version) and deploy it",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,   # active from its first appearance: no toggle to find
    default_args={**default_args(SETTINGS), "retries": 0},
    params=rollback_params(),
    user_defined_macros=TEMPLATE_MACROS,
    user_defined_filters=TEMPLATE_FILTERS,
    doc_md=__doc__,
    tags=["catsdogs", "ml", "deployment", SETTINGS.runner],
) as dag:
    make_task(ROLLBACK_STAGE, SETTINGS)
