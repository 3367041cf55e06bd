"""Real Airflow for the tests: environment, `airflow db migrate`, the four service processes, and a
small REST API v2 client (token auth)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import free_port, open_local, start_process, stop_process, wait_http

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
# A made-up Kaggle key given to the services: it must never show in templates, logs or XCom.
FAKE_KAGGLE = {"KAGGLE_USERNAME": "catsdogs-ci", "KAGGLE_KEY": "f4ke" + "0123456789abcdef" * 2}


def airflow_env(home: Path, data_dir: Path, tracking_uri: str, port: int | None = None,
                password: str = "admin", extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Airflow processes: local mode, SQLite, LocalExecutor, loopback only."""
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": password}))
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "CATSDOGS_RUNNER": "local",
        "CATSDOGS_DATA_DIR": str(data_dir),
        "CATSDOGS_RETRY_DELAY_S": "5",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "CATSDOGS_MLFLOW_UI_URL": tracking_uri,
        "TORCH_NUM_THREADS": "2",
        "OMP_NUM_THREADS": "2",
    }
    if port is not None:
        env["AIRFLOW__API__PORT"] = str(port)
        env["AIRFLOW__API__BASE_URL"] = f"http://127.0.0.1:{port}"
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://127.0.0.1:{port}/execution/"
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        env.pop(name, None)
    return {**env, **(extra or {})}


def migrate(env: dict[str, str]) -> None:
    """`airflow db migrate` (SQLite: a few seconds); raise with its output when it fails."""
    result = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")


def run_dag_test(env: dict[str, str], conf: dict[str, Any],
                 mark_success: str | None = None) -> tuple[dict[str, Any], str]:
    """`dag.test()` in a fresh process (tests/airflow/run_dag_test.py): its result and output."""
    argv = [sys.executable, str(Path(__file__).with_name("run_dag_test.py")),
            str(REPO_ROOT / "dags"), json.dumps(conf)]
    done = subprocess.run(argv + ([mark_success] if mark_success else []), env=env,
                          capture_output=True, text=True, timeout=900)
    output = (done.stdout + done.stderr)[-8000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("DAG_TEST_RESULT ")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"dag.test() did not finish (exit {done.returncode}):\n{output}")
    return json.loads(lines[-1].removeprefix("DAG_TEST_RESULT ")), output


@dataclass
class AirflowServices:
    """The four Airflow processes on loopback plus an authenticated REST API v2 client."""

    url: str
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    token: str = ""

    @classmethod
    def start(cls, home: Path, data_dir: Path, tracking_uri: str) -> AirflowServices:
        port = free_port()
        env = airflow_env(home, data_dir, tracking_uri, port=port, extra=FAKE_KAGGLE)
        migrate(env)
        services = cls(url=f"http://127.0.0.1:{port}", env=env, logs=home / "service-logs")
        try:
            for name in SERVICES:
                argv = [str(VENV_BIN / "airflow"), name]
                if name == "api-server":
                    argv += ["--host", "127.0.0.1", "--port", str(port)]
                services.processes[name] = start_process(argv, services.logs / f"{name}.log",
                                                         env=env, cwd=home)
            wait_http(f"{services.url}/api/v2/monitor/health", timeout=180,
                      process=services.processes["api-server"],
                      log_file=services.logs / "api-server.log")
            services.login("admin", "admin")
        except BaseException:
            services.stop()
            raise
        return services

    def stop(self) -> None:
        for process in self.processes.values():
            stop_process(process, timeout=20)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for name in SERVICES:
            path = self.logs / f"{name}.log"
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        """JSON in, JSON out; raise HTTPError with the body on a non-2xx answer."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with open_local(request, timeout=30) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        return json.loads(payload) if payload else None

    def login(self, username: str, password: str) -> None:
        """`POST /auth/token` → bearer token for the REST API."""
        answer = self.request("POST", "/auth/token",
                              {"username": username, "password": password}, auth=False)
        self.token = answer["access_token"]

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """Until the dag-processor has parsed `dag_id` (its import errors are raised)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.request("GET", f"/api/v2/dags/{dag_id}")
            except RuntimeError as exc:
                if "HTTP 404" not in str(exc):
                    raise
            errors = self.request("GET", "/api/v2/importErrors")
            if errors.get("total_entries"):
                raise RuntimeError(f"import errors: {errors['import_errors']}")
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout:.0f}s\n{self.log_tail()}")

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns",
                           {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 420) -> str:
        """Poll the run until it ends; its final state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed"):
                return run["state"]
            time.sleep(2)
        raise TimeoutError(f"run {run_id} still running after {timeout:.0f}s\n{self.log_tail()}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        answer = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti for ti in answer["task_instances"]}
