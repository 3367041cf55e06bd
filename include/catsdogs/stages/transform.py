"""Transform: RGB + square resize + stratified split into `transformed/{train,val,test}/<label>/`.

Each image goes through `catsdogs.data.images.square_image` (EXIF orientation, every colour mode to RGB,
JPEG draft decoding by 1/2..1/8 only while at least twice the output size remains, then a squash
resize to `transform.image_size` squared with Pillow's antialiased BILINEAR filter): the same
function the Bento service applies to an uploaded photo, so training pixels match serving pixels.
Output is JPEG at `transform.jpeg_quality`. The split is stratified per class and seeded
(`split.seed`): the same prepared manifest always gives byte-identical `splits.csv`. Work runs on
a process pool (`transform.workers`, 0 = one per core).

Labelled production pictures merged by ingest (`raw/feedback.csv`) never change the source's
split and never enter `test/`: a share chosen by content hash goes to `production_test/` (the
recent-production test set promote judges on), the rest to train/val, and any that is a byte or
near duplicate (average hash) of a test picture is left out (`_assign_with_production`).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

from catsdogs.config import Params
from catsdogs.data import feedback, provenance
from catsdogs.data.manifest import read_csv, write_csv
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.storage import atomic_dir, fingerprint, is_up_to_date, sha256_file
from catsdogs.summary import Summary

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
OUTPUT_SPLITS = (*SPLITS, feedback.HELD_OUT)   # production_test: held-out production pictures
SPLIT_COLUMNS = ("path", "split", "label", "source")
ALGORITHM = "squash-bilinear-draft2x/v1"  # part of the stamp: bump when output changes


def _transform_one(job: tuple[str, str, int, int]) -> str:
    """Worker: write one output JPEG; returns '' or an error message."""
    from catsdogs.data.images import ImageRejected, square_image

    source, target, size, quality = job
    try:
        square_image(Path(source), size).save(target, "JPEG", quality=quality)
    except (ImageRejected, OSError) as exc:
        return f"{source}: {exc}"
    return ""


def assign_splits(rows: list[dict[str, str]], params: Params) -> list[tuple[str, dict[str, str]]]:
    """(split, row) pairs: per class, a seeded shuffle of the path-sorted rows cut by fractions."""
    chosen: list[tuple[str, dict[str, str]]] = []
    for label in params.data.classes:
        members = sorted((r for r in rows if r["label"] == label), key=lambda r: r["path"])
        random.Random(f"{params.split.seed}:{label}").shuffle(members)
        n_val = round(len(members) * params.split.val)
        n_test = round(len(members) * params.split.test)
        n_train = len(members) - n_val - n_test
        for index, row in enumerate(members):
            split = "train" if index < n_train else "val" if index < n_train + n_val else "test"
            chosen.append((split, row))
    return chosen


def _assign_with_production(rows: list[dict[str, str]], params: Params, paths: DataPaths
                            ) -> tuple[list[tuple[str, dict[str, str]]], dict[str, int]]:
    """(split, row) pairs: the source's pictures split by `assign_splits` exactly as without
    production pictures (so the test split stays fixed); each production picture (listed in
    raw/feedback.csv) goes to `production_test` when its content hash says so
    (`feedback.holdout_share`), else to train or val (by hash, in the split's proportion), never
    to test. Production pictures with the bytes or the average hash (within
    `feedback.near_duplicate_bits`) of a test picture are left out. Returns the pairs and the
    production pictures per destination (`near_test` for those left out)."""
    produced = feedback.production(paths.raw)
    base = [row for row in rows if row["sha256"] not in produced]
    extra = [row for row in rows if row["sha256"] in produced]
    assigned = assign_splits(base, params)
    screened = Counter[str]()
    if not extra:
        return assigned, dict(screened)
    test = [row for split, row in assigned if split == "test"]
    test_hashes = {row["sha256"] for row in test}
    alike = feedback.near_duplicates([paths.prepared / row["path"] for row in extra],
                                     [paths.prepared / row["path"] for row in test],
                                     params.feedback.near_duplicate_bits)
    val_share = params.split.val / (params.split.train + params.split.val)
    for row in sorted(extra, key=lambda r: r["path"]):
        if row["sha256"] in test_hashes or paths.prepared / row["path"] in alike:
            screened["near_test"] += 1
            continue
        if feedback.is_held_out(row["sha256"], params.feedback.holdout_share):
            split = feedback.HELD_OUT
        else:
            split = "val" if int(row["sha256"][8:16], 16) / 0x1_0000_0000 < val_share else "train"
        screened[split] += 1
        assigned.append((split, row))
    if screened["near_test"]:
        log.warning("%d production pictures are the same as (or nearly) a test picture: left "
                    "out of training", screened["near_test"])
    return assigned, dict(screened)


def _output_names(rows: list[dict[str, str]]) -> dict[str, str]:
    """prepared path -> output file name (`<stem>.jpg`, plus a hash when two stems clash)."""
    stems = Counter((r["label"], Path(r["path"]).stem) for r in rows)
    return {r["path"]: (f"{Path(r['path']).stem}.jpg" if stems[(r["label"], Path(r["path"]).stem)] == 1
                        else f"{Path(r['path']).stem}-{r['sha256'][:8]}.jpg") for r in rows}


def run(params: Params, paths: DataPaths) -> Summary:
    """Write transformed/ and splits.csv (skipped when the inputs and params are unchanged)."""
    from catsdogs.data.parallel import parallel_map, worker_count

    rows = read_csv(paths.prepared_manifest, ("path", "label", "sha256"), "prepare")
    settings = params.transform
    merged = paths.raw / feedback.MERGED
    stamp = fingerprint(sha256_file(paths.prepared_manifest), settings.image_size,
                        settings.jpeg_quality, params.split.model_dump(),
                        list(params.data.classes), ALGORITHM,
                        *([sha256_file(merged), params.feedback.holdout_share,
                           params.feedback.near_duplicate_bits] if merged.is_file() else []))
    if is_up_to_date([paths.transformed], stamp):
        provenance.carry(paths.prepared, paths.transformed)
        return Summary("transform", f"{paths.transformed} is up to date", skipped=True)
    if not rows:
        raise UserError(f"{paths.prepared_manifest} lists no images: check `catsdogs prepare`")

    assigned, screened = _assign_with_production(rows, params, paths)
    names = _output_names(rows)
    with atomic_dir(paths.transformed, stamp=stamp) as tmp:
        for split in OUTPUT_SPLITS:
            for label in params.data.classes:
                (tmp / split / label).mkdir(parents=True)
        records = [{"path": f"{split}/{row['label']}/{names[row['path']]}", "split": split,
                    "label": row["label"], "source": row["path"]} for split, row in assigned]
        jobs = [(str(paths.prepared / r["source"]), str(tmp / r["path"]), settings.image_size,
                 settings.jpeg_quality) for r in records]
        errors = [e for e in parallel_map(_transform_one, jobs, desc="transform",
                                          workers=settings.workers) if e]
        if errors:
            raise UserError(f"{len(errors)} images could not be transformed (first: {errors[0]}); "
                            "re-run `catsdogs prepare` to screen them out")
        records.sort(key=lambda r: (OUTPUT_SPLITS.index(r["split"]), r["path"]))
        write_csv(tmp / "splits.csv", records, SPLIT_COLUMNS)
        provenance.carry(paths.prepared, tmp)

    counts = Counter((r["split"], r["label"]) for r in records)
    text = "; ".join(f"{split} " + ", ".join(f"{label} {counts[(split, label)]}"
                                            for label in params.data.classes)
                     for split in OUTPUT_SPLITS if split in SPLITS or screened)
    return Summary("transform", f"{len(records)} images at {settings.image_size}px "
                   f"({text}) with {worker_count(settings.workers)} workers into {paths.transformed}",
                   details={"images": len(records),
                            "counts": {f"{s}/{lab}": n for (s, lab), n in counts.items()},
                            "production": screened})
