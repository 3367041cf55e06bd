"""The `catsdogs` command as a user types it: help, stage list, readable errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from catsdogs.orchestration.stage_table import STAGE_NAMES, STAGES

CLI = [str(Path(sys.executable).parent / "catsdogs")]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, **(env or {})})


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


def test_sub_commands_are_the_stage_table() -> None:
    """Adding a stage is one entry in the stage table: the CLI and the DAG both read it."""
    from catsdogs.cli import build_parser
    from catsdogs.orchestration.stage_table import PIPELINE

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert list(commands.choices) == [stage.name for stage in STAGES]
    assert [stage.name for stage in PIPELINE] == list(STAGE_NAMES)
    assert "evaluate" in commands.choices and "evaluate" not in STAGE_NAMES


def test_summary_travels_as_json(tmp_path: Path, synthetic_images: Path) -> None:
    """`--summary-file` (what the Airflow task reads) and `--json` give the same document; a
    re-run says it skipped."""
    data, summary_file = tmp_path / "data", tmp_path / "summary.json"
    first = run_cli("ingest", "--source", f"dir:{synthetic_images}", "--data-dir", str(data),
                    "--summary-file", str(summary_file))
    assert first.returncode == 0, first.stderr
    document = json.loads(summary_file.read_text())
    assert document["stage"] == "ingest" and document["status"] == "done"
    assert document["skipped"] is False and document["message"] in first.stdout
    again = run_cli("ingest", "--source", f"dir:{synthetic_images}", "--data-dir", str(data),
                    "--json")
    assert again.returncode == 0, again.stderr
    document = json.loads(again.stdout)                     # nothing but the JSON on stdout
    assert (document["status"], document["skipped"]) == ("skipped", True)


def test_summary_is_strict_json() -> None:
    """Airflow's XCom API refuses NaN and infinities: a figure that could not be computed (a
    drift test's p-value on a constant column) travels as null, at any depth."""
    from catsdogs.summary import Summary

    summary = Summary("monitor", "drift checked", details={
        "score": float("nan"), "signals": {"width": {"p_value": float("nan"), "drift": False},
                                           "embedding": {"score": 0.91}},
        "limits": [float("inf"), 1.5]})
    document = summary.to_dict()
    assert document["score"] is None and document["signals"]["width"]["p_value"] is None
    assert document["signals"]["embedding"]["score"] == 0.91
    assert document["limits"] == [None, 1.5]
    json.dumps(document, allow_nan=False)   # what the XCom client sends


def test_stages_read_the_params_file_the_dags_read(tmp_path: Path, synthetic_images: Path) -> None:
    """$CATSDOGS_PARAMS (what the DAGs read their trigger form's defaults from) is every stage's
    params file too, so a run started without a form (nightly, asset-triggered) trains with the
    same params the form shows; `--params` wins."""
    chosen = tmp_path / "chosen.yaml"
    chosen.write_text(f"data:\n  source: dir:{synthetic_images}\n")
    other = tmp_path / "other.yaml"
    other.write_text(f"data:\n  source: dir:{tmp_path / 'nowhere'}\n")
    env = {"CATSDOGS_PARAMS": str(chosen)}
    result = run_cli("ingest", "--data-dir", str(tmp_path / "data"), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"] == f"dir:{synthetic_images}"
    refused = run_cli("ingest", "--params", str(other), "--data-dir", str(tmp_path / "d2"),
                      env=env)
    assert refused.returncode != 0 and "nowhere" in refused.stderr, refused.stderr
