"""Everything MLflow: where the tracking server is, experiment, model logging, registry, aliases.

`MLFLOW_TRACKING_URI` decides the server; unset, an embedded SQLite store in `<data dir>/mlflow/`
is used so a lone CLI run needs no server. A remote server is probed before any work starts, so a
down server fails the stage in seconds (Airflow retries it) instead of after training.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catsdogs.data.provenance import Provenance
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.storage import is_stamp

log = logging.getLogger(__name__)

TRACKING_ENV = "MLFLOW_TRACKING_URI"
PROBE_TIMEOUT_S = 5.0
MODEL_NAME = "model"                     # artifact name of the logged model inside its run
CHALLENGER = "challenger"
CHAMPION = "champion"
UI_URL_ENV = "CATSDOGS_MLFLOW_UI_URL"   # the MLflow UI as people reach it, when not the tracking URI
# MLflow 3.17's UI shows every page in its global "GenAI" mode (a traces overview for an
# experiment) unless the URL says `workflowType=machine_learning` (or the browser remembers the
# "Model training" switch). The experiment kind tag is what the UI uses when that switch is off.
UI_QUERY = "?workflowType=machine_learning"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


@dataclass(frozen=True)
class ModelRef:
    """A registered model version and what is needed to preprocess for it."""

    uri: str
    name: str
    version: str
    run_id: str
    image_size: int
    classes: tuple[str, ...]
    data: Provenance | None = None   # the training data's source; None for versions without tags


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


def alias_version(name: str, alias: str) -> Any | None:
    """The ModelVersion an alias points at, or None when the alias (or model) does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def resolve_model(uri: str) -> ModelRef:
    """`models:/NAME@alias` or `models:/NAME/VERSION` -> version, run id, image size, classes.

    The serving image import and `catsdogs evaluate` call this (after `connect`).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not uri.startswith("models:/"):
        raise UserError(f"model {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    ref = uri[len("models:/"):]
    client = MlflowClient()
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = ref.rsplit("/", 1)
            version = client.get_model_version(name, number)
    except (MlflowException, ValueError) as exc:
        raise UserError(f"model {uri!r} not found in the registry ({exc}); train and promote "
                        "one first (`catsdogs train`, `catsdogs promote`)") from None
    tags = version.tags
    return ModelRef(uri=uri, name=name, version=str(version.version), run_id=version.run_id,
                    image_size=int(tags["image_size"]),
                    classes=tuple(json.loads(tags["classes"])),
                    data=Provenance.from_tags(tags))


def champion_data(registered_name: str) -> Provenance | None:
    """What the `@champion` version of `registered_name` was trained on (after `connect`).

    `.synthetic` is True for a generated stand-in set, `.note()` a plain warning for people
    ('' for real data). None when there is no champion or it predates the `data.*` tags.
    """
    version = alias_version(registered_name, CHAMPION)
    return Provenance.from_tags(version.tags) if version is not None else None


def load_model(ref: ModelRef, device: Any) -> Any:
    """The registered torch module of `ref`, in eval mode on `device`."""
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(f"models:/{ref.name}/{ref.version}", map_location=device)
    return model.eval()


def version_tags(image_size: int, classes: tuple[str, ...], arch: str,
                 data: Provenance | None = None) -> dict[str, str]:
    """The tags a registered version carries for its consumers (service, evaluate, promote,
    the demo summary): image size, classes, arch and, when known, `data.source`/`data.synthetic`."""
    return ({"image_size": str(image_size), "classes": json.dumps(list(classes)), "arch": arch}
            | (data.tags() if data is not None else {}))


def _requirements() -> list[str]:
    """The model's runtime requirements, stated (MLflow's inference of them takes ~20 s)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "torchvision", "cloudpickle")]


def log_and_register(model: Any, registered_name: str, example: Any, tags: dict[str, str]) -> Any:
    """Log `model` once in the active run (pickle format, dynamic batch), register it, tag the
    new version and point `challenger` at it. Returns the ModelVersion."""
    import mlflow.pytorch
    import torch
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    with torch.inference_mode():
        logits = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, logits)
    info = mlflow.pytorch.log_model(
        model, name=MODEL_NAME, signature=signature, input_example=example,
        serialization_format="pickle", registered_model_name=registered_name,
        pip_requirements=_requirements(),
        metadata={"image_size": int(tags["image_size"]), "classes": json.loads(tags["classes"])},
    )
    client = MlflowClient()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, version, key, value)
    client.set_registered_model_alias(registered_name, CHALLENGER, version)
    log.info("registered %s version %s as @%s", registered_name, version, CHALLENGER)
    return client.get_model_version(registered_name, version)
