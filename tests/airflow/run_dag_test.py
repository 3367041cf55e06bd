"""Run a DAG (default `catsdogs_training`) once with `dag.test()` in this process; print the task
states, outputs and the MLflow link of its MLflow task as JSON.

Started by the tests in a subprocess with a fresh AIRFLOW_HOME (Airflow reads its configuration
once per process). Usage: python run_dag_test.py DAGS_FOLDER CONF_JSON [MARK_SUCCESS_PATTERN]
[DAG_ID] (tasks matching the pattern are marked successful without running; "" for none).
"""

from __future__ import annotations

import json
import sys

from airflow.dag_processing.dagbag import DagBag

# DAG -> its task whose "MLflow run" link the result reports
LINKED = {"catsdogs_training": "train", "catsdogs_batch_scoring": "score"}


def main(dags_folder: str, conf: str, mark_success: str | None = None,
         dag_id: str = "catsdogs_training") -> int:
    bag = DagBag(dag_folder=dags_folder)
    if bag.import_errors:
        print(json.dumps({"import_errors": bag.import_errors}))
        return 1
    run = bag.dags[dag_id].test(run_conf=json.loads(conf),
                                mark_success_pattern=mark_success or None)
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    linked = LINKED[dag_id]
    task = tis[linked]
    result = {
        "state": str(run.state),
        "tasks": {task_id: str(ti.state) for task_id, ti in tis.items()},
        "outputs": {task_id: ti.xcom_pull(task_ids=task_id) for task_id, ti in tis.items()},
        "mlflow_run_id": (task.xcom_pull(task_ids=linked) or {}).get("run_id"),
        "mlflow_link": task.xcom_pull(task_ids=linked, key="_link_MlflowRunLink"),
    }
    print("DAG_TEST_RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
