"""A real `bentoml serve` of the catsdogs service: a tiny model registered in the real MLflow
server, imported with the project's import step, served on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from catsdogs.deployment.service_entry import IMPORT_MODEL, SERVICE
from tests.servers import free_port, open_local, start_process, stop_process, wait_http

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "CatsDogsServingTest"
SLOT = "blue"                    # CATSDOGS_SLOT of the session server (a compose colour)
IMAGE_SIZE = 64
STARTUP_DELAY_S = 4
# the served model is tagged as trained on a generated stand-in set (what `make demo` does
# without Kaggle credentials), so the page and /model must say so
DATA_SOURCE = "dir:/data/generated-stand-in"


@dataclass
class BentoServer:
    url: str
    version: str
    log_file: Path
    readyz_before_load: int   # /readyz status seen once /livez first answered
    readyz_after_load: int
    prediction_log_url: str   # where the service writes its prediction log (SQLite)
    env: dict[str, str]       # the environment it was served with (BENTOML_HOME, PYTHONPATH...)
    pid: int                  # `bentoml serve`'s main process (a container's PID 1)


def _status(url: str) -> int:
    try:
        with open_local(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@contextlib.contextmanager
def serve_tiny(mlflow_server: str, workdir: Path, model_name: str = MODEL_NAME,
               import_args: tuple[str, ...] = ("--calibration-images", "0"),
               extra_env: dict[str, str] | None = None) -> Iterator[BentoServer]:
    """Register the tiny model as `model_name`, import it (with `import_args`) into a Bento
    home in `workdir` and `bentoml serve` it on a free port until the block ends."""
    prediction_log_url = f"sqlite:///{workdir / 'predictions.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,
           "BENTOML_HOME": str(workdir / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
           "CATSDOGS_STARTUP_DELAY_S": str(STARTUP_DELAY_S),
           "CATSDOGS_PREDICTION_LOG_URL": prediction_log_url,
           "CATSDOGS_PREDICTION_LOG_FLUSH_S": "0.2",
           # kept pictures (params.yaml's review policy) stay in the test's folder
           "CATSDOGS_PREDICTION_LOG_SAMPLE_DIR": str(workdir / "pictures"),
           # this checkout's package first, whatever the venv has installed
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)]),
           **(extra_env or {})}
    registered = subprocess.run(
        [sys.executable, "-m", "tests.serving.register_tiny", mlflow_server, model_name,
         str(IMAGE_SIZE), DATA_SOURCE, "true"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert registered.returncode == 0, registered.stderr[-3000:]
    version = registered.stdout.strip().splitlines()[-1]
    imported = subprocess.run(
        [sys.executable, "-m", IMPORT_MODEL, "--model-uri",
         f"models:/{model_name}@champion", *import_args, "--data-dir", str(workdir / "data")],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert imported.returncode == 0, imported.stderr[-3000:]
    port = free_port()
    log_file = workdir / "serve.log"
    process = start_process(
        [str(Path(sys.executable).parent / "bentoml"), "serve", SERVICE,
         "--host", "127.0.0.1", "--port", str(port)], log_file, env=env, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/livez", timeout=120, process=process, log_file=log_file)
        before = _status(f"{url}/readyz")
        wait_http(f"{url}/readyz", timeout=120, process=process, log_file=log_file)
        yield BentoServer(url, version, log_file, before, _status(f"{url}/readyz"),
                          prediction_log_url, env, process.pid)
    finally:
        stop_process(process)
        time.sleep(0.5)


@pytest.fixture(scope="session")
def bento_server(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[BentoServer]:
    """The tiny model served as imported without calibration photos (torch fp32), as slot
    `SLOT` (a deploy target's setting) with a drain file (the Helm chart's preStop hook's)."""
    workdir = tmp_path_factory.mktemp("bento")
    with serve_tiny(mlflow_server, workdir, extra_env={
            "CATSDOGS_SLOT": SLOT, "CATSDOGS_DRAIN_FILE": str(workdir / "draining")}) as server:
        yield server


@contextlib.contextmanager
def another_server(bento_server: BentoServer, workdir: Path, env: dict[str, str]
                   ) -> Iterator[str]:
    """Another `bentoml serve` of the same model with `env` on top, in its own BentoML home (a
    copy of the model store: a server clears its home's Prometheus folder at start)."""
    home = workdir / "bentoml"
    shutil.copytree(Path(bento_server.env["BENTOML_HOME"]) / "models", home / "models")
    port = free_port()
    log_file = workdir / "serve.log"
    process = start_process(
        [str(Path(sys.executable).parent / "bentoml"), "serve", SERVICE, "--host", "127.0.0.1",
         "--port", str(port)], log_file, cwd=REPO_ROOT,
        env={**bento_server.env, "BENTOML_HOME": str(home), "CATSDOGS_STARTUP_DELAY_S": "0",
             **env})
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout=120, process=process,
                  log_file=log_file)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)
