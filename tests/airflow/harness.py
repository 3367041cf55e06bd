"""Real Airflow for the tests: the local stack's environment
(`demo.local_airflow`, the one `make demo` uses), `airflow db migrate`, the four
service processes, and the project's REST API v2 client (`catsdogs.orchestration.airflow_client`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from catsdogs.config import load_params, parse_override
from catsdogs.orchestration.airflow_client import AirflowClient, AirflowError
from demo.local_airflow import ADMIN, environment
from tests.servers import free_port, start_process, stop_process, wait_http

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
# labelled production pictures that make a retraining merge them (feedback.min_labels of the
# services' params file; tests/airflow/test_services_monitoring.py labels this many)
SERVICE_LABELS = 5
# A made-up Kaggle key given to the services: it must never show in templates, logs or XCom.
FAKE_KAGGLE = {"KAGGLE_USERNAME": "catsdogs-ci", "KAGGLE_KEY": "f4ke" + "0123456789abcdef" * 2}


def airflow_env(home: Path, data_dir: Path, tracking_uri: str, port: int | None = None,
                password: str = "admin", extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Airflow processes: the local stack's (local mode, SQLite, LocalExecutor,
    loopback only) with faster polling and retries for tests, and no Kaggle credentials."""
    env = {**os.environ, **environment(home, data_dir, tracking_uri, port=port or free_port(),
                                       password=password, venv_bin=VENV_BIN)}
    env.update({
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "CATSDOGS_RETRY_DELAY_S": "5",
        "TORCH_NUM_THREADS": "2",
        "OMP_NUM_THREADS": "2",
        # The deploy task runs, with nothing to deploy to: the rollout itself is tested for real
        # in tests/deployment (bentoml serve + HAProxy); the tiny generated set has too few test
        # pictures for the post-deploy check.
        "CATSDOGS_DEPLOY_TARGET": "none",
    })
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        env.pop(name, None)
    return {**env, **(extra or {})}


def write_params(path: Path, overrides: list[str]) -> Path:
    """The checkout's params.yaml with `section.key=value` overrides applied, written to `path`
    (validated as a stage would read it)."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_params(path)
    return path


def migrate(env: dict[str, str]) -> None:
    """`airflow db migrate` (SQLite: a few seconds); raise with its output when it fails."""
    result = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")


def register_tiny(tracking_uri: str, name: str, env: dict[str, str]) -> str:
    """A tiny resnet18 (64 px, with an out-of-distribution calibration) registered as
    `name`@champion in `tracking_uri` (tests/serving/register_tiny.py); its version."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.serving.register_tiny", tracking_uri, name, "64"],
        env={**env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)])},
        cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"registering {name} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def scoring_inbox(sample_dir: Path, folder: Path) -> Path:
    """A folder to score: 3 real photos of each class in sub-folders and a text file (7 files,
    6 pictures, 1 rejected)."""
    for kind in ("cat", "dog"):
        (folder / kind).mkdir(parents=True)
        for photo in sorted((sample_dir / kind).glob("*.jpg"))[:3]:
            shutil.copy(photo, folder / kind / photo.name)
    (folder / "readme.txt").write_text("not a picture\n")
    return folder


def run_dag_test(env: dict[str, str], conf: dict[str, Any], mark_success: str | None = None,
                 dag_id: str = "catsdogs_training") -> tuple[dict[str, Any], str]:
    """`dag.test()` of `dag_id` in a fresh process (tests/airflow/run_dag_test.py): its result
    and output."""
    argv = [sys.executable, str(Path(__file__).with_name("run_dag_test.py")),
            str(REPO_ROOT / "dags"), json.dumps(conf), mark_success or "", dag_id]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    output = (done.stdout + done.stderr)[-8000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("DAG_TEST_RESULT ")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"dag.test() did not finish (exit {done.returncode}):\n{output}")
    return json.loads(lines[-1].removeprefix("DAG_TEST_RESULT ")), output


@dataclass
class AirflowServices:
    """The four Airflow processes on loopback plus the project's REST API v2 client."""

    url: str
    env: dict[str, str]
    logs: Path
    client: AirflowClient
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def start(cls, home: Path, data_dir: Path, tracking_uri: str,
              params: Path | None = None) -> AirflowServices:
        """Start them; `params`: the params file the DAGs and stages read ($CATSDOGS_PARAMS;
        default: the checkout's params.yaml)."""
        port = free_port()
        extra = FAKE_KAGGLE | ({"CATSDOGS_PARAMS": str(params)} if params else {})
        env = airflow_env(home, data_dir, tracking_uri, port=port, extra=extra)
        migrate(env)
        url = f"http://127.0.0.1:{port}"
        services = cls(url=url, env=env, logs=home / "service-logs",
                       client=AirflowClient(url, ADMIN, "admin"))
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
            services.client.login()
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

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """JSON in, JSON out; a non-2xx answer raises AirflowError naming the HTTP code."""
        return self.client.request(method, path, body)

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """Until the dag-processor has parsed `dag_id` (its import errors are raised)."""
        return self.client.wait_for_dag(dag_id, timeout)

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        return self.client.trigger(dag_id, conf)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 420) -> str:
        """Poll the run until it ends; its final state."""
        try:
            return self.client.follow(dag_id, run_id, timeout=timeout, poll_s=2)
        except AirflowError as exc:
            raise AirflowError(f"{exc}\n{self.log_tail()}", exc.status) from None

    def task_states(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        return self.client.task_instances(dag_id, run_id)
