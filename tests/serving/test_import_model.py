"""bentoservice.import_model: the default calibration photos for the serving variants
($CATSDOGS_SAMPLE_DIR, else the data dir's test split, else none, said in the log: never a path
outside the project), and one resolution of the model URI per import (a promotion while the
import runs cannot change what it stores; real MLflow server, real Bento store)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bentoservice.import_model import default_calibration_dir
from catsdogs.paths import DataPaths
from catsdogs.registry.history import move_champion
from catsdogs.registry.names import BY_ROLLBACK
from tests.servers import mlflow_env
from tests.serving.conftest import REPO_ROOT


def test_calibration_dir_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    paths = DataPaths(tmp_path / "data")
    monkeypatch.delenv("CATSDOGS_SAMPLE_DIR", raising=False)
    with caplog.at_level(logging.INFO, logger="bentoservice.import_model"):
        assert default_calibration_dir(paths) is None
    assert "no calibration photos" in caplog.text

    paths.split_dir("test").mkdir(parents=True)
    assert default_calibration_dir(paths) == paths.split_dir("test")

    sample = tmp_path / "sample"
    sample.mkdir()
    monkeypatch.setenv("CATSDOGS_SAMPLE_DIR", str(sample))
    assert default_calibration_dir(paths) == sample


def _register_tiny(mlflow_server: str, name: str) -> str:
    """A tiny version of `name` registered as training does (and made @champion); its number."""
    done = subprocess.run([sys.executable, "-m", "tests.serving.register_tiny", mlflow_server,
                           name, "64"], env=mlflow_env(mlflow_server), cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.services
def test_a_promotion_during_the_import_cannot_change_what_is_stored(
        mlflow_server: str, tmp_path: Path) -> None:
    """The import resolves `@champion` once: when a promotion moves the alias from v1 to v2
    between that resolution and the download, the Bento model holds v1's weights under v1's
    number (not v2's weights labelled v1), and the next import of `@champion` imports v2 instead
    of skipping it as 'already imported'."""
    name = f"CatsDogsImportRace{tmp_path.name[-6:].replace('_', '')}"
    v1, v2 = _register_tiny(mlflow_server, name), _register_tiny(mlflow_server, name)
    client = MlflowClient(mlflow_server)
    move_champion(client, name, v1, reason="back to v1 before the import", by=BY_ROLLBACK)
    runs = {v: client.get_model_version(name, v).run_id for v in (v1, v2)}
    done = subprocess.run(
        [sys.executable, "-m", "tests.serving.import_race_probe", name, v2, str(tmp_path / "data")],
        env=mlflow_env(mlflow_server, BENTOML_HOME=str(tmp_path / "bentoml")), cwd=REPO_ROOT,
        capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert client.get_model_version_by_alias(name, "champion").version == v2   # it did move
    first, second = found["first"], found["second"]
    assert (first["version"], first["label_version"]) == (v1, v1)
    assert first["run_id"] == first["downloaded_run_id"] == runs[v1]
    assert not found["second_skipped"] and second["tag"] != first["tag"]
    assert (second["version"], second["label_version"]) == (v2, v2)
    assert second["run_id"] == second["downloaded_run_id"] == runs[v2]
