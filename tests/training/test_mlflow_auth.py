"""MLflow behind its own basic-auth app, as docker-compose.yaml runs it: a real
`mlflow server --app-name basic-auth` with docker/mlflow/basic_auth.ini, its accounts made by
docker/mlflow/users.py. A request without a login is refused (401); the pipeline's service
account registers a model (the train stage's registration code) and promotes it (the promote
stage); the read-only account browses
and cannot move an alias (403)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from catsdogs import tracking
from catsdogs.paths import DataPaths
from catsdogs.registry.names import CHAMPION
from catsdogs.registry.record import register, version_tags
from catsdogs.stages import promote
from tests.servers import open_local, start_mlflow_server, stop_process
from tests.training.conftest import IMAGE_SIZE, tiny_params
from tests.training.crafted import ColourRule

pytestmark = pytest.mark.services

REPO_ROOT = Path(__file__).resolve().parents[2]
MLFLOW_DIR = REPO_ROOT / "docker" / "mlflow"
NAME = "CatsDogsCNN-auth-test"
ADMIN = ("admin", "admin-password-for-the-test")
SERVICE = ("catsdogs-pipeline", "service-password-for-the-test")
READER = ("reader", "reader-password-for-the-test")


def provision(url: str, admin: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    """docker/mlflow/users.py as compose's `mlflow-users` runs it."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           "MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": admin[0],
           "MLFLOW_TRACKING_PASSWORD": admin[1], "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_SERVICE_USER": SERVICE[0], "MLFLOW_SERVICE_PASSWORD": SERVICE[1],
           "MLFLOW_READER_USER": READER[0], "MLFLOW_READER_PASSWORD": READER[1]}
    return subprocess.run([sys.executable, str(MLFLOW_DIR / "users.py")], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server with the compose configuration (its auth database moved to a temporary
    folder) and the two accounts made; its URL."""
    workdir = tmp_path_factory.mktemp("mlflow-auth")
    config = (MLFLOW_DIR / "basic_auth.ini").read_text().replace(
        "sqlite:////mlauth/basic_auth.db", f"sqlite:///{workdir / 'basic_auth.db'}")
    assert f"{workdir}" in config
    (workdir / "basic_auth.ini").write_text(config)
    process, url = start_mlflow_server(workdir, Path(sys.executable), app_name="basic-auth",
                                       extra_env={
        "MLFLOW_AUTH_CONFIG_PATH": str(workdir / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0], "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret-for-the-test"})
    try:
        made = provision(url, ADMIN)
        assert made.returncode == 0, made.stderr
        assert f"account '{SERVICE[0]}' created" in made.stderr
        yield url
    finally:
        stop_process(process)


def status(url: str, login: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if login:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with open_local(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def login_as(monkeypatch: pytest.MonkeyPatch, url: str, login: tuple[str, str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", login[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login[1])


def test_rest_api_refuses_requests_without_a_valid_login(auth_server: str) -> None:
    search = f"{auth_server}/api/2.0/mlflow/experiments/search?max_results=5"
    assert status(search) == 401
    assert status(search, (SERVICE[0], "wrong-password")) == 401
    assert status(search, READER) == 200
    assert status(search, SERVICE) == 200
    assert status(f"{auth_server}/health") == 200   # the health check needs no login


def test_accounts_are_kept_in_step_with_the_env_and_need_the_admin(auth_server: str) -> None:
    again = provision(auth_server, ADMIN)
    assert again.returncode == 0 and f"account '{READER[0]}' updated" in again.stderr
    refused = provision(auth_server, (ADMIN[0], "not-the-admin-password"))
    assert refused.returncode == 1
    assert "refused" in refused.stderr and ADMIN[1] not in refused.stderr


@pytest.mark.usefixtures("pickled_models_allowed")
def test_service_account_registers_and_promotes_reader_only_browses(
        auth_server: str, tiny_data: DataPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    login_as(monkeypatch, auth_server, SERVICE)
    tracking.connect(tiny_data)
    experiment = tracking.experiment_id("Cats vs Dogs CNN", tiny_data)
    example = np.random.default_rng(0).normal(size=(2, 3, IMAGE_SIZE, IMAGE_SIZE)).astype("float32")
    with mlflow.start_run(experiment_id=experiment):
        version = register(ColourRule(weight=0, bias=1), NAME, example,
                           version_tags(IMAGE_SIZE, ("cat", "dog"), "colour")).version
    promoted = promote.run(tiny_params(f"mlflow.registered_model_name={NAME}"), tiny_data)
    assert promoted.details["promoted"]
    assert MlflowClient().get_model_version_by_alias(NAME, CHAMPION).version == version

    login_as(monkeypatch, auth_server, READER)
    reader = MlflowClient()
    assert reader.get_model_version_by_alias(NAME, CHAMPION).version == version
    with pytest.raises(MlflowException) as refused:
        reader.set_registered_model_alias(NAME, CHAMPION, version)
    assert refused.value.error_code == "PERMISSION_DENIED"
    with pytest.raises(MlflowException) as refused:
        reader.delete_registered_model_alias(NAME, CHAMPION)
    assert refused.value.error_code == "PERMISSION_DENIED"
    assert reader.get_model_version_by_alias(NAME, CHAMPION).version == version
