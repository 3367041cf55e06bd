"""Orchestration: the stage table (the one list of stages the CLI, the DAG and the tests read) and
the Airflow task factory. Only `airflow_tasks` imports Airflow."""
