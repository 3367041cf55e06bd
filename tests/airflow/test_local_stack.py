"""The local Airflow stack's pieces that need no running service: its environment (one source
for `make demo` and the tests) and the demo's closing summary."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from catsdogs.data.provenance import Provenance
from demo.local_airflow import admin_password, environment
from demo.steps import summary_lines
from tests.airflow.harness import REPO_ROOT


def test_env_for_the_shell_sources_and_keeps_secrets_private(tmp_path: Path) -> None:
    home = tmp_path / "airflow home"          # a space: the shell lines must be quoted
    argv = [sys.executable, "-m", "demo.local_airflow", "env", "--home",
            str(home), "--data-dir", str(tmp_path / "data"), "--mlflow-uri",
            "http://127.0.0.1:5999", "--port", "18080"]
    printed = subprocess.run(argv, capture_output=True, text=True, check=True,
                             cwd=REPO_ROOT).stdout
    shell = subprocess.run(["bash", "-c", f"{printed}\necho \"$AIRFLOW_HOME|$CATSDOGS_RUNNER|"
                            "$AIRFLOW__CORE__EXECUTION_API_SERVER_URL|$AIRFLOW_URL\""],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert shell == f"{home}|local|http://127.0.0.1:18080/execution/|http://127.0.0.1:18080"
    password = admin_password(home)
    assert password and password not in printed
    for name in ("passwords.json", "secrets.json"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600
    # Generated once: a second call keeps the secrets (running services keep their tokens valid).
    again = environment(home, tmp_path / "data", "http://127.0.0.1:5999", port=18080)
    assert again["AIRFLOW__API_AUTH__JWT_SECRET"] in printed
    assert admin_password(home) == password


def test_demo_summary_says_what_was_trained_and_how_to_try_it() -> None:
    record = {"url": "http://127.0.0.1:8080/dags/catsdogs_training/runs/r1", "summaries": {
        "train": {"run_id": "abc", "experiment_id": "7", "version": "3",
                  "test": {"f1": 0.9312, "accuracy": 0.925}},
        "promote": {"promoted": True, "skipped": False, "reason": "no champion yet"},
        "deploy": {"deployed": True, "message": "CatsDogsCNN v3 live on local at "
                   "http://127.0.0.1:3000 (was nothing); post-deploy check: 60 requests"}}}
    lines = "\n".join(summary_lines(record, "admin / pw", "http://127.0.0.1:5000",
                                    "http://127.0.0.1:3000",
                                    Provenance("dir:/x/synthetic", synthetic=True)))
    assert "login: admin / pw" in lines
    assert "F1 0.9312, accuracy 0.9250 (model v3)" in lines
    assert "promoted: no champion yet" in lines
    assert "Deployment  : CatsDogsCNN v3 live on local" in lines
    assert "http://127.0.0.1:5000/#/experiments/7/runs/abc" in lines
    assert "generated stand-in pictures" in lines and "KAGGLE_USERNAME" in lines
    assert "curl -F image=@cat.jpg http://127.0.0.1:3000/predict" in lines
    real = "\n".join(summary_lines(record, "admin / pw", "m", "s",
                                   Provenance("kaggle:x/y", synthetic=False)))
    assert "generated" not in real and "Trained on  : kaggle:x/y" in real


def test_demo_summary_of_a_run_that_changed_nothing() -> None:
    record = {"url": "u", "summaries": {
        "train": {"run_id": "abc", "experiment_id": "7", "version": "3", "skipped": True,
                  "test": {"f1": 0.5, "accuracy": 0.5}},
        "promote": {"skipped": True, "promoted": False,
                    "message": "CatsDogsCNN v3 is already the champion"}}}
    lines = summary_lines(record, "admin / pw", "m", "s", None)
    assert "Promotion   : up to date: CatsDogsCNN v3 is already the champion" in lines


def test_sweep_stops_task_processes_only(tmp_path: Path) -> None:
    """`make demo-stop`'s sweep: a task process of the demo's Airflow home (its own session, as
    Bash tasks run) is stopped; a shell that sourced env.sh, a serving slot and another home's
    task are left alone."""
    import os

    from catsdogs.deployment.targets.local import SERVING_MARKER_ENV
    from demo.local_airflow import sweep

    home = tmp_path / "airflow"
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    kinds = {
        "task": {"AIRFLOW_HOME": str(home), "AIRFLOW_CTX_DAG_ID": "catsdogs_training"},
        "shell": {"AIRFLOW_HOME": str(home)},
        "slot": {"AIRFLOW_HOME": str(home), "AIRFLOW_CTX_DAG_ID": "catsdogs_training",
                 SERVING_MARKER_ENV: str(tmp_path / "serving")},
        "other": {"AIRFLOW_HOME": str(tmp_path / "elsewhere"), "AIRFLOW_CTX_DAG_ID": "x"},
    }
    started = {kind: subprocess.Popen(["sleep", "300"], env={**base, **extra},
                                      start_new_session=True) for kind, extra in kinds.items()}
    try:
        stopped = sweep(home, timeout=10)
        assert [line.split()[0] for line in stopped] == [str(started["task"].pid)]
        assert started["task"].poll() is not None   # (reaped by the sweep: it is our child here)
        assert all(started[kind].poll() is None for kind in ("shell", "slot", "other"))
    finally:
        for process in started.values():
            process.kill()
            process.wait()
