"""The `catsdogs` command as a user types it: help, stage list, readable errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from catsdogs.orchestration.stage_table import STAGE_NAMES, STAGES

CLI = [str(Path(sys.executable).parent / "catsdogs")]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_every_stage() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in (*STAGE_NAMES, "evaluate"):
        assert name in result.stdout


def test_user_error_is_one_readable_line_without_traceback(tmp_path: Path) -> None:
    result = run_cli("validate", "--set", "train.epochs=zero", "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert "train.epochs" in result.stderr
    assert "Traceback" not in result.stderr


def test_stage_table_commands_are_cli_commands() -> None:
    for stage in STAGES:
        argv = stage.command(["train.epochs=1"])
        assert argv == ["catsdogs", stage.name, "--set", "train.epochs=1"]
        assert run_cli(stage.name, "--help").returncode == 0
