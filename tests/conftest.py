"""Fixtures shared by every test area: the real photo sample, a generated data set, a real
MLflow tracking server. Area-specific fixtures live in the area's own conftest.py.

`make test` runs the suite over two pytest-xdist workers: most of its time is spent waiting on
real servers, containers and one-core processes, so a second worker uses the idle core. A unit of
work is a test file (its module fixtures built once), except two that hold several files: the
Docker engine's tests (one engine, started once, one test at a time; the longest unit, so it is
handed out first) and the two files sharing the Airflow services fixture.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from catsdogs.data.synthetic import generate_dataset
from tests.servers import start_mlflow_server, stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT.parent / "shared" / "data" / "petimages-sample"
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
# Units of work of more than one file (see the docstring); every file with a `docker` test is in
# DOCKER_FILES (checked at collection).
DOCKER_FILES = frozenset({"tests/airflow/test_docker_stage.py", "tests/e2e/test_compose_e2e.py",
                          "tests/e2e/test_fresh_machine.py"})
SHARED_FIXTURE_FILES = frozenset({"tests/airflow/test_services.py",
                                  "tests/airflow/test_services_monitoring.py"})
# What `catsdogs.tracking.connect` leaves in the environment of the process that calls it: MLflow
# copies the URIs it is pointed at into these, and connect sets MLflow's HTTP bounds.
MLFLOW_PROCESS_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                      "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                      "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def unit_of_work(path: str) -> str:
    """The xdist unit a test file (repository-relative, `/`-separated) belongs to."""
    if path in DOCKER_FILES:
        return "docker-engine"
    return "airflow-services" if path in SHARED_FIXTURE_FILES else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist's load-scope scheduling with `unit_of_work` as the scope. (Its own `loadgroup` adds
    the group to each item's node id, which pytest 9's read-only node ids no longer allow.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FileUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of_work(nodeid.split("::", 1)[0])

    return FileUnits(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Docker tests first (the scheduler hands units out in collection order); a `docker` test
    outside DOCKER_FILES is an error, not a second engine user running beside the first."""
    for item in items:
        path = Path(item.path).resolve().relative_to(REPO_ROOT).as_posix()
        if item.get_closest_marker("docker") and path not in DOCKER_FILES:
            raise pytest.UsageError(f"{path} has Docker tests: add it to DOCKER_FILES in "
                                    "tests/conftest.py")
    items.sort(key=lambda item: item.get_closest_marker("docker") is None)   # stable


@pytest.fixture(autouse=True)
def mlflow_process_env() -> Iterator[None]:
    """Each test ends with the MLflow variables it started with, and with no tracking or registry
    URI set in this process, so neither a later test nor its subprocesses (which copy os.environ)
    inherit an earlier test's server or bounds."""
    before = {name: os.environ.get(name) for name in MLFLOW_PROCESS_ENV}
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:   # the URIs a test set in this process: they would outrank the variables
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The 2,000 real Kaggle photos in ../shared (never committed); skip when absent."""
    if not (SAMPLE_DIR / "cat").is_dir() or not (SAMPLE_DIR / "dog").is_dir():
        pytest.skip(f"real photo sample not found at {SAMPLE_DIR} (it lives in ../shared, "
                    "beside the repository; it is never committed)")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def synthetic_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated two-class image folder (60 per class), made once per session."""
    return generate_dataset(tmp_path_factory.mktemp("synthetic") / "images", per_class=60)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` process (SQLite, --workers 1) on a free loopback port; its URL."""
    process, url = start_mlflow_server(tmp_path_factory.mktemp("mlflow"), Path(sys.executable))
    yield url
    stop_process(process)


@pytest.fixture
def tracking_uri(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLFLOW_TRACKING_URI at the session's real server for one test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep what a person may want to look at (screenshots, reports)."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    return ARTIFACTS_DIR
