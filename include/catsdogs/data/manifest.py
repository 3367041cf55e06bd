"""Manifest CSV files: one row per image, POSIX paths relative to the manifest's folder."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from catsdogs.errors import UserError
from catsdogs.storage import atomic_file

RAW_COLUMNS = ("path", "label", "bytes", "sha256")


def write_csv(target: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> int:
    """Write rows (extra keys ignored) atomically; returns the number of rows."""
    count = 0
    with atomic_file(target) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def read_csv(source: Path, required: Sequence[str], produced_by: str) -> list[dict[str, str]]:
    """Read a manifest; a missing file or column is a UserError naming the stage to run."""
    if not source.is_file():
        raise UserError(f"{source} does not exist: run `catsdogs {produced_by}` first")
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(required) - set(reader.fieldnames or ())
        if missing:
            raise UserError(f"{source} lacks columns {sorted(missing)}: re-run "
                            f"`catsdogs {produced_by}`")
        return list(reader)


def extension(path: str) -> str:
    """Lower-case extension without the dot ('' when none)."""
    suffix = Path(path).suffix
    return suffix[1:].lower() if suffix else ""
