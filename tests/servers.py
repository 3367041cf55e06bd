"""Start real server processes for tests (MLflow, BentoML, Airflow) and stop them cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPResponse
from pathlib import Path

# Loopback servers are reached directly: never through a proxy from the environment, which
# urllib's shared opener would otherwise keep from whichever test first opened a URL.
REPO_ROOT = Path(__file__).resolve().parents[1]
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def open_local(url: str | urllib.request.Request, timeout: float) -> HTTPResponse:
    """`urllib.request.urlopen` for a server on this machine (no proxy)."""
    return _LOCAL.open(url, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None,
              log_file: Path | None = None) -> None:
    """Poll `url` until it answers 200; fail with the server's log tail if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before {url} was up:\n"
                               f"{_tail(log_file)}")
        try:
            with open_local(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not up after {timeout:.0f}s:\n{_tail(log_file)}")


def _tail(log_file: Path | None, lines: int = 40) -> str:
    if log_file is None or not log_file.exists():
        return ""
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])


def start_process(argv: list[str], log_file: Path, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> subprocess.Popen:
    """Start `argv` in its own process group, output to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handle = log_file.open("ab")
    return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the whole process group, SIGKILL what is left after `timeout`."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


def start_mlflow_server(workdir: Path, python_bin: Path, app_name: str | None = None,
                        extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on a free loopback port: SQLite backend, proxied artefacts;
    `app_name` (e.g. "basic-auth") and `extra_env` (its settings) when given."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [str(python_bin.parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
            "--artifacts-destination", str(workdir / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if app_name:
        argv += ["--app-name", app_name]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(extra_env or {})}
    log_file = workdir / "server.log"
    process = start_process(argv, log_file, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=120, process=process, log_file=log_file)
    except BaseException:
        stop_process(process)
        raise
    return process, url


def mlflow_env(mlflow_server: str, **extra: str) -> dict[str, str]:
    """The environment of a subprocess that works on `mlflow_server`: the registry too (MLflow
    copies a URI it was pointed at in this process into MLFLOW_REGISTRY_URI, and a subprocess
    would register on that server instead), the project on PYTHONPATH, `extra` on top."""
    return {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,
            "MLFLOW_REGISTRY_URI": mlflow_server, "BENTOML_DO_NOT_TRACK": "true",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)]),
            **extra}


@contextmanager
def registered_tiny_model(workdir: Path, name: str) -> Iterator[tuple[str, Path, str]]:
    """A real MLflow server (artifact store in `workdir/artifacts`) with one version of `name`
    registered as training does (`tests.serving.register_tiny`, 64 px): (url, artifact folder on
    disk, version); the server is stopped on exit."""
    process, url = start_mlflow_server(workdir, Path(sys.executable))
    try:
        done = subprocess.run([sys.executable, "-m", "tests.serving.register_tiny", url, name,
                               "64"], env=mlflow_env(url), cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        yield url, workdir / "artifacts", done.stdout.strip().splitlines()[-1]
    finally:
        stop_process(process)
