"""Issue 15: pictures with broken EXIF in the raw data neither stop validate (it used to end in
a TypeError traceback, exit 1) nor get lost: their Orientation is applied, the rest ignored."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

from catsdogs.config import load_params
from catsdogs.paths import DataPaths
from catsdogs.stages import ingest, prepare
from tests.data.helpers import (
    EXPECTED_DROPS,
    MESSY_KEPT,
    MESSY_OVERRIDES,
    REPO,
    catsdogs,
    encode,
    messy_files,
    noise_image,
    write_tree,
)
from tests.fuzzing import broken_exif

GARBAGE_EXIF = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 40


def test_broken_exif_files_pass_validate_and_are_kept(tmp_path: Path) -> None:
    files = {**messy_files(),
             "cat/rotated_broken_exif.jpg": encode(noise_image(30), "JPEG", exif=broken_exif()),
             "dog/garbage_exif.jpg": encode(noise_image(31), "JPEG", exif=GARBAGE_EXIF)}
    raw = write_tree(tmp_path / "messy", files)
    paths = DataPaths(tmp_path / "data")
    params = load_params(REPO / "params.yaml", ["validation.min_samples_per_class=5",
                                                *MESSY_OVERRIDES])
    ingest.run(params, paths, source=f"dir:{raw}")

    validated = catsdogs("validate", "--data-dir", str(paths.root), "--set",
                         "validation.min_samples_per_class=5", *(
                             arg for o in MESSY_OVERRIDES for arg in ("--set", o)), timeout=300)
    assert validated.returncode == 0, validated.stderr[-3000:]
    assert "Traceback" not in validated.stderr
    facts = json.loads((paths.validation_reports / "summary.json").read_text())
    assert facts["success"] is True and facts["files"] == 38 and facts["decodable"] == 34

    prepare.run(params, paths)
    with (paths.prepared / "dropped.csv").open() as handle:
        dropped = list(csv.DictReader(handle))
    assert Counter(row["reason"] for row in dropped) == EXPECTED_DROPS
    with paths.prepared_manifest.open() as handle:
        kept = list(csv.DictReader(handle))
    assert Counter(row["label"] for row in kept) == {"cat": MESSY_KEPT["cat"] + 1,
                                                      "dog": MESSY_KEPT["dog"] + 1}
    assert {"cat/rotated_broken_exif.jpg", "dog/garbage_exif.jpg"} <= {row["path"] for row in kept}
