"""Validate: the Great Expectations gate over the raw manifest.

Every file is decoded once to learn whether it is usable and its size; the suite in
`catsdogs.data.validation_suite` then checks extensions, labels, decodable share, minimum size,
samples per class and class imbalance. Reports go to `reports/validation/`: `gx_result.json` (the GX
validation results), `data_docs/index.html` (GX Data Docs), `summary.json` and `files.csv` (what
decoding found for each file, read by prepare: see `catsdogs.data.validation_report`). A failed
expectation raises
`GateFailed` with a table of what failed, so nothing downstream runs on bad data.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from catsdogs.config import Params
from catsdogs.data.manifest import RAW_COLUMNS, extension, read_csv
from catsdogs.data.validation_report import SUMMARY_NAME, stamp_for, write_files
from catsdogs.errors import GateFailed
from catsdogs.paths import DataPaths
from catsdogs.storage import atomic_dir, is_up_to_date, write_stamp
from catsdogs.summary import Summary

log = logging.getLogger(__name__)


def _file_rows(paths: DataPaths, rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Decode every raw file once (all cores): the per-file table (`FILE_COLUMNS` of
    `catsdogs.data.validation_report`)."""
    from catsdogs.data.probe import probe_all

    probes = probe_all([paths.raw / row["path"] for row in rows])
    return [{"path": row["path"], "label": row["label"], "extension": extension(row["path"]),
             **info} for row, info in zip(rows, probes, strict=True)]


def run(params: Params, paths: DataPaths) -> Summary:
    """Validate raw/manifest.csv; raise GateFailed listing failed expectations."""
    from catsdogs.data import validation_suite

    manifest = read_csv(paths.raw_manifest, RAW_COLUMNS, "ingest")
    stamp, manifest_sha = stamp_for(params, paths)
    target = paths.validation_reports
    if is_up_to_date([target], stamp):
        return Summary("validate", f"{len(manifest)} files already passed ({target})",
                       skipped=True)

    rows = _file_rows(paths, manifest)
    classes = list(params.data.classes)
    files, per_class = validation_suite.tables(rows, classes)
    with atomic_dir(target) as tmp:
        outcome = validation_suite.run_suite(files, per_class, params, tmp / "data_docs")
        (tmp / "gx_result.json").write_text(json.dumps(outcome.result, indent=2, default=str))
        summary = {
            "success": outcome.success, "fingerprint": stamp, "raw_manifest_sha256": manifest_sha,
            "files": len(rows), "decodable": int(files["decodable"].sum()),
            "per_class": {str(r.label): int(r.count) for r in per_class.itertuples()},
            "expectations": outcome.evaluated, "failed": outcome.failures,
            "data_docs": "data_docs/index.html",
        }
        (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
        write_files(tmp, rows)
        if outcome.success:
            write_stamp(tmp, stamp)
    report = Path(target, "data_docs", "index.html")
    if not outcome.success:
        raise GateFailed(
            f"{len(outcome.failures)} of {outcome.evaluated} expectations failed on "
            f"{paths.raw_manifest}:\n{validation_suite.failure_table(outcome.failures)}\n"
            f"Report: {report}. Fix the source data (or the validation section of params.yaml) "
            "and run `catsdogs ingest` and `catsdogs validate` again.")
    return Summary("validate", f"{outcome.evaluated} expectations passed on {len(rows)} files "
                   f"({summary['decodable']} decodable); report {report}",
                   details=summary)
