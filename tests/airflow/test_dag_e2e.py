"""End to end with `dag.test()`: local mode, a real MLflow server; the training DAG on the tiny
generated data set, the batch scoring DAG on a few real photos with a registered tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.airflow.harness import (
    airflow_env,
    migrate,
    register_tiny,
    run_dag_test,
    scoring_inbox,
)

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


@pytest.mark.services
def test_batch_scoring_dag_scores_a_folder_and_links_its_report(
        tmp_path: Path, mlflow_server: str, sample_dir: Path) -> None:
    from mlflow import MlflowClient

    name = "CatsDogsScoringDag"
    env = airflow_env(tmp_path / "home", tmp_path / "data", mlflow_server)
    version = register_tiny(mlflow_server, name, env)
    photos = scoring_inbox(sample_dir, tmp_path / "inbox")
    migrate(env)
    result, output = run_dag_test(env, {"images": str(photos), "model": f"models:/{name}@champion"},
                                  dag_id="catsdogs_batch_scoring")
    assert result["tasks"] == {"score": "success"} and result["state"] == "success", output
    summary = result["outputs"]["score"]            # the stage's summary is the task's XCom
    assert (summary["count"], summary["scored"], summary["rejected"]) == (7, 6, 1)
    assert summary["version"] == version and sum(summary["labels"].values()) == 6
    report = Path(summary["report"])
    assert report.parent == tmp_path / "data" / "reports" / "scoring"
    rows = pd.read_csv(report / "scores.csv")
    assert sorted(rows["path"]) == sorted(p.relative_to(photos).as_posix()
                                          for p in photos.rglob("*") if p.is_file())
    assert json.loads((report / "summary.json").read_text())["run_id"] == summary["run_id"]
    # the task's "MLflow run" button opens the scoring run, whose artifacts are the report
    client = MlflowClient(tracking_uri=mlflow_server)
    assert result["mlflow_run_id"] == summary["run_id"]
    assert result["mlflow_link"] == (f"{mlflow_server}/#/experiments/{summary['experiment_id']}"
                                     f"/runs/{summary['run_id']}?workflowType=machine_learning")
    assert {a.path for a in client.list_artifacts(summary["run_id"], "scoring")} == {
        "scoring/scores.csv", "scoring/scores.parquet", "scoring/summary.json"}
