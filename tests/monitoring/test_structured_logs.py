"""The structured log lines (docs/logs.md): with CATSDOGS_LOG_FORMAT=json a stage's lines and the
service's own lines are JSON objects carrying the stage, the Airflow run and the model version as
fields; in text mode a stage's error stays one readable line; and secrets in the environment never
appear in either, whatever the line holds (a URL's password, a key in a message, a traceback)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from catsdogs.console import MASK
from tests.e2e.compose import REPO_ROOT

KAGGLE_KEY = "kaggle-key-0123456789abcdef"
DB_PASSWORD = "db-password-4f1c9e"
JWT_SECRET = "jwt-secret-77aa31"
SECRETS = {"KAGGLE_KEY": KAGGLE_KEY, "POSTGRES_PASSWORD": DB_PASSWORD,
           "AIRFLOW__API_AUTH__JWT_SECRET": JWT_SECRET}
AIRFLOW_RUN = {"AIRFLOW_CTX_DAG_ID": "catsdogs_training",
               "AIRFLOW_CTX_DAG_RUN_ID": "scheduled__2026-12-07T02:00:00+00:00"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CATSDOGS_", "AIRFLOW_CTX"))}
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "include"), str(REPO_ROOT)]),
            **extra}


def _json_lines(text: str) -> list[dict]:
    """Every non-empty line of `text` as a JSON object (a line that is not one fails)."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no log lines"
    return [json.loads(line) for line in lines]


def _secret_free(text: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"{name}'s value in the log"


def test_a_failed_stage_ends_with_one_json_record_of_its_run(tmp_path: Path) -> None:
    """The real CLI in json mode: its error (whose text holds the Kaggle key: the data dir is
    named after it) is an ERROR record with the stage's fields, the key masked."""
    data_dir = tmp_path / KAGGLE_KEY
    data_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "catsdogs.cli", "validate", "--data-dir", str(data_dir)],
        env=_env(CATSDOGS_LOG_FORMAT="json", **SECRETS, **AIRFLOW_RUN), cwd=tmp_path,
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stderr
    (record,) = _json_lines(result.stderr)
    assert record["level"] == "ERROR" and record["logger"] == "catsdogs.cli"
    assert record["stage"] == "validate"
    assert record["dag_id"] == AIRFLOW_RUN["AIRFLOW_CTX_DAG_ID"]
    assert record["run_id"] == AIRFLOW_RUN["AIRFLOW_CTX_DAG_RUN_ID"]
    assert record["message"].startswith("catsdogs validate: error: ")
    assert f"{tmp_path}/{MASK}/raw/manifest.csv" in record["message"]
    assert record["timestamp"].endswith("+00:00")
    _secret_free(result.stderr + result.stdout)


def test_text_mode_keeps_the_readable_error_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "catsdogs.cli", "validate", "--data-dir", str(tmp_path)],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"catsdogs validate: error: {tmp_path}/raw/manifest.csv "
                                     "does not exist: run `catsdogs ingest` first")


def test_a_bad_log_format_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "catsdogs.cli", "validate", "--data-dir", str(tmp_path)],
        env=_env(CATSDOGS_LOG_FORMAT="xml"), cwd=tmp_path, capture_output=True, text=True,
        timeout=300, check=False)
    assert result.returncode != 0
    assert "CATSDOGS_LOG_FORMAT" in result.stderr and "Traceback" not in result.stderr


LOGGING_SCRIPT = """
import logging, os
from catsdogs.console import bind_log_fields, setup_logging
setup_logging(stage="deploy", dag_id="catsdogs_training", run_id="manual__1")
bind_log_fields(model="CatsDogsCNN", model_version="7")
log = logging.getLogger("catsdogs.deployment")
log.info("backend store %s", "postgresql+psycopg2://catsdogs:" + os.environ["POSTGRES_PASSWORD"]
         + "@postgres:5432/mlflow")
log.warning("kaggle answered 401 for key %s", os.environ["KAGGLE_KEY"])
log.info("conf", extra={"conf": {"jwt": os.environ["AIRFLOW__API_AUTH__JWT_SECRET"]}})
try:
    raise RuntimeError("login failed: password=" + os.environ["POSTGRES_PASSWORD"])
except RuntimeError:
    log.exception("the rollout failed")
bind_log_fields(model_version=None)
log.info("after the rollout")
"""


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_secrets_in_the_environment_never_reach_a_line(log_format: str) -> None:
    """The structured logger with secrets in its environment and in every part of a record:
    argument, `extra=` field, exception message and traceback."""
    result = subprocess.run([sys.executable, "-c", LOGGING_SCRIPT],
                            env=_env(CATSDOGS_LOG_FORMAT=log_format, **SECRETS),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    _secret_free(result.stderr)
    # text mode leaves `extra=` fields out: the URL, the key, the exception (and the field)
    assert result.stderr.count(MASK) == (3 if log_format == "text" else 4), result.stderr
    if log_format == "text":
        assert "INFO catsdogs.deployment: backend store postgresql+psycopg2://catsdogs:***@" \
            in result.stderr
        return
    records = [r for r in _json_lines(result.stderr) if r["logger"] == "catsdogs.deployment"]
    assert [r["level"] for r in records] == ["INFO", "WARNING", "INFO", "ERROR", "INFO"]
    for record in records[:4]:
        assert {k: record[k] for k in ("stage", "dag_id", "run_id", "model", "model_version")} \
            == {"stage": "deploy", "dag_id": "catsdogs_training", "run_id": "manual__1",
                "model": "CatsDogsCNN", "model_version": "7"}
    assert "model_version" not in records[4]  # unbound again
    assert records[2]["conf"] == {"jwt": MASK}
    assert "RuntimeError: login failed: password=***" in records[3]["exc_info"]


@pytest.mark.services
def test_the_service_writes_json_lines_with_its_model_version(mlflow_server: str,
                                                              tmp_path: Path) -> None:
    """The real `bentoml serve` with CATSDOGS_LOG_FORMAT=json and secrets in its environment:
    its own lines (model ready, each refusal) are JSON with the model's version; a refusal says
    its reason and status, never the refused content; no secret is in the log."""
    from tests.serving.conftest import serve_tiny

    offered = "http://internal.example/secret-path.jpg"
    # a model name of its own: the session's server also holds the serving tests' model, whose
    # @champion and history they check
    with serve_tiny(mlflow_server, tmp_path, model_name="CatsDogsStructuredLogs",
                    extra_env={"CATSDOGS_LOG_FORMAT": "json", **SECRETS}) as server:
        refused = requests.post(f"{server.url}/predict_base64", json={"image": offered},
                                timeout=60)
        assert refused.status_code == 400
        bad = requests.post(f"{server.url}/predict_base64",
                            json={"image": base64.b64encode(b"x").decode() + "%%"}, timeout=60)
        assert bad.status_code == 400
        log = server.log_file.read_text(errors="replace")
    _secret_free(log)
    assert offered not in log
    records = [json.loads(line) for line in log.splitlines()
               if line.startswith("{") and '"logger": "bentoservice' in line]
    ready = [r for r in records if r["message"].startswith("model ") and " ready on " in r["message"]]
    assert ready and all(r["model_version"] == server.version for r in ready), records
    refusals = [r for r in records if r["message"].startswith("refused a request")]
    assert {(r["reason"], r["status"]) for r in refusals} >= {("url_not_accepted", 400)}, records
    assert all(r["model_version"] == server.version and r["model_run_id"] for r in refusals)
