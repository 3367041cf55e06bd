"""The DAG folder parses cleanly in every mode (docker, local, kubernetes), is acyclic, every task retries and times out, the
Airflow 3 lint is clean and the DAG file pulls in no heavy library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.airflow.harness import REPO_ROOT

HEAVY = ("torch", "torchvision", "mlflow", "great_expectations", "bentoml", "sklearn", "matplotlib",
         "evidently", "pandas")


@pytest.mark.parametrize("runner", ["docker", "local", "kubernetes"])
def test_dagbag_parses_without_errors_or_cycles(parse_dag, runner: str) -> None:
    dag = parse_dag(runner)
    dag.check_cycle()
    assert dag.tags and runner in dag.tags
    assert "validate" in dag.doc_md and "promote" in dag.doc_md


@pytest.mark.parametrize("runner", ["docker", "local", "kubernetes"])
def test_every_project_dag_parses_in_every_mode(parse_dag, runner: str) -> None:
    from airflow.dag_processing.dagbag import DagBag

    parse_dag(runner)
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["catsdogs_batch_scoring", "catsdogs_monitoring",
                                   "catsdogs_rollback", "catsdogs_training"]
    for dag in bag.dags.values():
        dag.check_cycle()
        assert runner in dag.tags and dag.doc_md, dag.dag_id


@pytest.mark.parametrize("runner", ["docker", "local", "kubernetes"])
@pytest.mark.parametrize("dag_id", ["catsdogs_training", "catsdogs_batch_scoring"])
def test_every_task_retries_with_backoff_and_has_a_timeout(parse_dag, runner: str,
                                                           dag_id: str) -> None:
    for task in parse_dag(runner, dag_id=dag_id).tasks:
        assert task.retries >= 1, task.task_id
        assert task.retry_exponential_backoff > 0, task.task_id
        assert task.max_retry_delay is not None, task.task_id
        assert task.execution_timeout is not None and task.execution_timeout.total_seconds() > 0


def test_airflow3_lint_is_clean() -> None:
    targets = ["dags", "plugins", "include/catsdogs/orchestration/runners",
               "include/catsdogs/orchestration/monitoring.py", "tests/airflow"]
    result = subprocess.run([str(REPO_ROOT / ".venv/bin/ruff"), "check", "--select", "AIR3",
                             *targets], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dag_file", ["catsdogs_training.py", "catsdogs_monitoring.py",
                                      "catsdogs_rollback.py", "catsdogs_batch_scoring.py"])
@pytest.mark.parametrize("runner", ["docker", "local", "kubernetes"])
def test_dag_file_imports_nothing_heavy(runner: str, dag_file: str, tmp_path: Path) -> None:
    code = (
        "import runpy, sys, json\n"
        f"runpy.run_path({str(REPO_ROOT / 'dags' / dag_file)!r})\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
        "print(json.dumps('kubernetes' in sys.modules))\n"
    )
    # PYTHONPATH: this checkout's package, whichever checkout the venv's editable install names.
    env = {"CATSDOGS_RUNNER": runner, "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(REPO_ROOT / "include"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
           "AIRFLOW_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-2] == "[]"
    # The Kubernetes client is loaded only by the mode that needs it.
    assert json.loads(result.stdout.strip().splitlines()[-1]) is (runner == "kubernetes")
