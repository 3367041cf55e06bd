"""Fixtures shared by every test area: the real photo sample, a generated data set, a real
MLflow tracking server. Area-specific fixtures live in the area's own conftest.py."""

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
# What `catsdogs.tracking.connect` leaves in the environment of the process that calls it: MLflow
# copies the URIs it is pointed at into these, and connect sets MLflow's HTTP bounds.
MLFLOW_PROCESS_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
                      "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                      "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT")


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
