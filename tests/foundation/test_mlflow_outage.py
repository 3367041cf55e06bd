"""An MLflow server that stops answering in the middle of a command (a real `mlflow server`,
killed or frozen by the test right after the command's connection probe succeeded): the command
ends within CATSDOGS_MLFLOW_TIMEOUT_S with one stderr line naming the server and the step, exit
code 4, no traceback and no wrong diagnosis ("not found", "no @challenger")."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catsdogs import tracking
from tests.conftest import REPO_ROOT
from tests.servers import start_mlflow_server

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
                        args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tests.outage_probe", str(server.pid), how,
                           "catsdogs.tracking:connect", entry, *args], env=_env(url),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    return done, time.monotonic() - started


def _images(root: Path) -> Path:
    from catsdogs.data.synthetic import generate_dataset

    return generate_dataset(root / "images", per_class=2)


@pytest.mark.services
@pytest.mark.parametrize(("command", "how"), [
    ("promote", "SIGKILL"), ("promote", "SIGSTOP"), ("evaluate", "SIGKILL"),
    ("champion", "SIGKILL"), ("rollback", "SIGKILL")])
def test_a_command_ends_in_one_line_when_mlflow_stops(
        command: str, how: str, doomed_server: tuple[subprocess.Popen, str],
        tmp_path: Path) -> None:
    server, url = doomed_server
    data = tmp_path / "data"
    (data / "transformed" / "test").mkdir(parents=True)
    extra = {"promote": [], "evaluate": ["--images", str(_images(tmp_path))],
             "champion": ["history"], "rollback": ["--to", "1", "--set", "deploy.target=none"]}
    done, took = _stop_after_connect(server, url, how, "catsdogs.cli",
                                     [command, "--data-dir", str(data), *extra[command]])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 4, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = lines[-1]
    assert last.startswith(f"catsdogs {command}: error: MLflow server {url} stopped answering "
                           "while "), done.stderr[-3000:]
    assert "not found" not in last and "no " + "CatsDogsCNN@" not in last
    assert took < TIMEOUT_S + 60     # interpreter start-up included; MLflow's default: minutes
