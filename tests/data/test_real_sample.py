"""The four data stages chained on the 2,000 real photos, typed as a newcomer would."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

from tests.data.helpers import REPO, catsdogs

STAGES = ("validate", "prepare", "transform")


def _splits(data: Path) -> list[dict[str, str]]:
    with (data / "transformed" / "splits.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_real_photos_chain(sample_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "CATSDOGS_DATA_DIR": str(data)}
    source = f"dir:{os.path.relpath(sample_dir, REPO)}"  # dir:../shared/data/petimages-sample
    per_class = {label: len(list((sample_dir / label).glob("*.jpg"))) for label in ("cat", "dog")}

    lines = []
    for argv in (("ingest", "--source", source), *[(stage,) for stage in STAGES]):
        done = catsdogs(*argv, env=env)
        assert done.returncode == 0, done.stderr
        lines.append(done.stdout.strip())
    assert lines[0].startswith("[ingest] done: 2000 files (cat 1000, dog 1000)")
    assert lines[1].startswith("[validate] done: 9 expectations passed on 2000 files")
    assert lines[2].startswith("[prepare] done: kept 2000 of 2000")
    assert lines[3].startswith("[transform] done: 2000 images at 224px")

    rows = _splits(data)
    counts = Counter((row["split"], row["label"]) for row in rows)
    for label, total in per_class.items():
        for split, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            assert abs(counts[(split, label)] - total * fraction) <= 1, counts
    for name in ("class_distribution.png", "image_dimensions.png", "sample_grid.png", "eda.json"):
        assert (data / "eda" / name).is_file()

    # idempotent: every stage skips on a re-run with the same inputs and params
    for argv in (("ingest", "--source", source), *[(stage,) for stage in STAGES]):
        again = catsdogs(*argv, env=env)
        assert again.returncode == 0 and "skipped (up to date)" in again.stdout, again

    # deterministic: a forced re-run of transform writes byte-identical split lists
    first = (data / "transformed" / "splits.csv").read_bytes()
    (data / "transformed" / ".stamp.json").unlink()
    assert catsdogs("transform", env=env).returncode == 0
    assert (data / "transformed" / "splits.csv").read_bytes() == first


def test_validation_fails_with_one_class_removed(sample_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CATSDOGS_DATA_DIR": str(tmp_path / "data")}
    assert catsdogs("ingest", "--source", f"dir:{sample_dir / 'cat'}", env=env).returncode == 0
    done = catsdogs("validate", env=env)
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    failed = {line.split()[1] for line in done.stderr.splitlines() if line.startswith("expect_")}
    assert failed == {"count", "imbalance"}, done.stderr
    blocked = catsdogs("prepare", env=env)
    assert blocked.returncode == 3 and "failed validation" in blocked.stderr
