"""An MLflow server that stops answering in the middle of a command (a real `mlflow server`,
killed or frozen by the test right after the command's connection probe succeeded): the command
ends within CATSDOGS_MLFLOW_TIMEOUT_S with one stderr line naming the server and the step, exit
code 4, no traceback and no wrong diagnosis ("not found", "no @challenger")."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catsdogs import tracking
from catsdogs.monitoring.prediction_log import default_url
from tests.conftest import REPO_ROOT
from tests.monitoring.logs import generated_rows, write_log
from tests.servers import start_mlflow_server
from tests.training.conftest import TINY, build_transformed

TIMEOUT_S = 10


def test_http_budget_bounds_every_call() -> None:
    for bound in (5, 10, 60, 300):
        budget = tracking.http_budget(bound)
        tries = int(budget["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) + 1
        worst = (tries * int(budget["MLFLOW_HTTP_REQUEST_TIMEOUT"])
                 + 2 * int(budget["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
                 + float(budget["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]))
        assert worst <= bound + 1


@pytest.fixture
def doomed_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A private real MLflow server the test may kill or freeze (the session's one stays up)."""
    process, url = start_mlflow_server(tmp_path / "mlflow", Path(sys.executable))
    yield process, url
    for sig in (signal.SIGCONT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
    process.wait(timeout=10)


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": url, "BENTOML_DO_NOT_TRACK": "true",
            "CATSDOGS_MLFLOW_TIMEOUT_S": str(TIMEOUT_S),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)])}


def _stop_after_connect(server: subprocess.Popen, url: str, how: str, entry: str,
                        args: list[str], after: str = "catsdogs.tracking:connect",
                        ) -> tuple[subprocess.CompletedProcess, float]:
    """Run `entry` with `args`; the server gets `how` once `after` (MODULE:FUNCTION) returned."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tests.outage_probe", str(server.pid), how,
                           after, entry, *args], env=_env(url),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    return done, time.monotonic() - started


def _images(root: Path) -> Path:
    from catsdogs.data.synthetic import generate_dataset

    return generate_dataset(root / "images", per_class=2)


@pytest.mark.services
@pytest.mark.parametrize(("command", "how"), [
    ("promote", "SIGKILL"), ("promote", "SIGSTOP"), ("evaluate", "SIGKILL"),
    ("champion", "SIGKILL"), ("rollback", "SIGKILL"), ("train", "SIGKILL"),
    ("train-mid-run", "SIGKILL"), ("deploy", "SIGKILL"), ("monitor", "SIGKILL")])
def test_a_command_ends_in_one_line_when_mlflow_stops(
        command: str, how: str, doomed_server: tuple[subprocess.Popen, str],
        tmp_path: Path, artifacts_dir: Path) -> None:
    server, url = doomed_server
    # train-mid-run: the server stops once train's MLflow run has started (epochs to log, a
    # model to register), not at the connection probe
    command, _, mid_run = command.partition("-")
    after = "mlflow:start_run" if mid_run else "catsdogs.tracking:connect"
    data = tmp_path / "data"
    if command == "train":      # a whole transformed/ layout: train's preconditions hold
        data = build_transformed(tmp_path).root
    (data / "transformed" / "test").mkdir(parents=True, exist_ok=True)
    if command == "monitor":    # enough predictions of a version for the drift check to need MLflow
        write_log(default_url(data), generated_rows(60), version="1")
    extra = {"promote": [], "evaluate": ["--images", str(_images(tmp_path))],
             "champion": ["history"], "rollback": ["--to", "1", "--set", "deploy.target=none"],
             "train": [*(f"--set={o}" for o in TINY)], "deploy": [], "monitor": []}
    done, took = _stop_after_connect(server, url, how, "catsdogs.cli",
                                     [command, "--data-dir", str(data), *extra[command]],
                                     after)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 4, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = lines[-1]
    assert last.startswith(f"catsdogs {command}: error: MLflow server {url} stopped answering "
                           "while "), done.stderr[-3000:]
    assert "not found" not in last and "no " + "CatsDogsCNN@" not in last
    assert took < TIMEOUT_S + 60     # interpreter start-up included; MLflow's default: minutes
    name = f"{command}-{mid_run}" if mid_run else command
    (artifacts_dir / f"mlflow-outage-{name}-{how}.json").write_text(json.dumps(
        {"command": name, "how": how, "seconds": round(took, 1), "exit": done.returncode,
         "timeout_s": TIMEOUT_S, "last_line": last}, indent=2))
