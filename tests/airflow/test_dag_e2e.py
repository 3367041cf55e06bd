"""End to end with `dag.test()`: local mode, a real MLflow server, the tiny generated data set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.airflow.harness import airflow_env, migrate, run_dag_test

STAGES = ("ingest", "validate", "prepare", "transform", "train", "promote", "deploy")


@pytest.mark.services
def test_dag_test_runs_every_stage_and_crowns_a_champion(
        tmp_path: Path, mlflow_server: str, tiny_conf: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    env = airflow_env(tmp_path / "home", tmp_path / "data", mlflow_server)
    migrate(env)
    result, output = run_dag_test(env, tiny_conf)
    assert result["tasks"] == dict.fromkeys(STAGES, "success"), output
    assert result["state"] == "success"

    client = MlflowClient(tracking_uri=mlflow_server)
    champion = client.get_model_version_by_alias("CatsDogsCNN", "champion")
    assert champion.version
    # The run train pushed is the one behind a registered version (trained now, or reused by
    # train's idempotency when the services test trained the same data and params first).
    assert client.search_model_versions(f"run_id='{result['mlflow_run_id']}'")
    experiment = client.get_run(result["mlflow_run_id"]).info.experiment_id
    assert result["mlflow_link"] == (f"{mlflow_server}/#/experiments/{experiment}/runs/"
                                     f"{result['mlflow_run_id']}?workflowType=machine_learning")
    assert (tmp_path / "data" / "transformed" / "train" / "cat").is_dir()
