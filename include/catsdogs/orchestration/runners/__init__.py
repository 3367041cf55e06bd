"""Turn the stage table (`catsdogs.orchestration.stage_table`) into Airflow tasks, with one of
three runners ($CATSDOGS_RUNNER), one module each:

- `docker` (default): one `DockerOperator` per stage running the worker image (`runners.docker`);
- `local`: the same `catsdogs <stage>` command as a Bash task in the Airflow environment, for
  hosts without Docker and fast tests (`runners.local`);
- `kubernetes`: one `KubernetesPodOperator` pod per stage (`runners.kubernetes`, imported only in
  this mode, so the others never load the Kubernetes client).

What they share (`runners.common`): every task runs the same command string,
`catsdogs <stage> --set section.key=value ...`, rendered from the run's params; the stage writes
its summary as JSON ($CATSDOGS_SUMMARY_FILE) and the task returns it, so it lands in XCom as
`return_value` (the train stage's run id, promote's decision...); the train and promote tasks
carry the "MLflow run" extra link, built from that summary. Every task goes to its stage's Celery
queue (`Stage.queue`: `gpu` for GPU stages, else `default`); executors without queues
(LocalExecutor in `make demo`) ignore it.

Only imported by `dags/` and `plugins/`; nothing heavy is imported here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, BaseOperator

from catsdogs.orchestration.runners.docker import StageDockerOperator, docker_settings
from catsdogs.orchestration.runners.local import StageBashOperator
from catsdogs.orchestration.stage_table import Stage
from catsdogs.settings import RunnerSettings, load


def runner() -> RunnerSettings:
    """The DAG's runner settings, read once while the DAG file is parsed (`.runner`: `docker`,
    `local` or `kubernetes`). Raises `catsdogs.settings.SettingsError` (a ValueError) naming
    every bad variable."""
    return load(RunnerSettings)


def make_task(stage: Stage, settings: RunnerSettings) -> BaseOperator:
    """One task for one stage in `settings.runner`'s mode, on the stage's Celery queue; retries
    with exponential backoff, a timeout, its assets, and the MLflow link where the stage logs to
    MLflow."""
    mode = settings.runner
    common: dict[str, Any] = {
        "task_id": stage.name,
        "stage": stage,
        "doc_md": f"**{stage.name}**: {stage.description}.",
        "execution_timeout": timedelta(minutes=stage.timeout_minutes),
        "outlets": [Asset(name=uri.split("://", 1)[1], uri=uri) for uri in stage.assets],
        "queue": stage.queue,
    }
    if mode == "local":
        return StageBashOperator(**common)
    if mode == "kubernetes":
        # Imported here: only this mode needs the Kubernetes provider and client.
        from catsdogs.orchestration.runners.kubernetes import (
            StageKubernetesPodOperator,
            kubernetes_settings,
        )

        return StageKubernetesPodOperator(**common, settings=kubernetes_settings(settings))
    return StageDockerOperator(**common, **docker_settings(settings))
