"""Ingest: fetch the raw images into `raw/{cat,dog}/` and write `raw/manifest.csv`.

The whole `raw/` folder is built in a temporary sibling and renamed into place, so an interrupted
download or copy leaves the previous `raw/` as it was. `raw/provenance.json` records the source
and whether it is a generated stand-in set (`catsdogs.data.provenance`).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections import Counter
from pathlib import Path

from catsdogs.config import Params
from catsdogs.data import provenance, sources
from catsdogs.data.manifest import RAW_COLUMNS, write_csv
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.storage import atomic_dir, fingerprint, is_up_to_date, sha256_file
from catsdogs.summary import Summary

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None,
                        help="kaggle:OWNER/DATASET, dir:PATH or archive:PATH (overrides "
                             "data.source in params.yaml)")


def _existing(value: str, kind: str) -> Path:
    path = Path(value).expanduser().resolve()
    ok = path.is_dir() if kind == "dir" else path.is_file()
    if not ok:
        what = "folder" if kind == "dir" else "archive file"
        raise UserError(f"{kind}:{value}: no such {what} ({path}); check the path")
    return path


def _stamp(kind: str, value: str, classes: list[str]) -> str:
    if kind == "dir":
        root = _existing(value, kind)
        return fingerprint("dir", str(root), sources.listing_fingerprint(root), classes)
    if kind == "archive":
        return fingerprint("archive", sha256_file(_existing(value, kind)), classes)
    return fingerprint("kaggle", value, classes)


def _fetch(kind: str, value: str, staging: Path) -> Path:
    """Unpacked files of an archive or Kaggle source, under `staging`."""
    if kind == "kaggle":
        from catsdogs.data.kaggle import download

        archive = download(value, staging / "download")
    else:
        archive = _existing(value, kind)
    sources.extract_archive(archive, staging / "files")
    sources.extract_nested(staging / "files")
    return staging / "files"


def run(params: Params, paths: DataPaths, source: str | None = None) -> Summary:
    """Copy/unpack/download the source into raw/ with a manifest (skipped when unchanged)."""
    spec = source or params.data.source
    kind, value = sources.parse_source(spec)
    classes = list(params.data.classes)
    stamp = _stamp(kind, value, classes)
    if is_up_to_date([paths.raw], stamp) and provenance.read(paths.raw) is not None:
        return Summary("ingest", f"{paths.raw} already holds {spec}", skipped=True)

    with atomic_dir(paths.raw, stamp=stamp) as tmp:
        if kind == "dir":
            root = _existing(value, kind)
            found = sources.scan(root, classes)
            rows = sources.place_files(found, tmp, move=False)
            origin = provenance.Provenance(f"dir:{root}", provenance.is_generated(root))
        else:
            staging = tmp / ".staging"
            files = _fetch(kind, value, staging)
            found = sources.scan(files, classes)
            rows = sources.place_files(found, tmp, move=True)
            named = f"archive:{_existing(value, kind)}" if kind == "archive" else f"kaggle:{value}"
            origin = provenance.Provenance(named, provenance.is_generated(files))
            shutil.rmtree(staging)
        if not rows:
            raise UserError(f"no labelled images found in {spec}: expected class folders "
                            f"named like {classes} (e.g. Cat/, cats/) or file names like "
                            f"{classes[0]}.1.jpg")
        write_csv(tmp / "manifest.csv", rows, RAW_COLUMNS)
        provenance.write(tmp, origin)

    counts = Counter(str(row["label"]) for row in rows)
    per_class = ", ".join(f"{label} {counts.get(label, 0)}" for label in classes)
    left_out = sum(found.skipped.values())
    if left_out:
        log.info("left out %d files (%s)", left_out, dict(found.skipped))
    if origin.synthetic:
        log.warning("%s is a GENERATED stand-in data set, not real photos: a model trained on it "
                    "is recorded as such. %s", spec, provenance.REAL_DATA_HINT)
    return Summary("ingest", f"{len(rows)} files ({per_class}) from {spec} into {paths.raw}"
                   + (" (GENERATED stand-in images, not real photos)" if origin.synthetic else "")
                   + (f"; left out {left_out} unlabelled/clutter files" if left_out else ""),
                   details={"files": len(rows), "per_class": dict(counts),
                            "left_out": dict(found.skipped), "source": spec,
                            "synthetic": origin.synthetic})
