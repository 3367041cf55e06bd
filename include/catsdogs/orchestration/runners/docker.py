"""The docker runner (`CATSDOGS_RUNNER=docker`, the default): one `DockerOperator` per stage
running the worker image on the shared named volume mounted at /data, on the compose network,
GPUs requested for GPU stages when the run's `gpu` param is on.

Each container is labelled with its task instance; a later try first removes the containers an
earlier try left behind (its Celery worker was stopped or lost), so a killed attempt never keeps
running beside its retry. The stage's JSON summary is copied out of the finished container and
returned (XCom `return_value`). The rollout stages (deploy, rollback) also get the engine's
socket and the deployment settings (`docker_engine_settings`); the training stages never do.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from airflow.providers.docker.exceptions import DockerContainerFailedSkipException
from airflow.providers.docker.operators.docker import DockerOperator
from docker.types import DeviceRequest, Mount

from catsdogs.orchestration.runners.common import (
    MLFLOW_CREDENTIALS,
    StageMixin,
    airflow_context_env,
    command_template,
    deploy_environment,
    final_exit_codes,
    kaggle_credentials,
    stage_environment,
)
from catsdogs.orchestration.stage_table import Stage
from catsdogs.settings import (
    PICTURES_MOUNT,
    SERVICE_ENV_PREFIX,
    DockerSettings,
    RunnerSettings,
    load,
    prefixed,
)

log = logging.getLogger(__name__)

# Where the stage writes its JSON summary inside the worker container (copied out afterwards).
CONTAINER_SUMMARY_FILE = "/tmp/catsdogs-summary.json"
# Docker labels naming the task instance a stage container belongs to (see stage_labels()).
LABEL_PREFIX = "io.catsdogs."


def private_values(names: tuple[str, ...]) -> dict[str, str]:
    """The Airflow environment's values of `names` (the set ones), masked in task logs."""
    found = {name: os.environ[name] for name in names if os.environ.get(name)}
    if found:
        from airflow.sdk.log import mask_secret

        for value in found.values():
            mask_secret(value)
    return found


def stage_labels(dag_id: str, run_id: str, task_id: str, try_number: int) -> dict[str, str]:
    """Docker labels of a stage container: the task instance it runs (`io.catsdogs.dag_id`,
    `.run_id`, `.task_id`) and the try (`.try_number`)."""
    return {f"{LABEL_PREFIX}dag_id": dag_id, f"{LABEL_PREFIX}run_id": run_id,
            f"{LABEL_PREFIX}task_id": task_id, f"{LABEL_PREFIX}try_number": str(try_number)}


def task_instance_filter(labels: Mapping[str, str]) -> dict[str, list[str]]:
    """A Docker `filters` argument matching every try's containers of the task instance that
    `labels` names (the try number left out)."""
    return {"label": [f"{key}={value}" for key, value in labels.items()
                      if key != f"{LABEL_PREFIX}try_number"]}


class StageDockerOperator(StageMixin, DockerOperator):
    """Docker mode: the stage in the worker image, GPUs only when the stage and the run want them;
    the summary file is copied out of the finished container (`retrieve_output`).

    The container carries its task instance's labels (`stage_labels`). When the Celery worker that
    ran a try is stopped or lost, Airflow fails the try after the heartbeat timeout and retries it,
    possibly on another worker; the container the lost try started may still be running on the
    engine. The retry removes it first (`remove_stale_containers`): stages write atomically, so
    killing one mid-write leaves no half-written output, and two tries never write side by side.
    """

    pickling_library = json  # DockerOperator loads the retrieved file with this library

    def __init__(self, *, stage: Stage, **kwargs: Any) -> None:
        gpu = [DeviceRequest(count=-1, capabilities=[["gpu"]])] if stage.needs_gpu else None
        if stage.needs_docker:
            kwargs.update(docker_engine_settings(kwargs))
        super().__init__(command=command_template(stage), device_requests=gpu,
                         skip_on_exit_code=final_exit_codes(stage), retrieve_output=True,
                         retrieve_output_path=CONTAINER_SUMMARY_FILE, **kwargs)
        self.stage_name = stage.name
        self.needs_kaggle = stage.needs_kaggle
        self.private_env = stage.private_env
        self.gpu_device_requests = gpu
        self._link_mlflow(stage)

    def device_requests_for(self, params: Mapping[str, Any]) -> list[DeviceRequest] | None:
        """The GPU request this run gets: the stage's, when the run's `gpu` param is on."""
        return self.gpu_device_requests if params.get("gpu") else None

    def remove_stale_containers(self, labels: Mapping[str, str]) -> list[str]:
        """Force-remove the containers that earlier tries of this task instance left on the
        engine (running or exited); their ids. Call before starting this try's container."""
        stale = self.cli.containers(all=True, filters=task_instance_filter(labels))
        for container in stale:
            old_try = container.get("Labels", {}).get(f"{LABEL_PREFIX}try_number", "?")
            log.warning("catsdogs %s: removing container %s (%s) left by try %s of this task",
                        self.stage_name, container["Id"][:12], container.get("State", "?"), old_try)
            self.cli.remove_container(container["Id"], force=True)
        return [container["Id"] for container in stale]

    def execute(self, context: Any) -> Any:
        ti = context["ti"]
        self.labels = stage_labels(ti.dag_id, ti.run_id, ti.task_id, ti.try_number)
        self.remove_stale_containers(self.labels)
        self.device_requests = self.device_requests_for(context["params"])
        self.environment = {**self.environment, **airflow_context_env(context)}
        if self.needs_kaggle:
            # private_environment is not a template field: never rendered, stored or logged.
            self._private_environment = {**self._private_environment, **kaggle_credentials()}
        # the stage's own private variables and the MLflow service account (MLflow's client
        # reads MLFLOW_TRACKING_USERNAME/PASSWORD)
        self._private_environment = {**self._private_environment,
                                     **private_values((*self.private_env, *MLFLOW_CREDENTIALS))}
        try:
            summary = super().execute(context)
        except DockerContainerFailedSkipException as exc:
            raise self._final(exc) from None
        return self._finish(summary)


def docker_settings(settings: RunnerSettings) -> dict[str, Any]:
    """DockerOperator settings shared by every stage (`settings` and `DockerSettings`)."""
    docker = load(DockerSettings)
    return {
        "image": settings.worker_image,
        "docker_url": docker.docker_host,
        "network_mode": docker.docker_network,
        "mounts": [Mount(target="/data", type="volume", source=docker.data_volume),
                   Mount(target=PICTURES_MOUNT, type="volume", source=docker.pictures_volume,
                         read_only=True)],
        "mount_tmp_dir": False,
        "auto_remove": "success",
        "shm_size": settings.shm_bytes,
        "environment": stage_environment(CONTAINER_SUMMARY_FILE, settings.worker_mlflow_uri),
    }


def service_environment() -> dict[str, str]:
    """CATSDOGS_SERVICE_ENV_<NAME> settings: what the compose target gives each Bento container
    as <NAME>."""
    return {SERVICE_ENV_PREFIX + name: value
            for name, value in prefixed(SERVICE_ENV_PREFIX).items()}


def docker_engine_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Docker mode, rollout stages only: the engine's socket mounted, the socket's group
    ($CATSDOGS_DOCKER_GID) as the container's group, the deployment settings in its environment.
    The stage starts the service's containers; the training stages never see the socket."""
    docker = load(DockerSettings)
    mounts = [*settings.get("mounts", []),
              Mount(target="/var/run/docker.sock", source=docker.docker_socket, type="bind")]
    extra: dict[str, Any] = {"mounts": mounts, "environment": {
        **settings.get("environment", {}), **deploy_environment()}}
    extra["private_environment"] = {**settings.get("private_environment", {}),
                                    **service_environment()}
    if docker.docker_gid is not None:
        extra["user"] = f"50000:{docker.docker_gid}"
    return extra
