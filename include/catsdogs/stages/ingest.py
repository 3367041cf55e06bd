"""Ingest: fetch the raw images into `raw/{cat,dog}/` and write `raw/manifest.csv`.

The whole `raw/` folder is built in a temporary sibling and renamed into place, so an interrupted
download or copy leaves the previous `raw/` as it was. `raw/provenance.json` records the source
and whether it is a generated stand-in set (`catsdogs.data.provenance`).

With `data.feedback` on, the labelled production pictures of the prediction log
(`$CATSDOGS_PREDICTION_LOG_URL`, else the data dir's SQLite log) are first copied into the
content-addressed store `<data dir>/feedback/`, then its cat and dog pictures (labelled since
`feedback.since`, once there are `feedback.min_labels` of them) are merged into `raw/` as
`raw/<label>/prod-<sha256[:16]>.<ext>`, listed in `raw/feedback.csv` (`catsdogs.data.feedback`).
The summary's `feedback` is how many were merged. Its `neither` pictures (labelled since
`feedback.since`, however few) go to `raw/neither/`, listed in `raw/neither.csv`, outside the
manifest: the train stage's out-of-distribution calibration reads them (`feedback_neither`).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from catsdogs.config import CLASSES, NEITHER, Params
from catsdogs.data import feedback, provenance, sources
from catsdogs.data.manifest import RAW_COLUMNS, write_csv
from catsdogs.errors import UserError
from catsdogs.monitoring.prediction_log import log_url
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


def _sync(url: str, paths: DataPaths) -> feedback.Synced:
    """Sync the data dir's feedback store with the prediction log at `url`; an unreachable log
    is logged and leaves the store as it was (`Synced.unreachable`): ingest then merges what
    earlier runs stored."""
    import sqlalchemy as sa

    from catsdogs.monitoring.prediction_log import read_labelled

    try:
        labelled = read_labelled(url)
    except sa.exc.SQLAlchemyError as exc:
        synced = feedback.stored(paths.feedback)
        log.warning("prediction log %s unreachable (%s): merging the %d labelled pictures stored "
                    "earlier", sa.make_url(url).render_as_string(hide_password=True),
                    type(exc).__name__, len(synced.entries))
        synced.unreachable = type(exc).__name__
        return synced
    return feedback.sync(labelled, paths.feedback)


def _feedback(params: Params, paths: DataPaths) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The stored labelled production pictures to merge (after syncing the store with the
    prediction log), and the summary's `feedback_store` details."""
    if not params.data.feedback:
        return [], {"merged": False, "reason": "data.feedback is off"}
    synced = _sync(log_url(paths.root), paths)
    entries = feedback.chosen(synced.entries, params.feedback.since_time)
    labelled = sum(1 for entry in entries if entry["label"] in CLASSES)
    details: dict[str, Any] = {"stored": len(synced.entries), "added": synced.added,
                               "relabelled": synced.relabelled, "missing": synced.missing,
                               "log_unreachable": synced.unreachable, "cat_or_dog": labelled}
    if labelled < params.feedback.min_labels:   # the neither pictures are kept all the same
        return [e for e in entries if e["label"] == NEITHER], details | {"merged": False,
                              "reason": f"{labelled} labelled cat/dog pictures, fewer than "
                                        f"feedback.min_labels={params.feedback.min_labels}"}
    return entries, details | {"merged": True}


def run(params: Params, paths: DataPaths, source: str | None = None) -> Summary:
    """Copy/unpack/download the source into raw/ with a manifest, merged with the labelled
    production pictures (`catsdogs.data.feedback`; skipped when neither changed)."""
    spec = source or params.data.source
    kind, value = sources.parse_source(spec)
    classes = list(params.data.classes)
    entries, store = _feedback(params, paths)
    stamp = _stamp(kind, value, classes)
    if entries:   # without any, the stamp of a source alone (an existing raw/ stays valid)
        stamp = fingerprint(stamp, [(e["sha256"], e["label"]) for e in entries])
    if is_up_to_date([paths.raw], stamp) and provenance.read(paths.raw) is not None:
        merged_before = len(feedback.production(paths.raw))
        return Summary("ingest", f"{paths.raw} already holds {spec}"
                       + (f" and {merged_before} labelled production pictures"
                          if merged_before else ""),
                       skipped=True, details={"feedback": merged_before,
                                              "feedback_store": store})

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
        merged = feedback.merge(entries, paths.feedback, tmp, {str(r["sha256"]) for r in rows})
        rows += merged.rows
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
                   + (f"; left out {left_out} unlabelled/clutter files" if left_out else "")
                   + (f"; {len(merged.rows)} of them labelled production pictures (labelled "
                      f"{merged.first_labelled_at} .. {merged.last_labelled_at})"
                      if merged.rows else "")
                   + (f"; {merged.neither} 'neither' production pictures kept in "
                      f"{paths.raw / NEITHER} for the out-of-distribution calibration"
                      if merged.neither else ""),
                   details={"files": len(rows), "per_class": dict(counts),
                            "left_out": dict(found.skipped), "source": spec,
                            "synthetic": origin.synthetic,
                            "feedback": len(merged.rows),
                            "feedback_per_class": dict(merged.per_class),
                            "feedback_neither": merged.neither,
                            "feedback_in_source": merged.in_source,
                            "feedback_labelled_from": merged.first_labelled_at,
                            "feedback_labelled_to": merged.last_labelled_at,
                            "feedback_store": store})
