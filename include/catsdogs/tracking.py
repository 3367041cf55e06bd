"""MLflow tracking: where the tracking server is, the experiment, logging runs, the UI's links.

The model registry (versions, aliases, their tags, the model card) is `catsdogs.registry`.

`MLFLOW_TRACKING_URI` decides the server; unset, an embedded SQLite store in `<data dir>/mlflow/`
is used so a lone CLI run needs no server. A remote server is probed before any work starts, so a
down server fails the stage in seconds (Airflow retries it) instead of after training.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.storage import is_stamp

log = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_TRACKING_URI"
PROBE_TIMEOUT_S = 5.0
UI_URL_ENV = "CATSDOGS_MLFLOW_UI_URL"   # the MLflow UI as people reach it, when not the tracking URI
# MLflow 3.17's UI shows every page in its global "GenAI" mode (a traces overview for an
# experiment) unless the URL says `workflowType=machine_learning` (or the browser remembers the
# "Model training" switch). The experiment kind tag is what the UI uses when that switch is off.
UI_QUERY = "?workflowType=machine_learning"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri(paths: DataPaths) -> str:
    """`$MLFLOW_TRACKING_URI`, else the embedded SQLite store in the data dir."""
    return os.environ.get(TRACKING_ENV) or f"sqlite:///{paths.mlflow_dir / 'mlflow.db'}"


def connect(paths: DataPaths) -> str:
    """Point MLflow at the tracking store; a server that does not answer is a UserError now."""
    import mlflow

    uri = tracking_uri(paths)
    # MLflow prints a "View experiment" link that opens the GenAI page; the stages log their own
    # links (`experiment_url`, `run_url`)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if uri.startswith(("http://", "https://")):
        _probe(uri)
    else:
        paths.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _probe(uri: str) -> None:
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=PROBE_TIMEOUT_S) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise UserError(
        f"MLflow tracking server {uri} is not reachable ({problem} from {health}). Start it "
        f"(e.g. `mlflow server --host 127.0.0.1 --port 5000`) or point {TRACKING_ENV} at a "
        f"running one; unset {TRACKING_ENV} to use the embedded SQLite store in the data dir."
    )


def ui_base_url() -> str | None:
    """The MLflow UI's base URL: `$CATSDOGS_MLFLOW_UI_URL`, else an http(s) `$MLFLOW_TRACKING_URI`;
    None for a local store (no UI)."""
    base = os.environ.get(UI_URL_ENV) or os.environ.get(TRACKING_ENV, "")
    return base.rstrip("/") if base.startswith(("http://", "https://")) else None


def experiment_url(base: str, experiment: str) -> str:
    """The MLflow UI's runs table of an experiment (not the GenAI traces overview)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs{UI_QUERY}"


def run_url(base: str, experiment: str, run_id: str) -> str:
    """The MLflow UI page of a run, in the UI's machine-learning mode (the UI's `#/runs/<id>`
    redirect drops the mode, so the experiment id is needed)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}{UI_QUERY}"


def orchestrator_tags() -> dict[str, str]:
    """Tags that link a run back to the Airflow DAG run that started it (empty outside Airflow):
    `airflow.dag_id`, `airflow.dag_run_id`, `airflow.run_url`, and the run's description
    (`mlflow.note.content`, shown as Markdown in the MLflow UI) with a link to that page."""
    dag_id, run_id = os.environ.get("AIRFLOW_CTX_DAG_ID"), os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    if not dag_id or not run_id:
        return {}
    tags = {"airflow.dag_id": dag_id, "airflow.dag_run_id": run_id}
    url = os.environ.get("CATSDOGS_AIRFLOW_RUN_URL")
    if url:
        tags["airflow.run_url"] = url
        tags["mlflow.note.content"] = f"Started by Airflow DAG run [{dag_id} / {run_id}]({url})."
    return tags


def experiment_id(name: str, paths: DataPaths) -> str:
    """The experiment's id, creating it (artefacts in the data dir for the embedded store).

    The experiment is tagged as a machine-learning one (`EXPERIMENT_KIND`), also when it already
    exists without a kind, so MLflow's "View experiment" link opens the runs table.
    """
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND_TAG not in found.tags:
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG,
                                                     EXPERIMENT_KIND)
        return found.experiment_id
    location = None
    if not tracking_uri(paths).startswith(("http://", "https://")):
        location = (paths.mlflow_dir / "artifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location,
                                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def log_folder(folder: Path, artifact_path: str) -> int:
    """Log the files under `folder` as artefacts under `artifact_path`, leaving out the stages'
    internal stamp files. Returns how many files were logged."""
    import mlflow

    files = sorted(p for p in folder.rglob("*") if p.is_file() and not is_stamp(p))
    for path in files:
        parent = path.parent.relative_to(folder).as_posix()
        mlflow.log_artifact(str(path), artifact_path if parent == "." else
                            f"{artifact_path}/{parent}")
    return len(files)
