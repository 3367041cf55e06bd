"""The local runner (`CATSDOGS_RUNNER=local`): each stage as a Bash task running
`catsdogs <stage> --set ...` in the Airflow environment (the venv's bin on PATH), from the
project's folder: hosts without Docker (`make demo`) and fast tests.

The stage writes its JSON summary to a temporary file ($CATSDOGS_SUMMARY_FILE); the task reads
it back and returns it (XCom `return_value`). Kaggle credentials reach ingest only.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk.exceptions import AirflowSkipException

from catsdogs.orchestration.runners.common import (
    StageMixin,
    airflow_context_env,
    checkout_dir,
    command_template,
    final_exit_codes,
    kaggle_credentials,
)
from catsdogs.orchestration.stage_table import Stage
from catsdogs.summary import SUMMARY_FILE_ENV


class StageBashOperator(StageMixin, BashOperator):
    """Local mode: `catsdogs <stage>` in the Airflow environment (the venv's bin on PATH)."""

    def __init__(self, *, stage: Stage, **kwargs: Any) -> None:
        checkout = checkout_dir()
        cwd = str(checkout) if checkout and (checkout / "params.yaml").is_file() else None
        super().__init__(bash_command=command_template(stage), append_env=True, cwd=cwd,
                         skip_on_exit_code=final_exit_codes(stage), **kwargs)
        self.stage_name = stage.name
        self.needs_kaggle = stage.needs_kaggle
        self.summary_file = ""
        self._link_mlflow(stage)

    def get_env(self, context: Any) -> dict:
        """Add the venv's bin to PATH, the summary file, the DAG run's ids and (ingest only)
        Kaggle credentials, after rendering."""
        env = super().get_env(context)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env[SUMMARY_FILE_ENV] = self.summary_file
        env.update(airflow_context_env(context))
        if self.needs_kaggle:
            env.update(kaggle_credentials())
        return env

    def execute(self, context: Any) -> Any:
        with tempfile.TemporaryDirectory(prefix="catsdogs-task-") as folder:
            self.summary_file = str(Path(folder, "summary.json"))
            try:
                super().execute(context)
            except AirflowSkipException as exc:
                raise self._final(exc) from None
            try:
                summary = json.loads(Path(self.summary_file).read_text())
            except (OSError, ValueError):
                summary = None
        return self._finish(summary)
