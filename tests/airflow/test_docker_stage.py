"""Docker mode for real: the `ingest` stage as a StageDockerOperator container of the worker image
on a named volume, through `dag.test()` (the other tasks are marked successful, not run).

Runs only when `docker info` works and the image $CATSDOGS_WORKER_IMAGE (default
catsdogs-worker:latest, built by the compose tooling) exists locally; otherwise it skips."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.harness import airflow_env, migrate, run_dag_test

IMAGE = os.environ.get("CATSDOGS_WORKER_IMAGE", "catsdogs-worker:latest")

pytestmark = pytest.mark.docker


def _docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def worker_image() -> str:
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on this host: docker mode is proved by the compose tests")
    if _docker("info", timeout=60).returncode != 0:
        pytest.skip("`docker info` fails (no Docker engine running)")
    if _docker("image", "inspect", IMAGE, timeout=60).returncode != 0:
        pytest.skip(f"worker image {IMAGE} not built here (make images builds it)")
    return IMAGE


@pytest.fixture
def volume(worker_image: str, tiny_images: Path) -> Any:
    """A fresh named volume holding the tiny image set under /data/source."""
    name = f"catsdogs-test-{uuid.uuid4().hex[:8]}"
    seeded = _docker("run", "--rm", "--user", "0", "-v", f"{name}:/data",
                     "-v", f"{tiny_images}:/src:ro", "--entrypoint", "sh", worker_image, "-c",
                     "cp -r /src /data/source && chown -R 50000:0 /data")
    assert seeded.returncode == 0, seeded.stderr
    yield name
    _docker("volume", "rm", "-f", name)


def test_ingest_runs_in_the_worker_container(tmp_path: Path, volume: str,
                                             worker_image: str) -> None:
    # ingest does not talk to MLflow: no server needed.
    env = airflow_env(tmp_path / "home", tmp_path / "unused", "http://127.0.0.1:9", extra={
        "CATSDOGS_RUNNER": "docker", "CATSDOGS_WORKER_IMAGE": worker_image,
        "CATSDOGS_DATA_VOLUME": volume, "CATSDOGS_DOCKER_NETWORK": "bridge"})
    migrate(env)
    result, output = run_dag_test(env, {"data_source": "dir:/data/source", "gpu": False},
                                  mark_success="^(validate|prepare|transform|train|promote)$")
    assert result["tasks"]["ingest"] == "success", output
    assert result["outputs"]["ingest"].startswith("[ingest] done: 60 files"), output
    listing = _docker("run", "--rm", "-v", f"{volume}:/data", "--entrypoint", "sh", worker_image,
                      "-c", "ls /data/raw/cat | wc -l; ls /data/raw/dog | wc -l")
    assert listing.stdout.split() == ["30", "30"], listing.stderr
