"""Airflow plugin: the "MLflow run" extra link on the train task (opens the run it logged)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from catsdogs.orchestration.airflow_tasks import MlflowRunLink


class CatsDogsPlugin(AirflowPlugin):
    name = "catsdogs"
    operator_extra_links = [MlflowRunLink()]
