"""Turn the stage table (`catsdogs.orchestration.stage_table.PIPELINE`) into Airflow tasks, in any
of three modes.

- docker (default): one `DockerOperator` per stage running the worker image on the shared named
  volume mounted at /data, on the compose network, GPUs requested for GPU stages when the run's
  `gpu` param is on. Each container is labelled with its task instance; a later try first removes
  the containers an earlier try left behind (its Celery worker was stopped or lost), so a killed
  attempt never keeps running beside its retry.
- local: the same `catsdogs <stage>` command as a Bash task in the Airflow environment (hosts
  without Docker, fast tests).
- kubernetes: one `KubernetesPodOperator` pod per stage: the worker image, a ReadWriteMany
  PersistentVolumeClaim at /data, the stage table's CPU/memory requests, a GPU limit, node
  selector and tolerations for GPU stages when the run's `gpu` param is on, Kaggle credentials
  from a Kubernetes Secret (`secretKeyRef`, never a value).

Every task goes to its stage's Celery queue (`Stage.queue`: `gpu` for GPU stages, else
`default`); executors without queues (LocalExecutor in `make demo`) ignore it.

Every task runs the same command string: `catsdogs <stage> --set section.key=value ...`, rendered
from the run's params. The stage writes its summary as JSON ($CATSDOGS_SUMMARY_FILE); the task reads
it back (local: a temporary file; docker: copied out of the finished container; kubernetes: the
provider's XCom sidecar reads /airflow/xcom/return.json) and returns it, so
it lands in XCom as `return_value` (the train stage's run id, promote's decision...). The train
and promote tasks carry the "MLflow run" extra link, built from that summary.
Only imported by `dags/` and `plugins/`; nothing heavy is imported here.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

from airflow.providers.docker.exceptions import DockerContainerFailedSkipException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Asset, BaseHook, BaseOperator, BaseOperatorLink, Param
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowNotFoundException,
    AirflowSkipException,
)
from docker.types import DeviceRequest, Mount

from catsdogs.config import ModelParams, Params, PromoteParams, load_params
from catsdogs.deployment.targets import SERVICE_ENV_PREFIX
from catsdogs.errors import GateFailed
from catsdogs.orchestration.airflow_client import dag_run_url
from catsdogs.orchestration.stage_table import Stage
from catsdogs.summary import SUMMARY_FILE_ENV
from catsdogs.tracking import run_url, ui_base_url

log = logging.getLogger(__name__)

RUNNER_ENV = "CATSDOGS_RUNNER"
RUNNERS = ("docker", "local", "kubernetes")
KAGGLE_CONN_ID = os.environ.get("CATSDOGS_KAGGLE_CONN_ID", "kaggle_default")
DEFAULT_SCHEDULE = "0 2 * * *"
PROJECT_DIR = Path(__file__).resolve().parents[3]
# Where the stage writes its JSON summary inside the worker container (copied out afterwards).
CONTAINER_SUMMARY_FILE = "/tmp/catsdogs-summary.json"
# Docker labels naming the task instance a stage container belongs to (see stage_labels()).
LABEL_PREFIX = "io.catsdogs."

# DAG param -> the params.yaml key it overrides (the UI form shows these; see dag_params()).
PARAM_KEYS: dict[str, str] = {
    "epochs": "train.epochs",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "arch": "model.arch",
    "data_source": "data.source",
    "promote_metric": "promote.metric",
    "promote_min_delta": "promote.min_delta",
}


# Every task: retries with exponential backoff (gate refusals are final, see _final_exit_codes).
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "catsdogs",
    "retries": int(os.environ.get("CATSDOGS_TASK_RETRIES", "2")),
    "retry_delay": timedelta(seconds=int(os.environ.get("CATSDOGS_RETRY_DELAY_S", "60"))),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
}


def runner() -> str:
    """`docker`, `local` or `kubernetes`, from $CATSDOGS_RUNNER (default docker); ValueError for
    anything else."""
    chosen = os.environ.get(RUNNER_ENV, "docker").strip().lower()
    if chosen not in RUNNERS:
        raise ValueError(f"{RUNNER_ENV}={chosen!r}: expected one of {', '.join(RUNNERS)}")
    return chosen


def schedule() -> str:
    """Cron: $CATSDOGS_SCHEDULE, else Variable `catsdogs_schedule` (also read from
    $AIRFLOW_VAR_CATSDOGS_SCHEDULE), else nightly at 02:00 UTC."""
    if os.environ.get("CATSDOGS_SCHEDULE"):
        return os.environ["CATSDOGS_SCHEDULE"]
    from airflow.sdk import Variable

    try:
        return Variable.get("catsdogs_schedule", default=None) or DEFAULT_SCHEDULE
    except Exception as exc:  # no metadata DB / API reachable while parsing: keep the default
        log.warning("Variable catsdogs_schedule unreadable (%s); using %s", exc, DEFAULT_SCHEDULE)
        return DEFAULT_SCHEDULE


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def default_params() -> Params:
    """The project's params.yaml (what a stage run without overrides would use)."""
    path = Path(os.environ.get("CATSDOGS_PARAMS", PROJECT_DIR / "params.yaml"))
    return load_params(path) if path.is_file() else Params()


def dag_params() -> dict[str, Param]:
    """The trigger form: typed, bounded params whose defaults come from params.yaml."""
    p = default_params()
    archs = list(get_args(ModelParams.model_fields["arch"].annotation))
    metrics = list(get_args(PromoteParams.model_fields["metric"].annotation))
    return {
        "epochs": Param(p.train.epochs, type="integer", minimum=1, maximum=200,
                        title="Epochs", description="Training epochs."),
        "lr": Param(p.train.lr, type="number", exclusiveMinimum=0, exclusiveMaximum=1,
                    title="Learning rate", description="Optimiser learning rate, in (0, 1)."),
        "batch_size": Param(p.train.batch_size, type="integer", minimum=1, maximum=1024,
                            title="Batch size"),
        "arch": Param(p.model.arch, type="string", enum=archs,
                      title="Architecture"),
        "data_source": Param(p.data.source, type="string", minLength=5,
                             pattern=r"^(kaggle|dir|archive):\S.*$", title="Data source",
                             description="kaggle:OWNER/DATASET, dir:PATH (class folders) or "
                                         "archive:PATH (zip/tar), as seen by the stage."),
        "promote_metric": Param(p.promote.metric, type="string", enum=metrics,
                                title="Promotion metric"),
        "promote_min_delta": Param(p.promote.min_delta, type="number", minimum=0, maximum=1,
                                   title="Promotion margin",
                                   description="The challenger must beat the champion by this."),
        "gpu": Param(_env_flag("CATSDOGS_GPU"), type="boolean", title="Use GPUs",
                     description="Docker mode: all the host's GPUs for train and promote; "
                                 "kubernetes mode: their nvidia.com/gpu limit, GPU node "
                                 "selector and tolerations."),
        "overrides": Param([], type="array", items={"type": "string",
                                                    "pattern": r"^[a-z_]+\.[a-z_]+=.*$"},
                           title="More overrides",
                           description="Extra section.key=value settings (e.g. "
                                       "transform.image_size=128)."),
    }


def overrides_from_params(params: Mapping[str, Any]) -> list[str]:
    """`section.key=value` strings from a run's params (values JSON-encoded: YAML reads them)."""
    items = [f"{key}={json.dumps(params[name])}" for name, key in PARAM_KEYS.items()
             if params.get(name) is not None]
    return items + [str(item) for item in params.get("overrides") or ()]


# Stage -> (DAG param, CLI option) pairs: a set param becomes the option (rollback's `--to`).
STAGE_OPTIONS: dict[str, tuple[tuple[str, str], ...]] = {"rollback": (("rollback_to", "--to"),)}


def command_template(stage: Stage) -> str:
    """The stage's command as one Jinja template; rendered, it is a shell-quoted command line."""
    base = " ".join(shlex.quote(part) for part in stage.command())
    for param, option in STAGE_OPTIONS.get(stage.name, ()):
        base += (f"{{% if params.get({param!r}) %}} {option} "
                 f"{{{{ params[{param!r}] | string | shquote }}}}{{% endif %}}")
    return (base + "{% for item in catsdogs_overrides(params) %}"
                   " --set {{ item | shquote }}{% endfor %}")


def rollback_params() -> dict[str, Param]:
    """The catsdogs_rollback DAG's trigger form."""
    return {"rollback_to": Param("", type="string", pattern=r"^(v?[0-9]+)?$",
                                 title="Roll back to version",
                                 description="Registered version to bring back as @champion and "
                                             "deploy; empty: the previous champion.")}


TEMPLATE_MACROS: dict[str, Any] = {"catsdogs_overrides": overrides_from_params}
TEMPLATE_FILTERS: dict[str, Any] = {"shquote": shlex.quote}


def kaggle_credentials() -> dict[str, str]:
    """KAGGLE_USERNAME/KAGGLE_KEY from the Airflow connection, else the environment; masked."""
    found: dict[str, str] = {}
    try:
        conn = BaseHook.get_connection(KAGGLE_CONN_ID)
        if conn.login and conn.password:
            found = {"KAGGLE_USERNAME": conn.login, "KAGGLE_KEY": conn.password}
    except AirflowNotFoundException:
        pass
    if not found and os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        found = {"KAGGLE_USERNAME": os.environ["KAGGLE_USERNAME"],
                 "KAGGLE_KEY": os.environ["KAGGLE_KEY"]}
    if found:
        from airflow.sdk.log import mask_secret

        mask_secret(found["KAGGLE_KEY"])
    return found


def private_values(names: tuple[str, ...]) -> dict[str, str]:
    """The Airflow environment's values of `names` (the set ones), masked in task logs."""
    found = {name: os.environ[name] for name in names if os.environ.get(name)}
    if found:
        from airflow.sdk.log import mask_secret

        for value in found.values():
            mask_secret(value)
    return found


class MlflowRunLink(BaseOperatorLink):
    """'MLflow run' button on the tasks that log to MLflow (train, promote): opens the run that
    the task's stage summary names (`run_id`, `experiment_id`) in the MLflow UI
    ($CATSDOGS_MLFLOW_UI_URL, else the tracking server). Airflow calls `get_link` in the worker when the
    task ends and stores the URL; the UI reads it back."""

    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        summary = getattr(operator, "stage_summary", None) or {}
        base, run_id = ui_base_url(), summary.get("run_id")
        if not (base and run_id and summary.get("experiment_id")):
            return ""
        return run_url(base, summary["experiment_id"], run_id)


def airflow_context_env(context: Any) -> dict[str, str]:
    """What a stage needs to link its MLflow run back to this task's DAG run: the ids, and the
    DAG run's page in the Airflow UI (base URL from [api] base_url)."""
    dag_id, run_id = context["dag"].dag_id, context["run_id"]
    base = os.environ.get("AIRFLOW__API__BASE_URL", "http://localhost:8080")
    return {"AIRFLOW_CTX_DAG_ID": dag_id, "AIRFLOW_CTX_DAG_RUN_ID": run_id,
            "CATSDOGS_AIRFLOW_RUN_URL": dag_run_url(base, dag_id, run_id)}


def _final_exit_codes(stage: Stage) -> range | tuple[int, ...]:
    """Exit codes that fail the task at once: a gate refusal always; any for a non-retryable stage."""
    return range(1, 256) if not stage.retryable else (GateFailed.exit_code,)


class _StageMixin:
    """Shared by the docker and local operators (the kubernetes one in `kubernetes_pods` too):
    final failures skip retries; the stage's JSON summary becomes the
    task's return value (XCom `return_value`) and feeds the MLflow link."""

    stage_name: str
    stage_summary: dict[str, Any] | None = None

    def _link_mlflow(self, stage: Stage) -> None:
        """Give the task the "MLflow run" button when its stage logs to MLflow (set before the
        DAG is serialised, so the UI and the REST API see it)."""
        if stage.logs_mlflow:
            self.operator_extra_links = (MlflowRunLink(),)

    def _finish(self, summary: Any) -> dict[str, Any] | None:
        if not isinstance(summary, dict):
            log.warning("catsdogs %s wrote no summary document", self.stage_name)
            return None
        self.stage_summary = summary
        log.info("catsdogs %s %s: %s", self.stage_name, summary.get("status"),
                 summary.get("message", ""))
        return summary

    def _final(self, exc: Exception) -> AirflowFailException:
        return AirflowFailException(
            f"catsdogs {self.stage_name} refused the run ({exc}); this failure is final, "
            "retrying would not change it. Fix the data or params and trigger a new run.")


class StageBashOperator(_StageMixin, BashOperator):
    """Local mode: `catsdogs <stage>` in the Airflow environment (the venv's bin on PATH)."""

    def __init__(self, *, stage: Stage, **kwargs: Any) -> None:
        cwd = str(PROJECT_DIR) if (PROJECT_DIR / "params.yaml").is_file() else None
        super().__init__(bash_command=command_template(stage), append_env=True, cwd=cwd,
                         skip_on_exit_code=_final_exit_codes(stage), **kwargs)
        self.stage_name = stage.name
        self.needs_kaggle = stage.needs_kaggle
        self.summary_file = ""
        self._link_mlflow(stage)

    def get_env(self, context: Any) -> dict:
        """Add the venv's bin to PATH, the summary file, the DAG run's ids and (ingest only)
        Kaggle credentials, after rendering."""
        env = super().get_env(context)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env[SUMMARY_FILE_ENV] = self.summary_file
        env.update(airflow_context_env(context))
        if self.needs_kaggle:
            env.update(kaggle_credentials())
        return env

    def execute(self, context: Any) -> Any:
        with tempfile.TemporaryDirectory(prefix="catsdogs-task-") as folder:
            self.summary_file = str(Path(folder, "summary.json"))
            try:
                super().execute(context)
            except AirflowSkipException as exc:
                raise self._final(exc) from None
            try:
                summary = json.loads(Path(self.summary_file).read_text())
            except (OSError, ValueError):
                summary = None
        return self._finish(summary)


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


class StageDockerOperator(_StageMixin, DockerOperator):
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
                         skip_on_exit_code=_final_exit_codes(stage), retrieve_output=True,
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
        self._private_environment = {**self._private_environment,
                                     **private_values(self.private_env)}
        try:
            summary = super().execute(context)
        except DockerContainerFailedSkipException as exc:
            raise self._final(exc) from None
        return self._finish(summary)


def worker_mlflow_uri() -> str:
    """The MLflow server as the stage containers/pods reach it: $CATSDOGS_WORKER_MLFLOW_URI, else
    $MLFLOW_TRACKING_URI, else http://mlflow:5000."""
    return (os.environ.get("CATSDOGS_WORKER_MLFLOW_URI")
            or os.environ.get("MLFLOW_TRACKING_URI") or "http://mlflow:5000")


def worker_image() -> str:
    """The stage runner image: $CATSDOGS_WORKER_IMAGE, else catsdogs-worker:latest."""
    return os.environ.get("CATSDOGS_WORKER_IMAGE", "catsdogs-worker:latest")


def shm_bytes() -> int:
    """Shared memory for the stage's PyTorch data loading: $CATSDOGS_SHM_BYTES, else 2 GiB."""
    return int(os.environ.get("CATSDOGS_SHM_BYTES", str(2 * 1024**3)))


def stage_environment(summary_file: str) -> dict[str, str]:
    """What every stage container or pod gets: the data dir, the MLflow server as workers reach
    it, unbuffered output, and where to write its JSON summary."""
    return {"CATSDOGS_DATA_DIR": "/data", "MLFLOW_TRACKING_URI": worker_mlflow_uri(),
            "PYTHONUNBUFFERED": "1", SUMMARY_FILE_ENV: summary_file}


def docker_settings() -> dict[str, Any]:
    """DockerOperator settings shared by every stage (all from the environment)."""
    return {
        "image": worker_image(),
        "docker_url": os.environ.get("DOCKER_HOST", "unix://var/run/docker.sock"),
        "network_mode": os.environ.get("CATSDOGS_DOCKER_NETWORK", "catsdogs"),
        "mounts": [Mount(target="/data", type="volume",
                         source=os.environ.get("CATSDOGS_DATA_VOLUME", "catsdogs-data"))],
        "mount_tmp_dir": False,
        "auto_remove": "success",
        "shm_size": shm_bytes(),
        "environment": stage_environment(CONTAINER_SUMMARY_FILE),
    }


# What a rollout stage (deploy, rollback) gets from the Airflow environment: the target and
# where it lives (catsdogs.deployment.targets).
DEPLOY_ENV_PREFIXES = ("CATSDOGS_DEPLOY_", "CATSDOGS_COMPOSE_", "CATSDOGS_KUBE_",
                       "CATSDOGS_SERVICE_", "CATSDOGS_MODEL_IMAGE", "CATSDOGS_PROXY_")
DEPLOY_ENV_NAMES = ("CATSDOGS_DATA_VOLUME", "CATSDOGS_DOCKER_NETWORK")


def deploy_environment() -> dict[str, str]:
    """The deployment settings of this Airflow environment, for the rollout stages (without
    the service's own settings, see `service_environment`)."""
    return {k: v for k, v in os.environ.items()
            if (k.startswith(DEPLOY_ENV_PREFIXES) or k in DEPLOY_ENV_NAMES)
            and not k.startswith(SERVICE_ENV_PREFIX)}


def service_environment() -> dict[str, str]:
    """CATSDOGS_SERVICE_ENV_<NAME> settings: what the compose target gives each Bento container
    as <NAME>."""
    return {k: v for k, v in os.environ.items() if k.startswith(SERVICE_ENV_PREFIX)}


def docker_engine_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Docker mode, rollout stages only: the engine's socket mounted, the socket's group
    ($CATSDOGS_DOCKER_GID) as the container's group, the deployment settings in its environment.
    The stage starts the service's containers; the training stages never see the socket."""
    socket = os.environ.get("CATSDOGS_DOCKER_SOCKET", "/var/run/docker.sock")
    mounts = [*settings.get("mounts", []),
              Mount(target="/var/run/docker.sock", source=socket, type="bind")]
    extra: dict[str, Any] = {"mounts": mounts, "environment": {
        **settings.get("environment", {}), **deploy_environment()}}
    extra["private_environment"] = {**settings.get("private_environment", {}),
                                    **service_environment()}
    gid = os.environ.get("CATSDOGS_DOCKER_GID", "").strip()
    if gid:
        extra["user"] = f"50000:{gid}"
    return extra


def make_task(stage: Stage, mode: str) -> BaseOperator:
    """One task for one stage, on the stage's Celery queue; retries with exponential backoff, a
    timeout, its assets, and the MLflow link where the stage logs to MLflow."""
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
        from catsdogs.orchestration.kubernetes_pods import (
            StageKubernetesPodOperator,
            kubernetes_settings,
        )

        return StageKubernetesPodOperator(**common, settings=kubernetes_settings())
    return StageDockerOperator(**common, **docker_settings())
