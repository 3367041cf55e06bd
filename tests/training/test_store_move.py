"""A data dir with its embedded MLflow store, moved or copied elsewhere and named by
CATSDOGS_DATA_DIR: the store's artefact locations follow it (catsdogs.tracking)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from catsdogs.paths import DATA_DIR_ENV, DataPaths
from catsdogs.tracking import LOCATION_COLUMNS, STORE_MARK
from tests.training.conftest import TINY, build_transformed

CLI = [sys.executable, "-m", "catsdogs.cli"]
NAME = "CatsDogsCNN"


def run_cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env[DATA_DIR_ENV] = str(data)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=600)


def locations(db: Path) -> list[str]:
    """Every value of the store's artefact location columns."""
    found = []
    with sqlite3.connect(db) as connection:
        for table, column in LOCATION_COLUMNS:
            found += [v for (v,) in connection.execute(f"SELECT {column} FROM {table}") if v]
    return found


@pytest.fixture
def embedded_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No MLFLOW_TRACKING_URI in this test; afterwards MLflow's process-wide URIs are forgotten
    (`connect` sets them, and MLflow copies them into MLFLOW_TRACKING_URI and
    MLFLOW_REGISTRY_URI, which monkeypatch restores), so later tests find the session's server."""
    import mlflow

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, "")     # recorded (also when unset), so teardown restores it
        monkeypatch.delenv(name)
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_moved_and_copied_data_dir_keeps_working(tmp_path: Path, embedded_store: None) -> None:
    """Train into data dir A, copy it to B and take A away: `catsdogs evaluate` on B works and
    every artefact location of B's store points under B. A copy of B (C) made by an older
    version (no store.json) is relocated too, and its artefacts download from C."""
    original = build_transformed(tmp_path / "a").root
    trained = run_cli(original, "train", *(f"--set={s}" for s in TINY), "--json")
    assert trained.returncode == 0, trained.stderr
    run_id = json.loads(trained.stdout)["run_id"]

    moved = tmp_path / "b" / "data"
    shutil.copytree(original, moved)
    original.rename(tmp_path / "a" / "gone")
    evaluated = run_cli(moved, "evaluate", "--images", str(moved / "transformed" / "test"),
                        "--model", f"models:/{NAME}@challenger", "--json")
    assert evaluated.returncode == 0 and "Traceback" not in evaluated.stderr, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["store"] == f"sqlite:///{moved / 'mlflow' / 'mlflow.db'}"
    assert result["count"] == 6 and result["run_id"] == run_id
    assert "now point under" in evaluated.stderr
    found = locations(moved / "mlflow" / "mlflow.db")
    assert any(v.startswith(moved.as_uri()) for v in found)
    assert not [v for v in found if str(original) in v]
    assert json.loads((moved / "mlflow" / STORE_MARK).read_text())["mlflow_dir"] == str(
        moved / "mlflow")

    copy = tmp_path / "c" / "data"
    shutil.copytree(moved, copy)
    (copy / "mlflow" / STORE_MARK).unlink()
    from mlflow import MlflowClient

    from catsdogs import tracking
    from catsdogs.monitoring.reference import load_reference
    from catsdogs.registry.record import resolve

    tracking.connect(DataPaths(copy), create=False)
    assert not [v for v in locations(copy / "mlflow" / "mlflow.db") if str(moved) in v]
    assert len(load_reference(run_id)) > 0      # what `monitor` compares with
    assert resolve(MlflowClient(), f"models:/{NAME}@challenger").run_id == run_id
