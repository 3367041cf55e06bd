"""API keys on compose come from a file on the Docker host, never through an image or an
environment: docker-compose.yaml hands CATSDOGS_SERVICE_API_KEYS_FILE from `.env` to the Airflow
services, the runner passes it to the deploy stage, and the compose target bind-mounts the file
read-only into each Bento container with CATSDOGS_API_KEYS_FILE naming it there (the service's
side, 401 without a key and 429 with Retry-After, runs for real in tests/serving/test_access.py).
Off by default: without the file the containers get neither. Compose resolves the file itself
(`compose config`, no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from catsdogs.config import load_params
from catsdogs.deployment.targets.compose import API_KEYS_TARGET, ComposeTarget
from catsdogs.orchestration.runners.common import deploy_environment
from catsdogs.settings import PICTURES_MOUNT, SettingsError
from tests.e2e.compose import REPO_ROOT, compose_config, env_file_with_secrets

KEYS = "/etc/catsdogs/api-keys"
AIRFLOW_SERVICES = ("airflow-scheduler", "airflow-worker-cpu")


@pytest.fixture
def compose_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATSDOGS_COMPOSE_PROJECT", "catsdogs")
    monkeypatch.delenv("CATSDOGS_SERVICE_API_KEYS_FILE", raising=False)


def _target() -> ComposeTarget:
    return ComposeTarget.from_env(load_params(REPO_ROOT / "params.yaml"))


@pytest.mark.usefixtures("compose_env")
def test_without_a_keys_file_the_pair_gets_no_key_setting_and_no_mount() -> None:
    options = _target().service_options("blue")
    assert [mount["Target"] for mount in options["mounts"]] == [PICTURES_MOUNT]
    assert "CATSDOGS_API_KEYS_FILE" not in options["environment"]
    assert options["environment"]["CATSDOGS_SLOT"] == "blue"


@pytest.mark.usefixtures("compose_env")
def test_the_keys_file_is_mounted_read_only_and_named_by_the_service_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATSDOGS_SERVICE_API_KEYS_FILE", KEYS)
    monkeypatch.setenv("CATSDOGS_SERVICE_ENV_CATSDOGS_RATE_LIMIT_PER_MINUTE", "120")
    assert deploy_environment()["CATSDOGS_SERVICE_API_KEYS_FILE"] == KEYS
    options = _target().service_options("green")
    [_, mount] = options["mounts"]
    assert (mount["Type"], mount["Source"], mount["Target"], mount["ReadOnly"]) == (
        "bind", KEYS, API_KEYS_TARGET, True)
    assert options["environment"]["CATSDOGS_API_KEYS_FILE"] == API_KEYS_TARGET
    assert options["environment"]["CATSDOGS_RATE_LIMIT_PER_MINUTE"] == "120"
    assert options["environment"]["CATSDOGS_SLOT"] == "green"


@pytest.mark.usefixtures("compose_env")
def test_both_colours_keep_pictures_on_the_volume_the_stage_containers_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A picture kept by blue is still there after the rollout to green (one named volume, not
    the container's own layer), at the path its prediction-log row names, which is where every
    stage container (ingest, review) finds it, read-only."""
    from catsdogs.orchestration.runners.docker import docker_settings
    from catsdogs.settings import RunnerSettings

    monkeypatch.setenv("CATSDOGS_PICTURES_VOLUME", "shop-pictures")
    assert deploy_environment()["CATSDOGS_PICTURES_VOLUME"] == "shop-pictures"
    for color in ("blue", "green"):
        options = _target().service_options(color)
        [mount] = options["mounts"]
        assert (mount["Type"], mount["Source"], mount["Target"], mount["ReadOnly"]) == (
            "volume", "shop-pictures", PICTURES_MOUNT, False)
        assert options["environment"]["CATSDOGS_PREDICTION_LOG_SAMPLE_DIR"] == PICTURES_MOUNT
    stage_mounts = {mount["Target"]: mount for mount in
                    docker_settings(RunnerSettings())["mounts"]}
    assert (stage_mounts[PICTURES_MOUNT]["Source"], stage_mounts[PICTURES_MOUNT]["ReadOnly"]) == (
        "shop-pictures", True)


@pytest.mark.usefixtures("compose_env")
def test_a_relative_keys_path_is_refused_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATSDOGS_SERVICE_API_KEYS_FILE", "api-keys")
    with pytest.raises(SettingsError, match="CATSDOGS_SERVICE_API_KEYS_FILE='api-keys'.*absolute"):
        _target()


def test_compose_hands_the_keys_file_and_the_rate_limit_on_off_by_default(tmp_path: Path) -> None:
    env_file = env_file_with_secrets(tmp_path)
    services = compose_config(env_file)["services"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert not env["CATSDOGS_SERVICE_API_KEYS_FILE"], name
        assert env["CATSDOGS_SERVICE_ENV_CATSDOGS_RATE_LIMIT_PER_MINUTE"] == "0", name
        assert env["CATSDOGS_SERVICE_ENV_CATSDOGS_RATE_LIMIT_CLIENT_HEADER"] == "x-real-ip"
    with env_file.open("a") as fh:
        fh.write(f"CATSDOGS_SERVICE_API_KEYS_FILE={KEYS}\nCATSDOGS_RATE_LIMIT_PER_MINUTE=120\n")
    services = compose_config(env_file)["services"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["CATSDOGS_SERVICE_API_KEYS_FILE"] == KEYS, name
        assert env["CATSDOGS_SERVICE_ENV_CATSDOGS_RATE_LIMIT_PER_MINUTE"] == "120", name
