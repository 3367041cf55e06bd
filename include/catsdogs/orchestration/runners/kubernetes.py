"""The kubernetes runner (`CATSDOGS_RUNNER=kubernetes`): each stage of the stage table as one pod, started
by Airflow's own `KubernetesPodOperator` (provider `apache-airflow-providers-cncf-kubernetes`).

The pod runs the same rendered `catsdogs <stage> --set ...` command as the other modes, in the
worker image, with:

- the data on a PersistentVolumeClaim (ReadWriteMany when workers span nodes) mounted at /data,
  the serving chart's pictures claim (the pictures the service keeps for review) read-only at
  `PICTURES_MOUNT` (the paths the prediction log holds) when `CATSDOGS_K8S_PICTURES_CLAIM` names
  it, and a memory-backed /dev/shm for DataLoader workers;
- the stage table's CPU/memory requests (memory is also the limit);
- for GPU stages, when the run's `gpu` param is on: an `nvidia.com/gpu` limit, a GPU node selector
  and tolerations;
- for ingest: KAGGLE_USERNAME/KAGGLE_KEY from a Kubernetes Secret (`secretKeyRef`): the values
  never appear in the pod spec, in templates, logs or XCom; likewise, for every stage, the MLflow
  service account (MLFLOW_TRACKING_USERNAME/PASSWORD) from the Secret `CATSDOGS_K8S_MLFLOW_SECRET`;
- the stage's JSON summary written to /airflow/xcom/return.json, which the provider's XCom sidecar
  reads back: it becomes the task's `return_value` and feeds the "MLflow run" link.

Imported by `catsdogs.orchestration.runners.make_task` only in kubernetes mode, so the other
modes never load the Kubernetes client. Settings come from the environment (`kubernetes_settings`,
`catsdogs.settings.KubernetesSettings`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowSkipException
from kubernetes.client import models as k8s

from catsdogs.orchestration.runners.common import (
    MLFLOW_CREDENTIALS,
    StageMixin,
    airflow_context_env,
    command_template,
    deploy_environment,
    final_exit_codes,
    stage_environment,
)
from catsdogs.orchestration.stage_table import Stage
from catsdogs.settings import PICTURES_MOUNT, KubernetesSettings, RunnerSettings, load

log = logging.getLogger(__name__)

# The file the provider's XCom sidecar reads (`PodDefaults.XCOM_MOUNT_PATH` + /return.json).
POD_SUMMARY_FILE = "/airflow/xcom/return.json"
GPU_RESOURCE = "nvidia.com/gpu"
# The worker image's user (docker/worker/Dockerfile): uid 50000, group 0 owns /data.
WORKER_UID = 50000
WORKER_GID = 0


@dataclass(frozen=True)
class PodSettings:
    """Where and how the stage pods run (`pod_settings` reads them)."""

    namespace: str = "catsdogs"
    image: str = "catsdogs-worker:latest"
    image_pull_policy: str = "IfNotPresent"
    data_claim: str = "catsdogs-data"
    pictures_claim: str = ""   # "": no pictures volume
    mlflow_uri: str = "http://mlflow:5000"
    kaggle_secret: str = "catsdogs-kaggle"
    mlflow_secret: str = "catsdogs-mlflow"
    service_account: str | None = None
    gpu_count: int = 1
    gpu_node_selector: Mapping[str, str] = field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: tuple[k8s.V1Toleration, ...] = field(default_factory=lambda: (
        k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule"),))
    shm_bytes: int = 2 * 1024**3
    startup_timeout_s: int = 900


def kubernetes_settings(settings: RunnerSettings | None = None) -> PodSettings:
    """The stage pods' settings: `catsdogs.settings.KubernetesSettings` (`CATSDOGS_K8S_*`) with
    the worker image, MLflow URI and /dev/shm size of `settings` (default: read now). Raises
    `catsdogs.settings.SettingsError` (a ValueError) naming every bad variable."""
    settings = settings or load(RunnerSettings)
    kube = load(KubernetesSettings)
    return PodSettings(
        namespace=kube.k8s_namespace, image=settings.worker_image,
        image_pull_policy=kube.k8s_image_pull_policy, data_claim=kube.k8s_data_claim,
        pictures_claim=kube.k8s_pictures_claim,
        mlflow_uri=settings.worker_mlflow_uri, kaggle_secret=kube.k8s_kaggle_secret,
        mlflow_secret=kube.k8s_mlflow_secret,
        service_account=kube.k8s_service_account or None, gpu_count=kube.k8s_gpus,
        gpu_node_selector=kube.k8s_gpu_node_selector,
        gpu_tolerations=tuple(k8s.V1Toleration(**_snake(t)) for t in kube.k8s_gpu_tolerations),
        shm_bytes=settings.shm_bytes, startup_timeout_s=kube.k8s_startup_timeout_s)


def _restricted_container() -> k8s.V1SecurityContext:
    """Pod Security "restricted": no privilege escalation, no capabilities."""
    return k8s.V1SecurityContext(allow_privilege_escalation=False,
                                 capabilities=k8s.V1Capabilities(drop=["ALL"]))


def _secret_env(name: str, secret: str, key: str) -> k8s.V1EnvVar:
    """An environment variable read by the kubelet from a Secret, so the value is never in the
    pod spec (optional: the `dir:` and `archive:` sources need no Kaggle account, and ingest says
    so when `kaggle:` lacks one; an MLflow server without login needs no account)."""
    return k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(
        secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key, optional=True)))


def _pictures_volume(settings: PodSettings) -> list[k8s.V1Volume]:
    """The pictures claim as a read-only volume (none when `pictures_claim` is "")."""
    if not settings.pictures_claim:
        return []
    return [k8s.V1Volume(name="pictures", persistent_volume_claim=(
        k8s.V1PersistentVolumeClaimVolumeSource(claim_name=settings.pictures_claim,
                                                read_only=True)))]


class StageKubernetesPodOperator(StageMixin, KubernetesPodOperator):
    """Kubernetes mode: the stage as a pod of the worker image (see the module docstring). A gate
    refusal (exit code 3; any failure of a non-retryable stage) fails the task at once, without
    retries; failures to schedule or start the pod retry."""

    def __init__(self, *, stage: Stage, settings: PodSettings, **kwargs: Any) -> None:
        # OMP_NUM_THREADS: torch would otherwise size its thread pool by the node's cores, not by
        # what the pod asked for.
        env = {**stage_environment(POD_SUMMARY_FILE, settings.mlflow_uri),
               "OMP_NUM_THREADS": str(cpu_threads(stage.cpu))}
        if stage.needs_docker:
            # the rollout stages: the Kubernetes target (helm upgrade) and its CATSDOGS_K8S_*
            # settings; without a kube context in the pod the rollout says it was skipped
            env = {"CATSDOGS_DEPLOY_TARGET": "kubernetes", **env, **deploy_environment()}
        env_vars = [k8s.V1EnvVar(name=name, value=value) for name, value in env.items()]
        # every stage logs in to MLflow with the service account (MLflow's client reads these)
        env_vars += [_secret_env(MLFLOW_CREDENTIALS[0], settings.mlflow_secret, "username"),
                     _secret_env(MLFLOW_CREDENTIALS[1], settings.mlflow_secret, "password")]
        if stage.needs_kaggle:
            env_vars += [_secret_env("KAGGLE_USERNAME", settings.kaggle_secret, "username"),
                         _secret_env("KAGGLE_KEY", settings.kaggle_secret, "key")]
        super().__init__(
            namespace=settings.namespace,
            image=settings.image,
            image_pull_policy=settings.image_pull_policy,
            name=f"catsdogs-{stage.name}",
            labels={"app.kubernetes.io/name": "catsdogs", "app.kubernetes.io/component": stage.name},
            # The rendered command line is shell-quoted (as in the other modes): `sh -c` splits it
            # and `exec` leaves the stage as the container's main process.
            cmds=["/bin/sh", "-c"],
            arguments=["exec " + command_template(stage)],
            env_vars=env_vars,
            volumes=[
                k8s.V1Volume(name="data", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=settings.data_claim)),
                k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(
                    medium="Memory", size_limit=str(settings.shm_bytes))),
                *_pictures_volume(settings),
            ],
            volume_mounts=[k8s.V1VolumeMount(name="data", mount_path="/data"),
                           k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
                           *([k8s.V1VolumeMount(name="pictures", mount_path=PICTURES_MOUNT,
                                                read_only=True)]
                             if settings.pictures_claim else [])],
            container_resources=stage_resources(stage.cpu, stage.memory, gpus=0),
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=WORKER_UID, run_as_group=WORKER_GID,
                fs_group=WORKER_GID, fs_group_change_policy="OnRootMismatch",
                seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
            container_security_context=_restricted_container(),
            xcom_sidecar_container_security_context=_restricted_container(),
            service_account_name=settings.service_account,
            automount_service_account_token=False,  # the stages never call the Kubernetes API
            do_xcom_push=True,
            skip_on_exit_code=final_exit_codes(stage),
            on_finish_action="delete_succeeded_pod",  # a failed pod stays for `kubectl logs`
            log_events_on_failure=True,
            startup_timeout_seconds=settings.startup_timeout_s,
            **kwargs,
        )
        self.stage_name = stage.name
        self.needs_gpu = stage.needs_gpu
        self.needs_kaggle = stage.needs_kaggle
        self.stage_cpu, self.stage_memory = stage.cpu, stage.memory
        self.gpu_count = settings.gpu_count
        self.gpu_node_selector = dict(settings.gpu_node_selector)
        self.gpu_tolerations = list(settings.gpu_tolerations)
        self._link_mlflow(stage)

    def uses_gpu(self, params: Mapping[str, Any]) -> bool:
        """Whether this run's pod asks for GPUs: the stage needs them and the run's `gpu` is on."""
        return self.needs_gpu and bool(params.get("gpu"))

    def prepare_run(self, context: Any) -> None:
        """What depends on the run, fixed before the provider builds the pod: GPU scheduling
        (limit, node selector, tolerations; see `uses_gpu`) and the DAG run's ids and page in the
        environment. `execute` calls it; then `build_pod_request_obj(context)` gives the pod."""
        gpu = self.uses_gpu(context["params"])
        self.container_resources = stage_resources(self.stage_cpu, self.stage_memory,
                                                   gpus=self.gpu_count if gpu else 0)
        self.node_selector = dict(self.gpu_node_selector) if gpu else {}
        self.tolerations = list(self.gpu_tolerations) if gpu else []
        run_env = airflow_context_env(context)
        self.env_vars = [var for var in self.env_vars if var.name not in run_env] + [
            k8s.V1EnvVar(name=name, value=value) for name, value in run_env.items()]

    def execute(self, context: Any) -> Any:
        self.prepare_run(context)
        return self._summary_of(super().execute, context)

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        """Deferrable mode: the pod finished while the task was deferred; same ending as execute."""
        return self._summary_of(super().trigger_reentry, context, event)

    def _summary_of(self, run: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
        """The provider's run, its XCom result as the stage summary; the provider's skip for a
        final exit code (`skip_on_exit_code`) becomes a failure without retries."""
        try:
            summary = run(*args)
        except AirflowSkipException as exc:
            raise self._final(exc) from None
        return self._finish(summary)


def stage_resources(cpu: str, memory: str, gpus: int) -> k8s.V1ResourceRequirements:
    """Requests `cpu` and `memory` (Kubernetes quantities, e.g. "2", "4Gi"); limits `memory`, and
    `gpus` × nvidia.com/gpu when gpus > 0."""
    limits = {"memory": memory, **({GPU_RESOURCE: str(gpus)} if gpus else {})}
    return k8s.V1ResourceRequirements(requests={"cpu": cpu, "memory": memory}, limits=limits)


def cpu_threads(cpu: str) -> int:
    """Whole threads for a Kubernetes CPU quantity ("2" -> 2, "1.5" -> 2, "500m" -> 1)."""
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, math.ceil(cores))


def _snake(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A toleration written as in a manifest (`tolerationSeconds`) as the client's keyword
    arguments (`toleration_seconds`)."""
    return {"".join("_" + c.lower() if c.isupper() else c for c in key): value
            for key, value in obj.items()}
