"""Prepare: keep only usable, unique, unambiguous images; write EDA.

Runs only on raw data that passed `catsdogs validate`, and reads what decoding found for each file
from validate's report (`reports/validation/files.csv`) instead of decoding every picture again. Drops, with the reason recorded in
`prepared/dropped.csv`: files that do not decode (empty, not_an_image, truncated, too_many_pixels,
...), extensions outside `validation.allowed_extensions` (bad_extension), images smaller than
`validation.min_width` x `min_height` (too_small), the same bytes under two labels (label_conflict,
every copy) and exact duplicates within a label (duplicate, all but the first by path).
Kept files are hard-linked (or copied) into `prepared/<label>/`, listed in `prepared/manifest.csv`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from catsdogs.config import Params
from catsdogs.data import provenance
from catsdogs.data.manifest import RAW_COLUMNS, extension, read_csv, write_csv
from catsdogs.data.validation_report import read_files, require_passed
from catsdogs.paths import DataPaths
from catsdogs.storage import atomic_dir, fingerprint, is_up_to_date, sha256_file
from catsdogs.summary import Summary

log = logging.getLogger(__name__)

PREPARED_COLUMNS = ("path", "label", "bytes", "sha256", "width", "height", "mode", "format")
DROPPED_COLUMNS = ("path", "label", "reason", "detail")


def _screen(params: Params, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                                  list[dict[str, Any]]]:
    """Split probed rows into (kept, dropped) with reasons."""
    rules = params.validation
    kept, dropped = [], []
    for row in rows:
        reason, detail = "", ""
        if not row["decodable"]:
            reason, detail = row["reason"], row["detail"]
        elif extension(row["path"]) not in rules.allowed_extensions:
            reason, detail = "bad_extension", f"not one of {rules.allowed_extensions}"
        elif row["width"] < rules.min_width or row["height"] < rules.min_height:
            reason = "too_small"
            detail = f"{row['width']}x{row['height']} < {rules.min_width}x{rules.min_height}"
        (dropped if reason else kept).append({**row, "reason": reason, "detail": detail})

    labels_by_hash: dict[str, set[str]] = defaultdict(set)
    for row in kept:
        labels_by_hash[row["sha256"]].add(row["label"])
    unique, first_seen = [], {}
    for row in sorted(kept, key=lambda r: r["path"]):
        if len(labels_by_hash[row["sha256"]]) > 1:
            dropped.append({**row, "reason": "label_conflict", "detail": "same image under "
                            f"{sorted(labels_by_hash[row['sha256']])}"})
        elif row["sha256"] in first_seen:
            dropped.append({**row, "reason": "duplicate",
                            "detail": f"same bytes as {first_seen[row['sha256']]}"})
        else:
            first_seen[row["sha256"]] = row["path"]
            unique.append(row)
    return unique, sorted(dropped, key=lambda r: r["path"])


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


def run(params: Params, paths: DataPaths) -> Summary:
    """Screen raw/ into prepared/ (+ dropped.csv) and write eda/ (skipped when unchanged)."""
    from catsdogs.data import eda

    require_passed(params, paths)
    raw_rows = read_csv(paths.raw_manifest, RAW_COLUMNS, "ingest")
    classes = list(params.data.classes)
    stamp = fingerprint(sha256_file(paths.raw_manifest), params.fingerprint("validation"),
                        classes, params.split.seed)
    if is_up_to_date([paths.prepared, paths.eda], stamp):
        provenance.carry(paths.raw, paths.prepared)
        return Summary("prepare", f"{paths.prepared} is up to date", skipped=True)

    # What decoding found for each file, from validate's report (each picture is decoded once).
    probes = {row["path"]: row for row in read_files(paths)}
    rows = [{**probes[row["path"]], **row} for row in raw_rows]
    kept, dropped = _screen(params, rows)

    with atomic_dir(paths.prepared, stamp=stamp) as tmp:
        for row in kept:
            (tmp / row["label"]).mkdir(exist_ok=True)
            _link(paths.raw / row["path"], tmp / row["path"])
        write_csv(tmp / "manifest.csv", kept, PREPARED_COLUMNS)
        write_csv(tmp / "dropped.csv", dropped, DROPPED_COLUMNS)
        with atomic_dir(paths.eda, stamp=stamp) as eda_tmp:
            eda.write(eda_tmp, raw_rows, kept, dropped, classes, tmp, params.split.seed)
        provenance.carry(paths.raw, tmp)

    reasons = Counter(row["reason"] for row in dropped)
    per_class = Counter(row["label"] for row in kept)
    dropped_text = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) or "none"
    return Summary("prepare", f"kept {len(kept)} of {len(raw_rows)} images ("
                   + ", ".join(f"{c} {per_class.get(c, 0)}" for c in classes)
                   + f"); dropped: {dropped_text}; EDA in {paths.eda}",
                   details={"kept": len(kept), "per_class": dict(per_class),
                            "dropped": dict(reasons)})
