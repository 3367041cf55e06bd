"""A `catsdogs train` killed with SIGKILL leaves its MLflow run RUNNING; the next train start
(`train.fail_abandoned_runs`) marks it FAILED when its process is gone, and leaves the runs of
live processes alone (real MLflow server; real processes: one that ended, this one)."""

from __future__ import annotations

import subprocess
import time

import pytest
from mlflow import MlflowClient

from catsdogs.stages import train


@pytest.mark.services
def test_runs_of_gone_processes_are_marked_failed(tracking_uri: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(f"abandoned-{time.time_ns()}")
    ended = subprocess.Popen(["sleep", "0"])
    ended.wait()
    host = train.socket.gethostname()
    gone = client.create_run(experiment, tags={
        train.PROCESS_TAG: f"{host}:{ended.pid}:12345"}).info.run_id
    alive = client.create_run(experiment, tags={train.PROCESS_TAG: train._this_process()}
                              ).info.run_id
    elsewhere = client.create_run(experiment, tags={
        train.PROCESS_TAG: "another-host:1:1"}).info.run_id      # just started: may be alive
    assert train.fail_abandoned_runs(experiment) == [gone]
    status = {run: client.get_run(run).info.status for run in (gone, alive, elsewhere)}
    assert status == {gone: "FAILED", alive: "RUNNING", elsewhere: "RUNNING"}
    old = time.time() * 1000 - (train.ABANDONED_AFTER_S + 60) * 1000
    assert train._abandoned("another-host:1:1", int(old), time.time())
    assert train._abandoned(None, int(old), time.time())
