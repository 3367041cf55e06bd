"""The validate stage's report folder (`reports/validation/`) as the contract between validate and
the stages after it: the gate's verdict (`summary.json`) and the per-file table (`files.csv`).

Validate decodes every raw picture once and writes both; prepare reads the table instead of
decoding everything again, and refuses to run unless the verdict is a pass for the current raw
manifest and params (`require_passed`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from catsdogs.config import Params
from catsdogs.data.manifest import read_csv, write_csv
from catsdogs.errors import GateFailed, UserError
from catsdogs.paths import DataPaths
from catsdogs.storage import fingerprint, sha256_file

SUMMARY_NAME = "summary.json"
FILES_NAME = "files.csv"
FILE_COLUMNS = ("path", "label", "extension", "decodable", "reason", "detail", "width", "height",
                "mode", "format")
REPORT_VERSION = 2  # 2: the per-file table; older reports are stale and validate runs again


def stamp_for(params: Params, paths: DataPaths) -> tuple[str, str]:
    """(fingerprint of the raw manifest + validation params + classes + report version,
    sha256 of the raw manifest)."""
    manifest_sha = sha256_file(paths.raw_manifest)
    return fingerprint(manifest_sha, params.fingerprint("validation"),
                       list(params.data.classes), REPORT_VERSION), manifest_sha


def write_files(folder: Path, rows: list[dict[str, Any]]) -> None:
    """The per-file table: one row per raw manifest entry with what decoding found."""
    write_csv(folder / FILES_NAME, rows, FILE_COLUMNS)


def read_files(paths: DataPaths) -> list[dict[str, Any]]:
    """The per-file table of the current report, typed: `decodable` a bool, `width`/`height`
    ints (None for undecodable files)."""
    rows = read_csv(paths.validation_reports / FILES_NAME, FILE_COLUMNS, "validate")
    for row in rows:
        row["decodable"] = row["decodable"] == "True"
        for key in ("width", "height"):
            row[key] = int(row[key]) if row[key] else None
    return rows


def require_passed(params: Params, paths: DataPaths) -> None:
    """Refuse to go on unless validation passed on the current raw manifest and params."""
    summary_file = paths.validation_reports / SUMMARY_NAME
    if not paths.raw_manifest.is_file():
        raise UserError(f"{paths.raw_manifest} does not exist: run `catsdogs ingest` first")
    expected, _ = stamp_for(params, paths)
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError):
        summary = {}
    if summary.get("fingerprint") != expected:
        raise UserError("the raw data has not been validated with the current params: run "
                        "`catsdogs validate` first")
    if not summary.get("success"):
        raise GateFailed(f"the raw data failed validation (see {summary_file}); fix the data "
                         "and run `catsdogs ingest` and `catsdogs validate` again")
