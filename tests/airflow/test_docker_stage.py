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


@pytest.fixture
def any_image() -> str:
    """An image present on the engine to run `sleep` in: the worker image or a local base image."""
    if shutil.which("docker") is None or _docker("info", timeout=60).returncode != 0:
        pytest.skip("no Docker engine here: stale-container removal is proved by the compose e2e")
    for image in (IMAGE, "catsdogs-base/debian:bookworm", "python:3.11-slim"):
        if _docker("image", "inspect", image, timeout=60).returncode == 0:
            return image
    pytest.skip("no image to run a container from (make images builds them)")


def test_a_retry_removes_the_containers_its_earlier_tries_left(any_image: str) -> None:
    """A try whose Celery worker was stopped leaves its stage container on the engine; the next
    try of the same task instance removes it (running or exited), and nothing else."""
    from catsdogs.orchestration.runners import runner
    from catsdogs.orchestration.runners.docker import (
        StageDockerOperator,
        docker_settings,
        stage_labels,
    )
    from catsdogs.orchestration.stage_table import PIPELINE

    run_id = f"test-{uuid.uuid4().hex[:8]}"

    def start(task_id: str, try_number: int, run: str = run_id, command: str = "300") -> str:
        labels = stage_labels("catsdogs_training", run, task_id, try_number)
        argv = ["run", "-d", "--network", "none", "--entrypoint", "sleep"]
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        started = _docker(*argv, any_image, command)
        assert started.returncode == 0, started.stderr
        return started.stdout.strip()

    stale_running, stale_exited = start("train", 1), start("train", 1, command="0")
    others = [start("prepare", 1), start("train", 1, run=f"{run_id}-other")]
    try:
        _docker("wait", stale_exited)
        train = next(stage for stage in PIPELINE if stage.name == "train")
        operator = StageDockerOperator(task_id="train", stage=train, **docker_settings(runner()))
        removed = operator.remove_stale_containers(
            stage_labels("catsdogs_training", run_id, "train", 2))
        assert sorted(removed) == sorted([stale_running, stale_exited])
        left = _docker("ps", "-aq", "--no-trunc", "--filter",
                       f"label=io.catsdogs.run_id={run_id}").stdout.split()
        assert left == [others[0]]
        assert operator.remove_stale_containers(
            stage_labels("catsdogs_training", run_id, "train", 3)) == []
    finally:
        _docker("rm", "-f", stale_running, stale_exited, *others)
