"""Runtime settings: where and how catsdogs runs, read from environment variables.

The line: `params.yaml` says what a run computes (typed params, `catsdogs.config`); the
environment says where it runs (this module). Each concern has one pydantic-settings class;
a variable is named `CATSDOGS_<FIELD NAME>` unless its field gives a standard name
(`MLFLOW_TRACKING_URI`, `DOCKER_HOST`, `BENTO_PORT`, Airflow's `AIRFLOW_CTX_*`):

| class | read by | documented in |
|---|---|---|
| `StageSettings` | every `catsdogs` stage (data dir, params file, summary file) | docs/training.md |
| `TrackingSettings` | `catsdogs.tracking` (MLflow server, UI links, the Airflow run) | docs/training.md |
| `RunnerSettings` | the DAGs and their runners (mode, image, retries, schedules) | docs/airflow.md |
| `DockerSettings` | the docker runner and the compose target | docs/airflow.md |
| `KubernetesSettings` | the kubernetes runner's stage pods | docs/kubernetes.md |
| `DeploySettings`, `LocalTargetSettings`, `ComposeTargetSettings`, `KubernetesTargetSettings` | `catsdogs.deployment.targets` | docs/rollout.md |
| `MonitoringSettings` | the monitor stage and the monitoring DAG | docs/monitoring.md |
| `ServingSettings` | the Bento service (`bentoservice/`) and its model import | docs/serving.md |
| `LoggingSettings` | `catsdogs.console` (every stage's and the service's log lines) | docs/logs.md |

`load(cls)` reads one class from the environment once: an operation loads what it needs at its
start and keeps the object. Every bad variable of the class is named in one `SettingsError` (a
`UserError`: the CLI prints it without a traceback); `check_all()` does the same for every class
(`catsdogs settings --check`). Renamed variables (`RENAMED`) are still read, with a warning.

The docs' tables are generated from the fields (`python -m catsdogs.settings --write-docs`
fills each `<!-- settings:ClassName -->` block); tests/foundation/test_settings.py keeps them in
sync and checks that no other module reads a `CATSDOGS_*` variable itself. Only pydantic is
imported here: the DAG files load these classes while Airflow parses them.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from catsdogs.errors import UserError

log = logging.getLogger(__name__)

PREFIX = "CATSDOGS_"
SERVICE_ENV_PREFIX = "CATSDOGS_SERVICE_ENV_"
"""`CATSDOGS_SERVICE_ENV_<NAME>=value` in the Airflow environment: `<NAME>=value` in each service
container a target starts (given to the rollout stage privately: it may hold a password)."""

# old name -> new name; the old one is read (with a warning) when the new one is unset
RENAMED: dict[str, str] = {
    "CATSDOGS_KUBE_RELEASE": "CATSDOGS_K8S_RELEASE",
    "CATSDOGS_KUBE_NAMESPACE": "CATSDOGS_K8S_RELEASE_NAMESPACE",
    "CATSDOGS_KUBE_CHART": "CATSDOGS_K8S_RELEASE_CHART",
    "CATSDOGS_KUBE_IMAGE_REPOSITORY": "CATSDOGS_K8S_RELEASE_IMAGE",
    "CATSDOGS_KUBE_IMAGE_TAG": "CATSDOGS_K8S_RELEASE_TAG",
    "CATSDOGS_KUBE_ENDPOINT": "CATSDOGS_K8S_RELEASE_ENDPOINT",
}

GIB = 1024**3
TOLERATION_FIELDS = {"key", "operator", "value", "effect", "tolerationSeconds"}
S = TypeVar("S", bound="Settings")


class SettingsError(UserError, ValueError):
    """Bad environment variables; the message names each with what it got and what it takes."""


class Settings(BaseSettings):
    """Base of every settings class: `CATSDOGS_` prefix, frozen, empty values mean the default,
    unknown variables ignored."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore",
                                      env_ignore_empty=True, case_sensitive=False,
                                      protected_namespaces=())
    DOCS: ClassVar[str] = ""  # the docs file with this class's table


def _env(name: str, default: Any = None, **kwargs: Any) -> Any:
    """A field read from the standard variable `name` (no CATSDOGS_ prefix)."""
    return Field(default, validation_alias=AliasChoices(name), **kwargs)


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _json(value: Any) -> Any:
    """A JSON variable's value parsed (a parse error becomes one of the reported problems)."""
    if isinstance(value, str):
        import json

        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not JSON ({exc})") from None
    return value


# --- every stage ---------------------------------------------------------------------------------
class StageSettings(Settings):
    """What every `catsdogs` stage reads besides its params."""

    DOCS: ClassVar[str] = "docs/training.md"

    data_dir: Path | None = Field(None, description="the data dir (`--data-dir` wins); unset: "
                                  "`./data`", json_schema_extra={"shown": "`./data`"})
    params: Path | None = Field(None, description="the params file every stage reads "
                                "(`--params` wins), the DAGs their trigger form's defaults "
                                "from, and the service its `review` keeping policy; unset: "
                                "`./params.yaml`",
                                json_schema_extra={"shown": "the checkout's params.yaml"})
    summary_file: Path | None = Field(None, description="where a stage also writes its JSON "
                                      "summary (the runners set it; `--summary-file` wins)")
    git_commit: str = Field("", description="the code version tagged on MLflow runs where "
                            "there is no .git (the images); unset: `git rev-parse HEAD`")
    training_choices: Path | None = Field(
        None, description="train's measured precision/layout per CPU",
        json_schema_extra={"shown": "`<data dir>/cache/training-choices.json`"})


# --- MLflow --------------------------------------------------------------------------------------
class TrackingSettings(Settings):
    """Where runs and models are logged, and the links printed and tagged."""

    DOCS: ClassVar[str] = "docs/training.md"

    mlflow_tracking_uri: str = _env(
        "MLFLOW_TRACKING_URI", "", description="the MLflow server; unset: the embedded store "
        "`sqlite:///<data dir>/mlflow/mlflow.db` (artifacts beside it)")
    mlflow_ui_url: str = Field("", description="the MLflow UI as a browser reaches it, for "
                               "printed links; unset: the tracking URI")
    mlflow_timeout_s: int = Field(
        60, ge=5, le=3600, description="how long a command waits for an MLflow server that "
        "stopped answering (s) before it fails with one line naming the server; MLflow's own "
        "`MLFLOW_HTTP_REQUEST_*` retries and timeouts are set from it")
    load_pickled_models: bool = Field(
        False, description="unpickle a registered version that has no safetensors weights "
        "(registered before them, or a network not built from code) after its sha256 check; "
        "0: such a version is refused, naming it (unpickling can run arbitrary code)")
    airflow_run_url: str = Field("", description="the Airflow DAG run a stage belongs to (the "
                                 "runners set it), tagged on the MLflow run")
    airflow_ctx_dag_id: str = _env("AIRFLOW_CTX_DAG_ID", "", description="set by Airflow "
                                   "for a task; tagged on the MLflow run")
    airflow_ctx_dag_run_id: str = _env("AIRFLOW_CTX_DAG_RUN_ID", "",
                                       description="set by Airflow for a task; tagged too")


# --- Airflow and its runners ---------------------------------------------------------------------
class RunnerSettings(Settings):
    """How the DAGs run the stages: read while Airflow parses the DAG files."""

    DOCS: ClassVar[str] = "docs/airflow.md"

    runner: Literal["docker", "local", "kubernetes"] = Field(
        "docker", description="`docker`: a container of the worker image per stage; `local`: "
        "`catsdogs <stage>` in the Airflow environment; `kubernetes`: a pod per stage")
    worker_image: str = Field("catsdogs-worker:latest", min_length=1,
                              description="the stage image (docker and kubernetes modes)")
    worker_mlflow_uri: str = Field(
        "http://mlflow:5000", validation_alias=AliasChoices("CATSDOGS_WORKER_MLFLOW_URI",
                                                            "MLFLOW_TRACKING_URI"),
        description="the MLflow server as stage containers and pods reach it; unset: "
        "`MLFLOW_TRACKING_URI`, else `http://mlflow:5000`")
    shm_bytes: int = Field(2 * GIB, ge=0, description="/dev/shm of a stage container or pod "
                           "(bytes; DataLoader workers)", json_schema_extra={"shown": "2 GiB"})
    gpu: bool = Field(False, description="default of the run's **Use GPUs** param (train and "
                      "promote); `scripts/docker-up.sh` turns `auto` into true or false")
    task_retries: int = Field(2, ge=0, description="retries of every task")
    retry_delay_s: int = Field(60, ge=0, description="first retry delay (s), doubled up to "
                               "30 min")
    schedule: str = Field("", description="cron of `catsdogs_training` (UTC); unset: the "
                          "Airflow Variable `catsdogs_schedule`, else `0 2 * * *`")
    monitor_schedule: str = Field("", description="cron or preset of `catsdogs_monitoring`; "
                                  "unset: the Airflow Variable `catsdogs_monitor_schedule`, "
                                  "else `@hourly`")
    retrain_on_labels: bool = Field(True, description="`catsdogs_training` also runs when "
                                    "enough new labels exist (the labelled-data asset; 0: "
                                    "cron only)")
    drift_cooldown_hours: float | None = Field(
        None, ge=0, description="no new drift event within this many hours of the last",
        json_schema_extra={"shown": "`monitor.cooldown_hours` (24)"})
    kaggle_conn_id: str = Field("kaggle_default", min_length=1,
                                description="the Airflow connection with the Kaggle token")
    airflow_base_url: str = _env("AIRFLOW__API__BASE_URL", "http://localhost:8080",
                                 description="Airflow's `[api] base_url`, for the DAG run "
                                 "links tagged on MLflow runs")

    _lower_runner = field_validator("runner", mode="before")(_lower)


# Where the compose stack's kept pictures are, in the Bento containers and the stage containers
# alike: the prediction log stores each picture's absolute path, so both must see one path.
PICTURES_MOUNT = "/pictures"


class DockerSettings(Settings):
    """The Docker engine the docker runner and the compose target use."""

    DOCS: ClassVar[str] = "docs/airflow.md"

    docker_host: str = _env("DOCKER_HOST", "unix://var/run/docker.sock",
                            description="the engine's API")
    docker_network: str = Field("catsdogs", min_length=1, description="network of the stage "
                                "containers and the Bento containers (reaches `mlflow`)")
    data_volume: str = Field("catsdogs-data", min_length=1, description="named volume "
                             "mounted at /data in every stage container")
    pictures_volume: str = Field("catsdogs-pictures", min_length=1, description="named volume "
                                 "of the pictures the service keeps (the review queue's): "
                                 f"read-write at {PICTURES_MOUNT} in each Bento container, "
                                 "read-only there in every stage container (ingest merges the "
                                 "labelled ones, docs/monitoring.md)")
    docker_socket: str = Field("/var/run/docker.sock", description="the host's engine socket "
                               "bind-mounted into the rollout stages (deploy, rollback)")
    docker_gid: int | None = Field(None, ge=0, description="group owning that socket, given to "
                                   "the rollout stage containers")


class KubernetesSettings(Settings):
    """The kubernetes runner's stage pods."""

    DOCS: ClassVar[str] = "docs/kubernetes.md"

    k8s_namespace: str = Field("catsdogs", min_length=1, description="namespace of the stage "
                               "pods")
    k8s_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="of the worker image")
    k8s_data_claim: str = Field("catsdogs-data", min_length=1, description="PersistentVolume"
                                "Claim mounted at /data")
    k8s_pictures_claim: str = Field("", description="PersistentVolumeClaim of the pictures "
                                    "the service keeps (the serving chart's `pictures`, "
                                    "read-write there; `catsdogs-pictures` for the release "
                                    f"`catsdogs`), mounted read-only at {PICTURES_MOUNT} in every "
                                    "stage pod (ingest merges the labelled ones); unset: none")
    k8s_kaggle_secret: str = Field("catsdogs-kaggle", description="Secret with keys `username` "
                                   "and `key` (optional)")
    k8s_mlflow_secret: str = Field("catsdogs-mlflow", description="Secret with keys `username` "
                                   "and `password`: the MLflow service account every stage pod "
                                   "logs in with (optional: none for a server without login)")
    k8s_service_account: str = Field("", description="of the stage pods; unset: the "
                                     "namespace's default")
    k8s_gpus: int = Field(1, ge=1, description="`nvidia.com/gpu` limit of a GPU stage pod")
    k8s_gpu_node_selector: Annotated[dict[str, str], NoDecode] = Field(
        {"nvidia.com/gpu.present": "true"}, description="node selector of GPU stage pods (JSON)")
    k8s_gpu_tolerations: Annotated[list[dict[str, Any]], NoDecode] = Field(
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="tolerations of GPU stage pods (JSON list, Kubernetes' field names)")
    k8s_startup_timeout_s: int = Field(900, ge=1, description="scheduling and image pull "
                                       "patience (s)")

    _parse_json = field_validator("k8s_gpu_node_selector", "k8s_gpu_tolerations",
                                  mode="before")(_json)

    @field_validator("k8s_gpu_tolerations")
    @classmethod
    def _toleration_fields(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for toleration in value:
            unknown = set(toleration) - TOLERATION_FIELDS
            if unknown:
                raise ValueError(f"unknown toleration field(s) {sorted(unknown)}; a toleration "
                                 f"has {sorted(TOLERATION_FIELDS)}")
        return value


# --- rollout targets -----------------------------------------------------------------------------
class DeploySettings(Settings):
    """Which target `deploy.target: auto` means."""

    DOCS: ClassVar[str] = "docs/rollout.md"

    deploy_target: Literal["local", "compose", "kubernetes", "none"] = Field(
        "local", description="the rollout target for `deploy.target: auto` (compose and the "
        "Helm values set it)")

    _lower_target = field_validator("deploy_target", mode="before")(_lower)


class LocalTargetSettings(Settings):
    """The local target: two `bentoml serve` slots behind a local HAProxy."""

    DOCS: ClassVar[str] = "docs/rollout.md"

    bento_slot_ports: Annotated[tuple[int, int], NoDecode] = Field((3010, 3011), description="the two slots' "
                                              "ports (comma-separated)")
    serve_dir: Path | None = Field(None, description="HAProxy config, slot records and logs",
                                   json_schema_extra={"shown": "`<data dir>/serving`"})
    haproxy: str = Field("haproxy", min_length=1, description="the HAProxy binary")
    bento_host: str = _env("BENTO_HOST", "127.0.0.1", description="the public address HAProxy "
                           "listens on")
    bento_port: int = _env("BENTO_PORT", 3000, ge=1, le=65535, description="the public port")

    @field_validator("bento_slot_ports", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",") if part.strip()]
            if len(parts) != 2 or parts[0] == parts[1]:
                raise ValueError("two different ports, comma-separated (e.g. 3010,3011)")
            return tuple(parts)
        return value


class ComposeTargetSettings(Settings):
    """The compose target: a blue/green pair of Bento containers behind compose's HAProxy."""

    DOCS: ClassVar[str] = "docs/rollout.md"

    compose_project: str = Field("", description="the compose project (docker-compose.yaml "
                                 "sets it; required by this target)")
    service_runtime_image: str = Field("catsdogs-service-runtime:latest", min_length=1,
                                       description="base of the per-version images")
    model_image: str = Field("catsdogs-service:v{version}", min_length=1,
                             description="a version's image name (`{version}`)")
    service_url: str = Field("http://bento-proxy:8080", description="the proxy as the rollout "
                             "task reaches it")
    proxy_service: str = Field("bento-proxy", min_length=1, description="the proxy's compose "
                               "service")
    service_api_keys_file: Path | None = Field(
        None, description="the API keys file on the Docker host (an absolute path; one key a "
        "line): mounted read-only into each Bento container at `/run/secrets/catsdogs-api-keys`"
        ", named there by `CATSDOGS_API_KEYS_FILE`; unset: no key needed")
    mlflow_tracking_uri: str = _env("MLFLOW_TRACKING_URI", "http://mlflow:5000",
                                    description="MLflow as the image build reaches it")
    mlflow_tracking_username: str = _env("MLFLOW_TRACKING_USERNAME", "", description="the "
                                         "MLflow account the image build logs in with")
    mlflow_tracking_password: SecretStr = _env("MLFLOW_TRACKING_PASSWORD", SecretStr(""),
                                               description="its password")

    @field_validator("service_api_keys_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError("must be an absolute path on the Docker host")
        return value

    def mlflow_login(self) -> dict[str, str]:
        """MLFLOW_TRACKING_USERNAME/PASSWORD as MLflow's client reads them (the set ones)."""
        login = {"MLFLOW_TRACKING_USERNAME": self.mlflow_tracking_username,
                 "MLFLOW_TRACKING_PASSWORD": self.mlflow_tracking_password.get_secret_value()}
        return {name: value for name, value in login.items() if value}


class KubernetesTargetSettings(Settings):
    """The kubernetes target: `helm upgrade` of the helm/catsdogs chart."""

    DOCS: ClassVar[str] = "docs/rollout.md"

    k8s_release: str = Field("catsdogs", min_length=1, description="the Helm release")
    k8s_release_namespace: str = Field("catsdogs", min_length=1,
                                       description="its namespace")
    k8s_release_chart: str = Field("", description="the chart; unset: the checkout's "
                                   "helm/catsdogs")
    k8s_release_image: str = Field("registry.example.com/catsdogs", min_length=1,
                                   description="the service images' repository")
    k8s_release_tag: str = Field("v{version}", pattern=r"\{version\}",
                                 description="a version's image tag")
    k8s_release_endpoint: str = Field("", description="the Service as the rollout task reaches "
                                      "it (required: the post-deploy check calls it)")
    helm: str = Field("helm", min_length=1, description="the helm binary")
    kubectl: str = Field("kubectl", min_length=1, description="the kubectl binary")


# --- monitoring ----------------------------------------------------------------------------------
class MonitoringSettings(Settings):
    """What `catsdogs monitor` reads and where it reports."""

    DOCS: ClassVar[str] = "docs/monitoring.md"

    prediction_log_url: str = Field("", description="SQLAlchemy URL of the prediction log "
                                    "(`--log` wins); unset: `sqlite:///<data dir>/monitoring/"
                                    "predictions.db`")
    pushgateway_url: str = Field("", description="Prometheus Pushgateway for the drift gauges; "
                                 "unset: the gauges are logged only")


# --- the service ---------------------------------------------------------------------------------
VARIANTS = ("torch-fp32", "torch-bf16", "openvino-fp32", "openvino-int8")
"""The serving variants' names (`catsdogs.inference.variants.VariantName`; a test pins both)."""


class ServingSettings(Settings):
    """The Bento service's settings (read at its start: a bad one stops it with one message)."""

    DOCS: ClassVar[str] = "docs/serving.md"

    bento_model: str = Field("catsdogs_cnn:latest", min_length=1,
                             description="Bento model tag to serve (fixed at build time for a "
                             "bento)")
    max_batch_size: int = Field(
        8, ge=1, description="adaptive batching: largest batch (per-picture cost stops falling "
        "past ~8 on CPU; at c=32, 8 gave 101-107 req/s with p99 369-403 ms vs 89-94 and 471-474 "
        "for 16, two A/B pairs). Raise it on a GPU")
    max_latency_ms: int = Field(2000, ge=1, description="adaptive batching: a request whose "
                                "estimated wait exceeds it gets a 503 `model_unavailable` "
                                "(load shedding)")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="upload size limit "
                                  "(10 MB)")
    max_pixels: int = Field(40_000_000, ge=1, description="pixel cap (decompression bombs)")
    min_side: int = Field(16, ge=1, description="shortest side (px) accepted")
    max_aspect_ratio: float = Field(10.0, ge=1.0, description="longest / shortest side")
    max_batch_images: int = Field(32, ge=1, description="images per /predict_batch request")
    max_header_bytes: int = Field(32 * 1024, ge=1024, description="request line and headers "
                                  "together (bytes); a longer head is answered 431 as soon as "
                                  "it passes the limit")
    header_timeout_s: float = Field(10.0, gt=0.0, description="longest a connection may take to "
                                    "send a request's line and headers (from its first byte, or "
                                    "from connecting); then 408 and the connection is closed")
    body_timeout_s: float = Field(60.0, gt=0.0, le=110.0, description="longest a request may "
                                  "take to send its whole body once its headers are in (the "
                                  "upload limit at ~175 KB/s); then 408 and the connection is "
                                  "closed. At most 110: BentoML ends any request at 120 s")
    request_slots: int = Field(512, ge=1, description="requests handled at once (API process); "
                               "an upload takes its slot only once its body is complete, so "
                               "half-sent uploads hold none; when all are taken: 429 `busy`")
    max_connections: int = Field(4096, ge=1, description="open connections at most (API "
                                 "process); one more is answered 503 and closed")
    model_calls_in_flight: int = Field(2, ge=1, description="calls from the API process to the "
                                       "model service at once; more requests wait and go in the "
                                       "next call together")
    decode_threads: int = Field(0, ge=0, description="decode/resize threads (API process); 0: "
                                "one per CPU core")
    torch_threads: int = Field(0, ge=0, description="the network's threads in the model "
                               "process (torch, or OpenVINO's streams); 0: one per CPU core")
    runtime: Literal["auto", "torch-fp32", "torch-bf16", "openvino-fp32", "openvino-int8"] = \
        Field("auto", description="serving variant: `auto` (the rule in [Serving variants]"
              "(#serving-variants)) or one of " + ", ".join(f"`{v}`" for v in VARIANTS))
    jit: bool = Field(True, description="CPU: frozen TorchScript graph with oneDNN fusion; "
                      "0 (or `false`) = eager network")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto` (CUDA when "
                                                   "present), `cpu`, `cuda`")
    startup_delay_s: float = Field(0.0, ge=0.0, description="wait before loading (exercises "
                                   "readiness probes)")
    prediction_log: bool = Field(True, description="record every prediction in the prediction "
                                 "log; 0 (or `false`) = off")
    prediction_log_url: str = Field("", description="SQLAlchemy URL of the log's store; unset: "
                                    "`sqlite:///<data dir>/monitoring/predictions.db`; compose "
                                    "sets `postgresql+psycopg2://…@postgres:5432/monitoring`")
    prediction_log_batch_rows: int = Field(256, ge=1, description="rows per insert")
    prediction_log_flush_s: float = Field(2.0, gt=0.0, description="longest a row waits before "
                                          "its insert (s)")
    prediction_log_queue: int = Field(1024, ge=1, description="rows waiting at most; more are "
                                      "dropped and counted (`outcome=\"dropped_queue_full\"`); "
                                      "a waiting row holds its input pixels (150 KB at 224 px: "
                                      "150 MB when full)")
    prediction_log_retention_days: float = Field(30.0, ge=0.0, description="rows older than "
                                                 "this are deleted by the writer (at start, "
                                                 "then hourly); 0 = kept forever")
    prediction_log_max_rows: int = Field(250_000, ge=0, description="rows kept at most; the "
                                         "oldest past it are deleted after each insert (4.2 KB "
                                         "a row in SQLite with MobileNetV2's embedding: about "
                                         "1 GB); 0 = no cap")
    prediction_log_sample_rate: float | None = Field(
        None, ge=0.0, le=1.0, description="share of the uploads no other reason keeps that are "
        "kept for review at random (0-1; 1 keeps every upload)",
        json_schema_extra={"shown": "`review.random_share` of params.yaml"})
    prediction_log_sample_dir: Path | None = Field(
        None, description="where kept pictures go (`<dir>/<YYYY-MM-DD>/<random>.<ext>`, "
        "linked from the row's `picture`; the review queue serves only files under it)", json_schema_extra={"shown": "`<data dir>/monitoring"
                                                                       "/pictures`"})
    api_keys_file: Path | None = Field(None, description="file of API keys, one a line (e.g. a "
                                       "mounted Secret); set: the prediction endpoints answer "
                                       "401 without one of them (`Authorization: Bearer` or "
                                       "`X-API-Key`); unset: no key needed")
    rate_limit_per_minute: int = Field(0, ge=0, description="requests a minute per client on "
                                       "the prediction endpoints, past it 429 with "
                                       "`Retry-After`; 0 = no limit")
    rate_limit_burst: int = Field(0, ge=0, description="requests a client may send at once "
                                  "before the rate applies; 0 = one minute's worth")
    rate_limit_client_header: str = Field("", description="header naming the client when no "
                                          "API key does (e.g. `x-real-ip` set by a proxy you "
                                          "trust); unset: the connection's address")
    sample_dir: Path | None = Field(None, description="the model import's calibration photos "
                                    "for the serving variants (`--calibration-dir` wins); "
                                    "unset: the data dir's transformed test split")
    slot: str = Field("", max_length=63, description="the deploy slot this process serves "
                      "from, a label (`slot`) on the service's metrics beside the model version: "
                      "the local target sets `a`/`b`, compose `blue`/`green`, the Helm chart the "
                      "pod's `app.kubernetes.io/version` label; unset: `\"\"`")
    drain_file: Path | None = Field(None, description="while this file exists /readyz answers "
                                    "not ready and every endpoint keeps serving (the Helm "
                                    "chart's preStop hook creates it: callers that probe the pod "
                                    "stop sending it requests before it is stopped); unset: "
                                    "never draining")

    _lower_choices = field_validator("runtime", "device", mode="before")(_lower)


# --- logging -------------------------------------------------------------------------------------
class LoggingSettings(Settings):
    """How log lines are written (`catsdogs.console.setup_logging`)."""

    DOCS: ClassVar[str] = "docs/logs.md"

    log_format: Literal["text", "json"] = Field(
        "text", description="`text`: one readable line per record (interactive use); `json`: one "
        "JSON object per line with the stage, Airflow run and model version as fields (compose "
        "sets it; Alloy ships the lines to Loki, docs/logs.md)")

    _lower_format = field_validator("log_format", mode="before")(_lower)


CLASSES: tuple[type[Settings], ...] = (
    StageSettings, TrackingSettings, RunnerSettings, DockerSettings, KubernetesSettings,
    DeploySettings, LocalTargetSettings, ComposeTargetSettings, KubernetesTargetSettings,
    MonitoringSettings, ServingSettings, LoggingSettings)
DEPLOY_CLASSES: tuple[type[Settings], ...] = (DeploySettings, ComposeTargetSettings,
                                              KubernetesTargetSettings)
"""What a rollout stage (deploy, rollback) needs from the Airflow environment."""


# --- reading ---------------------------------------------------------------------------------------
def env_names(cls: type[Settings], name: str) -> tuple[str, ...]:
    """The variables field `name` of `cls` is read from, first wins."""
    info = cls.model_fields[name]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (str(alias),) if isinstance(alias, str) else ((PREFIX + name).upper(),)


def variables(classes: Iterable[type[Settings]] = CLASSES) -> dict[str, tuple[type[Settings], str]]:
    """Every variable the classes read -> (class, field), the first class naming it."""
    found: dict[str, tuple[type[Settings], str]] = {}
    for cls in classes:
        for name in cls.model_fields:
            for variable in env_names(cls, name):
                found.setdefault(variable, (cls, name))
    return found


_warned: set[str] = set()  # renamed variables already warned about in this process


def _renamed(cls: type[Settings], environ: Mapping[str, str]) -> dict[str, str]:
    """Field values from renamed variables set where their new name is not (warned once)."""
    values = {}
    for old, new in RENAMED.items():
        if environ.get(old, "").strip() and not environ.get(new, "").strip():
            for name in cls.model_fields:
                if new in env_names(cls, name):
                    if old not in _warned:
                        log.warning("%s is deprecated: set %s instead", old, new)
                        _warned.add(old)
                    values[name] = environ[old]
    return values


def _problems(cls: type[Settings], exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        field = loc[0] if loc else ""
        name = (env_names(cls, field)[0] if field in cls.model_fields  # else an alias: as it is
                else field.upper())
        where = f"[{']['.join(loc[1:])}]" if len(loc) > 1 else ""
        got = error.get("input")
        out.append(f"{name}{where}={got!r}: {error['msg']}" if not isinstance(got, dict)
                   else f"{name}{where}: {error['msg']}")
    return out


def load(cls: type[S]) -> S:
    """`cls` read from the environment. Raises SettingsError naming every bad variable of it
    (its docs file too)."""
    try:
        return cls(**_renamed(cls, os.environ))
    except ValidationError as exc:
        raise SettingsError(f"bad setting: {'; '.join(_problems(cls, exc))} (see {cls.DOCS})"
                            ) from None


def check_all(classes: Iterable[type[Settings]] = CLASSES) -> list[Settings]:
    """Every class read; SettingsError naming every bad variable of all of them."""
    loaded, problems = [], []
    for cls in classes:
        try:
            loaded.append(load(cls))
        except SettingsError as exc:
            problems.append(str(exc).removeprefix("bad setting: "))
    if problems:
        raise SettingsError("bad settings: " + "; ".join(problems))
    return loaded


def prefixed(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The set variables whose names start with `prefix`, prefix removed (e.g. the service
    settings a compose rollout passes on, `SERVICE_ENV_PREFIX`)."""
    environ = os.environ if environ is None else environ
    return {key.removeprefix(prefix): value for key, value in environ.items()
            if key.startswith(prefix) and key != prefix}


def set_variables(classes: Iterable[type[Settings]],
                  environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of `classes` set in `environ` (default os.environ), renamed ones under their
    new names: what a process passes on to a child that reads the same classes."""
    environ = os.environ if environ is None else environ
    names = variables(classes)
    found = {new: environ[old] for old, new in RENAMED.items()
             if new in names and environ.get(old, "").strip()}
    found.update({name: environ[name] for name in names if environ.get(name, "").strip()})
    return found


# --- docs ----------------------------------------------------------------------------------------
def _shown(info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "shown" in extra:
        return str(extra["shown"])
    default = info.default
    if default is None or default == "":
        return "(unset)"
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, tuple):
        return "`" + ",".join(map(str, default)) + "`"
    if isinstance(default, dict | list):
        import json

        return "`" + json.dumps(default) + "`"
    if isinstance(default, str):
        return f"`{default}`"
    return f"{default:g}" if isinstance(default, float) else str(default)


def table(cls: type[Settings]) -> str:
    """The Markdown table of `cls`: variable, default, meaning (from the field descriptions)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in cls.model_fields.items():
        names = " (else " + ", ".join(f"`{n}`" for n in env_names(cls, name)[1:]) + ")" \
            if len(env_names(cls, name)) > 1 else ""
        rows.append(f"| `{env_names(cls, name)[0]}`{names} | {_shown(info)} | "
                    f"{(info.description or '').replace('|', '/')} |")
    return "\n".join(rows)


BLOCK = re.compile(r"(<!-- settings:(\w+) -->\n)(.*?)(<!-- /settings -->)", re.S)


def render_docs(text: str) -> str:
    """`text` with every `<!-- settings:ClassName -->` ... `<!-- /settings -->` block refilled."""
    classes = {cls.__name__: cls for cls in CLASSES}

    def fill(found: re.Match[str]) -> str:
        if found.group(2) not in classes:
            raise KeyError(f"no settings class {found.group(2)!r}")
        return f"{found.group(1)}{table(classes[found.group(2)])}\n{found.group(4)}"

    return BLOCK.sub(fill, text)


def doc_files(root: Path) -> list[Path]:
    """The docs files that hold generated tables (each class's `DOCS`)."""
    return sorted({root / cls.DOCS for cls in CLASSES})


def main(argv: list[str] | None = None) -> int:
    """`python -m catsdogs.settings [--check] [--write-docs ROOT]`."""
    parser = argparse.ArgumentParser(prog="python -m catsdogs.settings", description=__doc__
                                     .split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="read every class; name every "
                        "bad variable")
    parser.add_argument("--write-docs", type=Path, metavar="ROOT",
                        help="refill the tables in ROOT's docs")
    args = parser.parse_args(argv)
    if args.write_docs:
        for path in doc_files(args.write_docs):
            path.write_text(render_docs(path.read_text()))
            print(f"wrote {path}")
    if args.check or not args.write_docs:
        try:
            check_all()
        except SettingsError as exc:
            print(exc, file=sys.stderr)
            return SettingsError.exit_code
        print("settings: all valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
