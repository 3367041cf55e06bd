"""Orchestration: the stage table (the one list of stages the CLI, the DAGs and the tests read),
the Airflow task factory with one module per runner (`runners/`), the drift → retraining link
(`monitoring`) and the REST API v2 client (`airflow_client`). Only `runners/` and `monitoring`
import Airflow."""
