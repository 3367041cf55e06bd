"""Run `catsdogs_training` once with `dag.test()` in this process; print the task states as JSON.

Started by the tests in a subprocess with a fresh AIRFLOW_HOME (Airflow reads its configuration
once per process). Usage: python run_dag_test.py DAGS_FOLDER CONF_JSON [MARK_SUCCESS_PATTERN]
(tasks matching the pattern are marked successful without running).
"""

from __future__ import annotations

import json
import sys

from airflow.dag_processing.dagbag import DagBag


def main(dags_folder: str, conf: str, mark_success: str | None = None) -> int:
    bag = DagBag(dag_folder=dags_folder)
    if bag.import_errors:
        print(json.dumps({"import_errors": bag.import_errors}))
        return 1
    run = bag.dags["catsdogs_training"].test(run_conf=json.loads(conf),
                                             mark_success_pattern=mark_success)
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    train = tis["train"]
    result = {
        "state": str(run.state),
        "tasks": {task_id: str(ti.state) for task_id, ti in tis.items()},
        "outputs": {task_id: ti.xcom_pull(task_ids=task_id) for task_id, ti in tis.items()},
        "mlflow_run_id": (train.xcom_pull(task_ids="train") or {}).get("run_id"),
        "mlflow_link": train.xcom_pull(task_ids="train", key="_link_MlflowRunLink"),
    }
    print("DAG_TEST_RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
