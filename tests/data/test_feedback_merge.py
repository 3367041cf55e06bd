"""Labelled production pictures become training data (issue 30, part 3): the real ingest,
validate, prepare and transform stages over a source folder plus a real SQLite prediction log
whose rows carry kept pictures and feedback labels (`PredictionLog`, as the service writes them).

Pictures are smooth (`smooth_jpeg`), so a resized, re-encoded copy has the same average hash,
as a photo would, while two different pictures do not.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from catsdogs.config import Params, load_params
from catsdogs.data import feedback
from catsdogs.monitoring.prediction_log import default_url, make_engine
from catsdogs.paths import DataPaths
from catsdogs.stages import ingest, prepare, transform, validate
from tests.data.helpers import REPO, encode, label_pictures, smooth_jpeg, write_tree

BASE_PER_CLASS = 30


def _params(*extra: str) -> Params:
    return load_params(REPO / "params.yaml", ["validation.min_samples_per_class=5",
                                              "transform.image_size=32", "transform.workers=1",
                                              "feedback.min_labels=5", *extra])


def _chain(source: Path, paths: DataPaths, params: Params) -> dict[str, object]:
    summary = ingest.run(params, paths, source=f"dir:{source}").to_dict()
    validate.run(params, paths)
    prepare.run(params, paths)
    summary["transform"] = transform.run(params, paths).to_dict()
    return summary


def _splits(paths: DataPaths) -> list[dict[str, str]]:
    with paths.splits_csv.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    files = {f"{label}/{label}.{i}.jpg": smooth_jpeg(seed * 1000 + i)
             for seed, label in ((1, "cat"), (2, "dog")) for i in range(BASE_PER_CLASS)}
    return write_tree(tmp_path / "source", files)


def test_labelled_pictures_merge_into_train_and_val_never_into_test(source: Path,
                                                                     tmp_path: Path) -> None:
    params = _params()
    alone = DataPaths(tmp_path / "alone")
    _chain(source, alone, params)
    fixed_test = sorted(r["source"] for r in _splits(alone) if r["split"] == "test")

    paths = DataPaths(tmp_path / "data")
    url = default_url(paths.root)
    kept = tmp_path / "kept"
    a_test_picture = alone.prepared / fixed_test[0]
    with Image.open(a_test_picture) as image:   # the same photo, resized and re-encoded
        near_copy = encode(image.resize((100, 75)), "JPEG", quality=70)
    new = [(smooth_jpeg(5000 + i), "cat" if i % 2 else "dog") for i in range(24)]
    pictures = [*new,
                (new[0][0], new[0][1]),                       # the same picture labelled twice
                (smooth_jpeg(7000), "neither"), (smooth_jpeg(7001), "neither"),
                ((source / "cat" / "cat.3.jpg").read_bytes(), "cat"),   # bytes the source has
                (near_copy, "cat" if fixed_test[0].startswith("cat") else "dog")]
    first = dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)
    label_pictures(url, kept, pictures, 0, first)

    summary = _chain(source, paths, params)
    assert summary["feedback"] == 25   # 24 new + the near copy (transform screens it)
    assert summary["feedback_neither"] == 2 and summary["feedback_in_source"] == 1
    # the neither pictures: in raw/neither/ for the OOD calibration, outside the manifest
    known = feedback.known_ood(paths.raw)
    assert [p.read_bytes() for p in known] == sorted(
        [smooth_jpeg(7000), smooth_jpeg(7001)],
        key=lambda data: "prod-" + hashlib.sha256(data).hexdigest()[:16])
    assert "neither/" not in paths.raw_manifest.read_text()
    assert summary["feedback_store"]["stored"] == 28   # 24 + 2 neither + source copy + near copy
    # new[0]'s second label (hour 24) replaced its first (hour 0): the earliest is hour 1
    assert summary["feedback_labelled_from"] == (first + dt.timedelta(hours=1)).isoformat()
    rows = _splits(paths)
    # the source's split is exactly what it is without production pictures
    assert sorted(r["source"] for r in rows if r["split"] == "test") == fixed_test
    produced = {row["path"] for row in feedback.production(paths.raw).values()}
    assert len(produced) == 25
    per_split = Counter(r["split"] for r in rows if r["source"] in produced)
    assert "test" not in per_split
    screened = summary["transform"]["production"]
    assert screened["near_test"] == 1 and sum(per_split.values()) == 24
    assert per_split == {k: v for k, v in screened.items() if k != "near_test"}
    assert not any(r["source"].endswith(hashlib.sha256(near_copy).hexdigest()[:16] + ".jpg")
                   for r in rows)
    held = {r["source"] for r in rows if r["split"] == feedback.HELD_OUT}
    assert held == {e["path"] for e in feedback.production(paths.raw).values()
                    if feedback.is_held_out(e["sha256"], params.feedback.holdout_share)
                    and e["sha256"] != hashlib.sha256(near_copy).hexdigest()}
    assert held   # 24 pictures, a 0.2 share
    assert per_split["train"] > 0
    lineage = feedback.in_splits(paths.splits_csv, paths.raw)
    assert lineage["per_split"] == dict(sorted(per_split.items()))
    assert first.isoformat() <= lineage["labelled_from"] <= lineage["labelled_to"]

    # the service's retention deletes the kept pictures and their rows: a re-run is up to date
    before = sorted(p.read_bytes() for p in paths.raw.rglob("*") if p.is_file())
    shutil.rmtree(kept)
    with make_engine(url).begin() as connection:
        connection.exec_driver_sql("DELETE FROM predictions")
    again = ingest.run(params, paths, source=f"dir:{source}")
    assert again.skipped and again.details["feedback"] == 25
    assert sorted(p.read_bytes() for p in paths.raw.rglob("*") if p.is_file()) == before

    # a relabel and a new label later: merged beside the stored ones, the split still fixed
    label_pictures(url, tmp_path / "kept2", [(new[1][0], "neither"), (smooth_jpeg(9000), "dog")], 100,
           first + dt.timedelta(days=2))
    later = _chain(source, paths, params)
    assert later["feedback"] == 25 - 1 + 1 and later["feedback_store"]["relabelled"] == 1
    assert later["feedback_neither"] == 3 and len(feedback.known_ood(paths.raw)) == 3
    assert sorted(r["source"] for r in _splits(paths) if r["split"] == "test") == fixed_test


def test_too_few_labels_or_feedback_off_merge_nothing(source: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    paths = DataPaths(tmp_path / "data")
    label_pictures(default_url(paths.root), tmp_path / "kept", [(smooth_jpeg(5000 + i), "cat") for i in range(3)],
           0, dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    summary = ingest.run(_params(), paths, source=f"dir:{source}").to_dict()
    assert summary["feedback"] == 0
    assert "fewer than feedback.min_labels=5" in summary["feedback_store"]["reason"]
    off = ingest.run(_params("data.feedback=false"), paths, source=f"dir:{source}").to_dict()
    assert off["feedback_store"] == {"merged": False, "reason": "data.feedback is off"}
    assert off["skipped"]   # nothing merged either time: the source's own stamp, no re-ingest
    since = _params("feedback.min_labels=1", "feedback.since=2026-03-01T00:00:01")
    assert ingest.run(since, paths, source=f"dir:{source}").to_dict()["feedback"] == 2
    synced = json.loads((paths.feedback / feedback.SYNCED).read_text())
    assert dt.datetime.fromisoformat(synced["read_at"]) > dt.datetime(2026, 3, 1, tzinfo=dt.UTC)

    # a log that cannot be read: the pictures stored earlier are merged, the run goes on
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"not a database" * 100)
    monkeypatch.setenv("CATSDOGS_PREDICTION_LOG_URL", f"sqlite:///{broken}")
    unreadable = ingest.run(since, paths, source=f"dir:{source}").to_dict()
    assert unreadable["feedback_store"]["log_unreachable"] == "DatabaseError"
    assert unreadable["skipped"] and unreadable["feedback_store"]["cat_or_dog"] == 2
