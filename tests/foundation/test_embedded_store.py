"""The embedded MLflow store (`<data dir>/mlflow/`, MLFLOW_TRACKING_URI unset) as real `catsdogs`
processes meet it: many at once on a fresh data dir, and commands that only read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "catsdogs.cli"]


# what an earlier test in this worker process may have left behind (`mlflow.set_tracking_uri`
# and `mlflow.set_experiment` export them): a store and an experiment id of another store
MLFLOW_PROCESS_STATE = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")


def cli_env() -> dict[str, str]:
    """This process's environment without a tracking server: the embedded store is used."""
    return {k: v for k, v in os.environ.items() if k not in MLFLOW_PROCESS_STATE}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=cli_env(),
                          timeout=300)


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_commands_started_at_once_on_a_fresh_data_dir_create_one_working_store(
        tmp_path: Path) -> None:
    """Six `catsdogs promote` processes at once on a fresh data dir each open (create) the
    embedded store; each ends with its one-line answer (no challenger yet), none with a
    traceback, and the store works afterwards."""
    data = tmp_path / "data"
    (data / "transformed" / "test").mkdir(parents=True)   # promote's own check passes
    processes = [subprocess.Popen([*CLI, "promote", "--data-dir", str(data)], env=cli_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert "Traceback" not in stderr, stderr
        assert process.returncode == 2, stderr
        assert "no CatsDogsCNN@challenger in the registry" in stderr, stderr
    from mlflow import MlflowClient

    uri = f"sqlite:///{data / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("after-the-race")
    assert [m.name for m in client.search_registered_models()] == ["after-the-race"]
    assert client.get_experiment("0") is not None


@pytest.mark.parametrize("command", [["champion", "history"], ["champion", "card", "--json"],
                                     ["evaluate", "--images", "{images}"]])
def test_reading_commands_create_no_store(tmp_path: Path, synthetic_images: Path,
                                          command: list[str]) -> None:
    """A command that only reads, on a data dir without a store: one line naming the path it
    looked at and the fix; the data dir stays as it was."""
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    before = tree(data)
    argv = [part.format(images=synthetic_images) for part in command]
    result = run_cli(*argv, "--data-dir", str(data))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"no MLflow store at {data / 'mlflow' / 'mlflow.db'}" in lines[0]
    assert "MLFLOW_TRACKING_URI" in lines[0] and "CATSDOGS_DATA_DIR" in lines[0]
    assert tree(data) == before


def test_reading_commands_name_the_store_they_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "transformed" / "test").mkdir(parents=True)
    assert run_cli("promote", "--data-dir", str(data)).returncode == 2   # makes the store
    store = f"sqlite:///{data / 'mlflow' / 'mlflow.db'}"
    result = run_cli("champion", "history", "--data-dir", str(data), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["store"] == store and f"not set in {store}" in summary["message"]
    card = run_cli("champion", "card", "--data-dir", str(data))
    assert card.returncode == 2 and f"no @champion in {store}" in card.stderr, card.stderr


def test_shown_store_leaves_credentials_out() -> None:
    from catsdogs.tracking import shown_uri

    assert shown_uri("https://alice:s3cret@mlflow.example.com:5000/") == (
        "https://***@mlflow.example.com:5000/")
    assert shown_uri("https://token@mlflow.example.com") == "https://***@mlflow.example.com"
    assert shown_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert shown_uri("sqlite:////data/mlflow/mlflow.db") == "sqlite:////data/mlflow/mlflow.db"


def test_one_process_opening_two_data_dirs_writes_each_ones_own_store(tmp_path: Path) -> None:
    """`mlflow.set_tracking_uri` exports the first embedded store as $MLFLOW_TRACKING_URI; a
    second data dir opened in the same process (a benchmark's folds, a notebook) must still get
    its own store, not the first one's (found writing fold 2 into fold 1's deleted store)."""
    script = """
import shutil, sys
from pathlib import Path
import mlflow
from catsdogs import tracking
from catsdogs.paths import DataPaths
first, second = Path(sys.argv[1]), Path(sys.argv[2])
for data in (first, second):
    uri = tracking.connect(DataPaths(data))
    assert uri == f"sqlite:///{data.resolve() / 'mlflow' / 'mlflow.db'}", uri
    with mlflow.start_run():
        mlflow.log_param("data", data.name)
    shutil.rmtree(first, ignore_errors=data == second)   # the first store gone: no writes to it
print("ok")
"""
    first, second = tmp_path / "first", tmp_path / "second"
    result = subprocess.run([sys.executable, "-c", script, str(first), str(second)],
                            capture_output=True, text=True, env=cli_env(), timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    from mlflow import MlflowClient

    uri = f"sqlite:///{second / 'mlflow' / 'mlflow.db'}"
    runs = MlflowClient(tracking_uri=uri).search_runs(["0"])
    assert [run.data.params["data"] for run in runs] == ["second"]


def test_a_tracking_server_the_user_chose_is_kept(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Only MLflow's own export of the embedded store is forgotten, never the user's choice."""
    from catsdogs import tracking
    from catsdogs.paths import DataPaths

    chosen = f"sqlite:///{tmp_path / 'chosen.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    monkeypatch.setattr(tracking, "_embedded", f"sqlite:///{tmp_path / 'other.db'}")
    assert tracking.tracking_uri(DataPaths(tmp_path / "data")) == chosen
