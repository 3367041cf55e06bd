"""Fixtures for the Airflow tests: a private AIRFLOW_HOME, the DAG parsed in either mode, a tiny
generated data set, and one session of real Airflow services (local mode) on loopback."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from catsdogs.data.synthetic import generate_dataset
from tests.airflow.harness import REPO_ROOT, SERVICE_LABELS, AirflowServices, write_params

# Airflow reads its configuration once, when first imported: point it at a private home first.
_HOME = Path(tempfile.mkdtemp(prefix="catsdogs-airflow-test-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ.update({
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
})

DAG_ID = "catsdogs_training"


@pytest.fixture
def parse_dag(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Parse dags/ like the dag-processor does, with the given runner and extra env; the
    training DAG unless `dag_id` names another."""
    from airflow.dag_processing.dagbag import DagBag

    def parse(runner: str = "docker", dag_id: str = DAG_ID, **env: str) -> Any:
        monkeypatch.setenv("CATSDOGS_RUNNER", runner)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
        assert bag.import_errors == {}, bag.import_errors
        return bag.dags[dag_id]

    return parse


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 generated images per class: enough for the validation gate, quick to train on."""
    return generate_dataset(tmp_path_factory.mktemp("tiny") / "images", per_class=30, seed=7)


TINY_OVERRIDES = ("model.weights=none", "transform.image_size=64", "train.num_workers=0",
                  "transform.workers=1")


@pytest.fixture(scope="session")
def tiny_conf(tiny_images: Path) -> dict[str, Any]:
    """Run conf for a fast, offline run (mobilenet_v2 without pretrained weights, 64 px, 1 epoch)."""
    return {
        "data_source": f"dir:{tiny_images}",
        "epochs": 1,
        "batch_size": 16,
        "arch": "mobilenet_v2",
        "overrides": list(TINY_OVERRIDES),
    }


@pytest.fixture(scope="session")
def airflow_services(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str,
                     tiny_conf: dict[str, Any]) -> Iterator[AirflowServices]:
    """api-server, scheduler, dag-processor, triggerer (SQLite, LocalExecutor), logged in; their
    params file ($CATSDOGS_PARAMS) is the checkout's with `tiny_conf` applied, so a run started
    without a form (an asset-triggered retraining) is the fast offline one too."""
    home = tmp_path_factory.mktemp("airflow-services")
    params = home / "params.yaml"
    write_params(params, [f"data.source={tiny_conf['data_source']}", "train.epochs=1",
                          "train.batch_size=16", "model.arch=mobilenet_v2", *TINY_OVERRIDES,
                          f"feedback.min_labels={SERVICE_LABELS}"])
    services = AirflowServices.start(home / "home", home / "data", mlflow_server, params=params)
    yield services
    services.stop()
