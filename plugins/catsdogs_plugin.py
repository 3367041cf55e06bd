"""Airflow plugin: the "MLflow run" extra link on the tasks whose stage logs to MLflow (train,
promote, monitor, score): it opens the run their stage summary names."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from catsdogs.orchestration.runners.common import MlflowRunLink


class CatsDogsPlugin(AirflowPlugin):
    name = "catsdogs"
    operator_extra_links = [MlflowRunLink()]
