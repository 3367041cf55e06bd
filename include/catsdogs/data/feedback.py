"""Labelled production pictures as training data (issue 30, part 3).

A labelled production picture is a prediction-log row whose `picture` (the kept upload's path)
and `true_label` are set (`catsdogs.monitoring.prediction_log.read_labelled`). `catsdogs ingest`
copies each into a content-addressed store in the data dir before merging:

- `<data dir>/feedback/pictures/<sha256><ext>`: the upload's bytes, named by their sha256 (the
  same picture labelled twice is stored once; written to a temporary name and renamed, so a
  killed copy leaves no half-written picture);
- `<data dir>/feedback/index.csv` (`INDEX_COLUMNS`): one row per picture, the latest label (by
  `labelled_at`) winning, kept across runs: a picture the service's retention deletes later stays
  in the store, so a re-run of ingest merges the same set;
- `<data dir>/feedback/synced.json`: when the log was last read (`read_at`, UTC ISO): labels
  after it are the ones a next training run has not seen (`new_labels`).

Ingest then copies the cat and dog pictures into `raw/<label>/prod-<sha256[:16]><ext>` and lists
them in `raw/feedback.csv` (`MERGED_COLUMNS`); `neither` pictures go to
`raw/neither/prod-<sha256[:16]><ext>`, listed in `raw/neither.csv` (same columns), outside the raw
manifest (so validate, prepare and transform never see them): the train stage reads them
(`known_ood`) as known out-of-distribution pictures for the OOD threshold
(`catsdogs.monitoring.ood.calibrate`). A picture whose bytes the source holds (so possibly one of
the test split) is left out of both. `transform` reads `raw/feedback.csv` (`production`) to keep
production pictures out of the fixed test split (`near_duplicates`) and to hold out a share of
them, chosen by content hash (`is_held_out`), as the recent-production test set.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catsdogs.config import CLASSES, NEITHER
from catsdogs.data.manifest import write_csv
from catsdogs.storage import atomic_file, sha256_file

log = logging.getLogger(__name__)

INDEX = "index.csv"
SYNCED = "synced.json"
PICTURES = "pictures"
MERGED = "feedback.csv"
KNOWN_OOD = "neither.csv"   # raw/neither.csv: the neither pictures under raw/<NEITHER>/
INDEX_COLUMNS = ("sha256", "file", "label", "labelled_at", "prediction_id")
MERGED_COLUMNS = ("path", "sha256", "label", "labelled_at", "prediction_id")
PREFIX = "prod-"
HELD_OUT = "production_test"   # transformed/<HELD_OUT>/<label>/: the recent-production test set
HASH_SIZE = 8   # average hash of an 8x8 grey thumbnail: 64 bits


@dataclass
class Synced:
    """The store after a sync: `entries` by sha256, and what this sync did."""

    entries: dict[str, dict[str, str]]
    added: int = 0               # pictures copied into the store by this sync
    relabelled: int = 0          # pictures whose label a later feedback changed
    missing: int = 0             # labelled rows whose picture file was gone (never stored)
    unreachable: str = ""        # the log's error when it could not be read ("" when read)


@dataclass
class Merged:
    """What ingest merged into raw/: manifest rows plus the summary's numbers."""

    rows: list[dict[str, object]] = field(default_factory=list)
    per_class: Counter[str] = field(default_factory=Counter)
    neither: int = 0             # neither pictures kept in raw/neither/ (known out of distribution)
    in_source: int = 0           # same bytes as a picture of the configured source: left out
    first_labelled_at: str = ""
    last_labelled_at: str = ""


def _rows_by_hash(path: Path) -> dict[str, dict[str, str]]:
    """The rows of one of our CSV files by their `sha256` (none when the file is absent)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["sha256"]: row for row in csv.DictReader(handle)}


def read_at(store: Path) -> dt.datetime | None:
    """When ingest last read the prediction log (UTC), or None when it never did."""
    marker = store / SYNCED
    if not marker.is_file():
        return None
    return dt.datetime.fromisoformat(json.loads(marker.read_text())["read_at"])


def _store_picture(source: Path, digest: str, store: Path) -> str:
    """Copy `source` into the store as `<digest><ext>` (atomically); the stored file's name."""
    name = digest + source.suffix.lower()
    target = store / PICTURES / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target, "wb") as tmp:
            shutil.copyfile(source, tmp)
    return name


def sync(labelled: Sequence[Any], store: Path, now: dt.datetime | None = None) -> Synced:
    """Copy the labelled production pictures `labelled` (the prediction log's
    `read_labelled`: objects with prediction_id, picture, label, labelled_at) into `store` and
    rewrite its index (the later label of a picture wins)."""
    entries = _rows_by_hash(store / INDEX)
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    result = Synced(entries)
    if not labelled and not store.exists():
        return result   # nothing labelled yet: no store in the data dir
    for picture in labelled:
        source = Path(picture.picture)
        try:
            digest = sha256_file(source)
            name = _store_picture(source, digest, store)
        except OSError:
            result.missing += 1   # deleted by the service's retention before it was stored
            continue
        at = picture.labelled_at.isoformat()
        known = entries.get(digest)
        if known is None:
            result.added += 1
        elif known["labelled_at"] > at:
            continue   # a later label of the same picture is stored already
        elif known["label"] != picture.label:
            result.relabelled += 1
        entries[digest] = {"sha256": digest, "file": name, "label": picture.label,
                           "labelled_at": at, "prediction_id": picture.prediction_id}
    store.mkdir(parents=True, exist_ok=True)
    write_csv(store / INDEX, sorted(entries.values(), key=lambda e: e["sha256"]), INDEX_COLUMNS)
    with atomic_file(store / SYNCED) as tmp:
        tmp.write_text(json.dumps({"read_at": moment.isoformat()}))
    log.info("feedback store %s: %d labelled pictures (%d new, %d relabelled, %d missing)",
             store, len(entries), result.added, result.relabelled, result.missing)
    return result


def stored(store: Path) -> Synced:
    """The store as earlier syncs left it (nothing read from the log)."""
    return Synced(_rows_by_hash(store / INDEX))


def chosen(entries: dict[str, dict[str, str]], since: dt.datetime | None) -> list[dict[str, str]]:
    """The stored pictures labelled at/after `since` (all when None), by sha256."""
    return [entry for _digest, entry in sorted(entries.items())
            if since is None or dt.datetime.fromisoformat(entry["labelled_at"]) >= since]


def merge(entries: Sequence[dict[str, str]], store: Path, target: Path,
          source_hashes: set[str]) -> Merged:
    """Copy the cat and dog pictures of `entries` into `target/<label>/` (the raw folder being
    built) and write `target/feedback.csv`; the `neither` pictures into `target/neither/`, listed
    in `target/neither.csv` (written only when there is one). Pictures whose bytes the source
    already holds are counted (`in_source`) and left out."""
    merged = Merged()
    times: list[str] = []
    listed: list[dict[str, str]] = []
    unknown: list[dict[str, str]] = []
    for entry in entries:
        label = entry["label"]
        if label not in (*CLASSES, NEITHER):
            log.warning("feedback picture %s has label %r: left out", entry["sha256"], label)
            continue
        if entry["sha256"] in source_hashes:
            merged.in_source += 1
            continue
        stored = store / PICTURES / entry["file"]
        relative = f"{label}/{PREFIX}{entry['sha256'][:16]}{stored.suffix}"
        (target / label).mkdir(exist_ok=True)
        shutil.copyfile(stored, target / relative)
        if label == NEITHER:
            merged.neither += 1
            unknown.append({**entry, "path": relative})
            continue
        merged.rows.append({"path": relative, "label": label, "bytes": stored.stat().st_size,
                            "sha256": entry["sha256"]})
        listed.append({**entry, "path": relative})
        merged.per_class[label] += 1
        times.append(entry["labelled_at"])
    if times:
        merged.first_labelled_at, merged.last_labelled_at = min(times), max(times)
    write_csv(target / MERGED, listed, MERGED_COLUMNS)
    if unknown:
        write_csv(target / KNOWN_OOD, unknown, MERGED_COLUMNS)
    return merged


def known_ood(raw: Path) -> list[Path]:
    """The neither pictures ingest kept (`raw/neither.csv`), path-sorted; none when absent."""
    return sorted(raw / row["path"] for row in _rows_by_hash(raw / KNOWN_OOD).values())


def production(raw: Path) -> dict[str, dict[str, str]]:
    """The production pictures of raw/ by sha256 (`raw/feedback.csv`; none when absent)."""
    return _rows_by_hash(raw / MERGED)


def is_held_out(sha256: str, share: float) -> bool:
    """Whether a production picture belongs to the recent-production test set: the first 8 hex
    digits of its sha256 as a fraction of 2**32, below `share` (deterministic, about `share` of
    the pictures, the same answer in every run)."""
    return int(sha256[:8], 16) / 0x1_0000_0000 < share


def average_hash(path: Path) -> Any:
    """The 64-bit average hash (`imagehash.average_hash`, 8x8 grey) of a picture file."""
    import imagehash
    from PIL import Image

    with Image.open(path) as image:
        image.draft("L", (HASH_SIZE * 8, HASH_SIZE * 8))
        return imagehash.average_hash(image, hash_size=HASH_SIZE)


def near_duplicates(candidates: Iterable[Path], reference: Iterable[Path],
                    bits: int) -> set[Path]:
    """The `candidates` whose average hash is within `bits` (Hamming distance) of a
    `reference` picture's: the same photo re-encoded, resized or lightly edited."""
    hashes = [average_hash(path) for path in reference]
    if not hashes:
        return set()
    return {path for path in candidates
            if min(average_hash(path) - other for other in hashes) <= bits}


def _split_rows(splits_csv: Path, raw: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """(splits.csv row, raw/feedback.csv row) of each production picture of a transformed data
    set: the one rule for which transformed pictures came from production (a `splits.csv` row
    whose `source` is a path raw/feedback.csv lists). Nothing when either file is absent."""
    listed = {row["path"]: row for row in production(raw).values()}
    if not listed or not splits_csv.is_file():
        return
    with splits_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            entry = listed.get(row["source"])
            if entry is not None:
                yield row, entry


def transformed_production(splits_csv: Path, raw: Path, split: str) -> set[str]:
    """The production pictures of `split` as paths relative to transformed/ (`splits.csv`'s
    `path` column, e.g. `train/cat/prod-0123456789abcdef.jpg`); empty when there are none."""
    return {row["path"] for row, _entry in _split_rows(splits_csv, raw) if row["split"] == split}


def in_splits(splits_csv: Path, raw: Path) -> dict[str, Any]:
    """The production pictures of a transformed data set (`splits.csv`'s rows whose source is
    listed in raw/feedback.csv): `per_split` counts, and the earliest and latest `labelled_at`
    (UTC ISO) of those trained on (train and val). Empty when there are none."""
    per_split: Counter[str] = Counter()
    times: list[str] = []
    for row, entry in _split_rows(splits_csv, raw):
        per_split[row["split"]] += 1
        if row["split"] in ("train", "val"):
            times.append(entry["labelled_at"])
    if not per_split:
        return {}
    return {"per_split": dict(sorted(per_split.items())),
            "labelled_from": min(times, default=""), "labelled_to": max(times, default="")}
