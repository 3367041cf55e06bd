"""The runners' shared part: what a stage task is whichever runner starts it (see
`catsdogs.orchestration.runners`), and the DAG-level settings every DAG file wires in.

- the trigger forms (`dag_params`, `rollback_params`) with defaults from params.yaml, and the
  rendering of a run's params into `catsdogs <stage> --set section.key=value ...`
  (`command_template`, `TEMPLATE_MACROS`, `TEMPLATE_FILTERS`);
- retries with exponential backoff (`default_args`), the DAGs' schedules (`schedule`);
- `StageMixin`: a gate refusal (or any failure of a non-retryable stage) fails the task at once;
  the stage's JSON summary becomes the task's XCom `return_value` and feeds the "MLflow run" link
  (`MlflowRunLink`, registered by plugins/);
- what every stage container or pod gets in its environment (`stage_environment`,
  `airflow_context_env`, `deploy_environment`, `kaggle_credentials`) and the MLflow service
  account it logs in with (`MLFLOW_CREDENTIALS`, never rendered).

Only Airflow's SDK is imported here; no runner's provider.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

from airflow.sdk import BaseHook, BaseOperatorLink, Param
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from catsdogs.config import ModelParams, Params, PromoteParams, load_params, with_overrides
from catsdogs.deployment.service_entry import project_dir
from catsdogs.errors import GateFailed, UserError
from catsdogs.orchestration.airflow_client import dag_run_url
from catsdogs.orchestration.stage_table import Stage
from catsdogs.registry.names import CHAMPION
from catsdogs.settings import (
    DEPLOY_CLASSES,
    PREFIX,
    SERVICE_ENV_PREFIX,
    DockerSettings,
    LoggingSettings,
    RunnerSettings,
    StageSettings,
    load,
    set_variables,
)
from catsdogs.summary import SUMMARY_FILE_ENV
from catsdogs.tracking import run_url, ui_base_url

log = logging.getLogger(__name__)

# DAG -> (its RunnerSettings field, the Airflow Variable, the default schedule)
SCHEDULES: dict[str, tuple[str, str, str]] = {
    "training": ("schedule", "catsdogs_schedule", "0 2 * * *"),
    "monitoring": ("monitor_schedule", "catsdogs_monitor_schedule", "@hourly"),
}

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


# A trigger form's `section.key=value` override of params.yaml (keys may hold digits: max_p99_s)
OVERRIDE_PATTERN = r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*=.*$"


def default_args(settings: RunnerSettings) -> dict[str, Any]:
    """Every task's: retries with exponential backoff (gate refusals are final, see
    `final_exit_codes`)."""
    return {"owner": "catsdogs", "retries": settings.task_retries,
            "retry_delay": timedelta(seconds=settings.retry_delay_s),
            "retry_exponential_backoff": 2.0, "max_retry_delay": timedelta(minutes=30)}


def schedule(dag: str, settings: RunnerSettings) -> str:
    """The cron (or preset) of the `training` or `monitoring` DAG, by one rule for both: the
    setting ($CATSDOGS_SCHEDULE, $CATSDOGS_MONITOR_SCHEDULE), else the Airflow Variable
    (`catsdogs_schedule`, `catsdogs_monitor_schedule`; also $AIRFLOW_VAR_<NAME>), else the
    default (nightly at 02:00 UTC; hourly)."""
    field, variable, default = SCHEDULES[dag]
    if getattr(settings, field):
        return str(getattr(settings, field))
    from airflow.sdk import Variable

    try:
        return Variable.get(variable, default=None) or default
    except Exception as exc:  # no metadata DB / API reachable while parsing: keep the default
        log.warning("Variable %s unreadable (%s); using %s", variable, exc, default)
        return default


def checkout_dir() -> Path | None:
    """The project's checkout when Airflow runs from one (`make demo`, the tests: the folder
    holding the Bento service, `service_entry.project_dir`); None in the images, where
    $CATSDOGS_PARAMS names the params file."""
    try:
        return project_dir()
    except UserError:
        return None


def default_params(overrides: tuple[str, ...] = ()) -> Params:
    """The project's params.yaml (what a stage run would use, with `overrides`, each
    `section.key=value`): $CATSDOGS_PARAMS, else the checkout's; the defaults when there is
    none. A bad override raises UserError naming it."""
    path: Path | None = load(StageSettings).params
    if path is None:
        checkout = checkout_dir()
        path = checkout / "params.yaml" if checkout else None
    base = load_params(path) if path is not None and path.is_file() else Params()
    return with_overrides(base, overrides) if overrides else base


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
        "gpu": Param(load(RunnerSettings).gpu, type="boolean", title="Use GPUs",
                     description="Docker mode: all the host's GPUs for train and promote; "
                                 "kubernetes mode: their nvidia.com/gpu limit, GPU node "
                                 "selector and tolerations."),
        "overrides": Param([], type="array", items={"type": "string",
                                                    "pattern": OVERRIDE_PATTERN},
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
STAGE_OPTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "rollback": (("rollback_to", "--to"),),
    "score": (("images", "--images"), ("model", "--model")),
}


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


def scoring_params() -> dict[str, Param]:
    """The catsdogs_batch_scoring DAG's trigger form: the pictures (required) and the model
    (default: the registered model's @champion, from params.yaml's registered name)."""
    name = default_params().mlflow.registered_model_name
    return {
        "images": Param(type="string", minLength=1, pattern=r"^(dir:|archive:)?\S.*$",
                        title="Pictures",
                        description="Folder of pictures (searched recursively) or archive:PATH "
                                    "(zip/tar), as the stage sees it (docker and kubernetes "
                                    "modes: under /data)."),
        "model": Param(f"models:/{name}@{CHAMPION}", type="string", minLength=1,
                       pattern=r"^(models:/[A-Za-z0-9_.-]+(@[A-Za-z0-9_-]+|/[0-9]+)|[0-9]+)$",
                       title="Model",
                       description="Registered model URI (models:/NAME@ALIAS or "
                                   "models:/NAME/VERSION) or a version number; resolved once "
                                   "when the task starts."),
    }


TEMPLATE_MACROS: dict[str, Any] = {"catsdogs_overrides": overrides_from_params}
TEMPLATE_FILTERS: dict[str, Any] = {"shquote": shlex.quote}


def kaggle_credentials() -> dict[str, str]:
    """KAGGLE_USERNAME/KAGGLE_KEY from the Airflow connection, else the environment; masked."""
    found: dict[str, str] = {}
    try:
        conn = BaseHook.get_connection(load(RunnerSettings).kaggle_conn_id)
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


class MlflowRunLink(BaseOperatorLink):
    """'MLflow run' button on the tasks that log to MLflow (train, promote, monitor, score): opens
    the run that the task's stage summary names (`run_id`, `experiment_id`) in the MLflow UI
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
    base = load(RunnerSettings).airflow_base_url
    return {"AIRFLOW_CTX_DAG_ID": dag_id, "AIRFLOW_CTX_DAG_RUN_ID": run_id,
            "CATSDOGS_AIRFLOW_RUN_URL": dag_run_url(base, dag_id, run_id)}


def final_exit_codes(stage: Stage) -> range | tuple[int, ...]:
    """Exit codes that fail the task at once: a gate refusal always; any for a non-retryable stage."""
    return range(1, 256) if not stage.retryable else (GateFailed.exit_code,)


class StageMixin:
    """Shared by the three runners' operators: final failures skip retries; the stage's JSON
    summary becomes the task's return value (XCom `return_value`) and feeds the MLflow link."""

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


# The MLflow service account every stage logs in with (MLflow's client reads these variables).
# Never in the rendered environment: docker passes them privately (masked in task logs),
# kubernetes by reference to a Secret, local by the task's inherited environment.
MLFLOW_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def stage_environment(summary_file: str, mlflow_uri: str) -> dict[str, str]:
    """What every stage container or pod gets: the data dir, the MLflow server as workers reach
    it (`RunnerSettings.worker_mlflow_uri`), unbuffered output, where to write its JSON
    summary, and this environment's log format (`LoggingSettings`: JSON lines in compose)."""
    return {"CATSDOGS_DATA_DIR": "/data", "MLFLOW_TRACKING_URI": mlflow_uri,
            "PYTHONUNBUFFERED": "1", SUMMARY_FILE_ENV: summary_file,
            "CATSDOGS_LOG_FORMAT": load(LoggingSettings).log_format}


def deploy_environment() -> dict[str, str]:
    """The deployment settings of this Airflow environment for the rollout stages (deploy,
    rollback): the set `CATSDOGS_*` variables of `settings.DEPLOY_CLASSES` (renamed ones under
    their new names) and the compose network, data volume and pictures volume; never the service's own settings
    (`SERVICE_ENV_PREFIX`, private) nor standard names such as MLFLOW_TRACKING_URI."""
    found = set_variables(DEPLOY_CLASSES)
    docker = set_variables([DockerSettings])
    found.update({name: docker[name] for name in ("CATSDOGS_DOCKER_NETWORK",
                                                  "CATSDOGS_DATA_VOLUME",
                                                  "CATSDOGS_PICTURES_VOLUME") if name in docker})
    return {name: value for name, value in found.items()
            if name.startswith(PREFIX) and not name.startswith(SERVICE_ENV_PREFIX)}
