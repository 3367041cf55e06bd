"""The local Airflow stack's configuration: one environment for `make demo`
(`scripts/airflow-services.sh`) and the tests' real services (`tests/airflow/harness.py`).

Airflow 3 on one host without Docker: api-server, scheduler, dag-processor and triggerer sharing an
embedded SQLite database, LocalExecutor, `CATSDOGS_RUNNER=local` (each stage a Bash task running
this venv's `catsdogs`), the simple auth manager with user `admin`. Secrets (the JWT signing key,
the API secret key, the admin password) are generated once into the Airflow home (mode 0600); the
shell writes the `env` output to a 0600 file too.

`python -m demo.local_airflow env --home H --data-dir D --mlflow-uri U` prints the environment
as `export NAME=value` lines for a shell to source. `... sweep --home H` stops every process still
running with AIRFLOW_HOME=H that is not serving (task processes run in sessions of their own, so
stopping the services' process groups does not reach them): what `make demo-stop` and a restart
of the services run after the pid files' process groups.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import sys
from pathlib import Path

# This checkout: demo/ sits at its top, beside dags/, plugins/ and bentoservice/.
PROJECT_DIR = Path(__file__).resolve().parents[1]
ADMIN = "admin"
SECRETS_FILE = "secrets.json"
PASSWORDS_FILE = "passwords.json"


def _private_json(path: Path, make: dict[str, str]) -> dict[str, str]:
    """The JSON object stored at `path`, written first (mode 0600) with `make` if absent."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(make, handle)
    return json.loads(path.read_text())


def admin_password(home: Path, password: str | None = None) -> str:
    """The UI/API login's password (user `admin`): `password` when given, else generated once
    and kept in `<home>/passwords.json` (the simple auth manager reads that file)."""
    path = home / PASSWORDS_FILE
    if password is not None:
        path.unlink(missing_ok=True)
    return _private_json(path, {ADMIN: password or secrets.token_urlsafe(12)})[ADMIN]


def environment(home: Path, data_dir: Path, mlflow_uri: str, *, host: str = "127.0.0.1",
                port: int = 8080, password: str | None = None,
                venv_bin: Path | None = None) -> dict[str, str]:
    """Every variable the four Airflow processes (and `catsdogs` stages they run) need, as a
    dict to merge into `os.environ`. `home` is AIRFLOW_HOME (created); `data_dir` the stages'
    data dir; `mlflow_uri` the tracking server; `host`:`port` where the api-server listens."""
    home.mkdir(parents=True, exist_ok=True)
    admin_password(home, password)
    keys = _private_json(home / SECRETS_FILE, {"jwt": secrets.token_hex(32),
                                               "api": secrets.token_hex(32)})
    bin_dir = venv_bin or Path(sys.executable).parent
    url = f"http://{host}:{port}"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_DIR / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_DIR / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / PASSWORDS_FILE),
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt"],
        "AIRFLOW__API__SECRET_KEY": keys["api"],
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "CATSDOGS_RUNNER": "local",
        # The deploy task: two `bentoml serve` slots behind a local HAProxy on BENTO_PORT.
        "CATSDOGS_DEPLOY_TARGET": os.environ.get("CATSDOGS_DEPLOY_TARGET", "local"),
        "BENTO_PORT": os.environ.get("BENTO_PORT", "3000"),
        "CATSDOGS_DATA_DIR": str(data_dir),
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "CATSDOGS_MLFLOW_UI_URL": mlflow_uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # This checkout's package and Bento service importable in every task (the deploy task
        # starts the service from here: catsdogs.deployment.service_entry), as scripts/serve.sh.
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(filter(None, [
            str(PROJECT_DIR / "include"), str(PROJECT_DIR),
            *os.environ.get("PYTHONPATH", "").split(os.pathsep)]))),
        "AIRFLOW_URL": url,
    }


def sweep(home: Path, timeout: float = 15.0) -> list[str]:
    """SIGTERM every Airflow task process of `home` (AIRFLOW_HOME=`home` and an AIRFLOW_CTX_DAG_ID
    in its environment: a task's command and what it started; never a shell that merely sourced
    the demo's env.sh), leaving aside this process, its ancestors and the serving processes (they
    carry the local target's marker and stop with `scripts/serve.sh stop`); SIGKILL those alive
    after `timeout` s. Returns their descriptions."""
    import psutil

    from catsdogs.deployment.targets.local import SERVING_MARKER_ENV

    spared = {os.getpid(), *(parent.pid for parent in psutil.Process().parents())}
    homes = {str(home), str(home.resolve())}
    found: list[psutil.Process] = []
    for process in psutil.process_iter():
        if process.pid in spared:
            continue
        try:
            environ = process.environ()
        except psutil.Error:
            continue
        if environ.get("AIRFLOW_HOME") in homes and "AIRFLOW_CTX_DAG_ID" in environ \
                and SERVING_MARKER_ENV not in environ:
            found.append(process)
    described = []
    for process in found:
        try:
            described.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
            process.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(found, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return described


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.local_airflow",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("env", help="print the environment as shell `export` lines")
    env.add_argument("--home", type=Path, required=True, help="AIRFLOW_HOME")
    env.add_argument("--data-dir", type=Path, required=True, help="the stages' data dir")
    env.add_argument("--mlflow-uri", required=True, help="the MLflow tracking server's URL")
    env.add_argument("--host", default="127.0.0.1", help="the api-server's address")
    env.add_argument("--port", type=int, default=8080, help="the api-server's port")
    env.add_argument("--venv-bin", type=Path, default=None, help="the venv's bin folder")
    swept = commands.add_parser("sweep", help="stop the task processes left with AIRFLOW_HOME")
    swept.add_argument("--home", type=Path, required=True, help="AIRFLOW_HOME")
    args = parser.parse_args(argv)
    if args.command == "sweep":
        for line in sweep(args.home):
            print(f"stopped a leftover task process: {line}")
        return 0
    variables = environment(args.home, args.data_dir, args.mlflow_uri, host=args.host,
                            port=args.port, venv_bin=args.venv_bin)
    sys.stdout.write("".join(f"export {name}={shlex.quote(value)}\n"
                             for name, value in variables.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
