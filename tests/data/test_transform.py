"""Transform: every mode to RGB at image_size, stratified seeded split, determinism, idempotency."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from catsdogs.config import Params, load_params
from catsdogs.paths import DataPaths
from catsdogs.stages import ingest, prepare, transform, validate
from catsdogs.stages.transform import assign_splits
from tests.data.helpers import MESSY_KEPT, MESSY_OVERRIDES, REPO


def _params(*extra: str) -> Params:
    return load_params(REPO / "params.yaml", ["validation.min_samples_per_class=5",
                                              "transform.image_size=64", *MESSY_OVERRIDES,
                                              *extra])


def _chain(source: Path, paths: DataPaths, params: Params) -> list[dict[str, str]]:
    ingest.run(params, paths, source=f"dir:{source}")
    validate.run(params, paths)
    prepare.run(params, paths)
    transform.run(params, paths)
    with paths.splits_csv.open() as handle:
        return list(csv.DictReader(handle))


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".stamp.json"):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_messy_images_become_a_clean_square_rgb_split(messy_dir: Path, tmp_path: Path) -> None:
    params = _params()
    first = DataPaths(tmp_path / "one")
    rows = _chain(messy_dir, first, params)
    assert list(rows[0]) == ["path", "split", "label", "source"]
    assert Counter(row["label"] for row in rows) == MESSY_KEPT
    for row in rows:
        output = first.transformed / row["path"]
        assert row["path"].startswith(f"{row['split']}/{row['label']}/")
        assert (first.prepared / row["source"]).is_file()
        with Image.open(output) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
    sources = {row["source"] for row in rows}
    assert {"cat/mode_cmyk.jpg", "cat/sixteen_bit.png", "cat/mode_la.png",
            "dog/mode_p_transparent.png", "cat/rotated.jpg"} <= sources
    # png and jpg outputs never clash: every output name is unique
    assert len({row["path"] for row in rows}) == len(rows)

    # determinism: the same input in another data dir gives byte-identical outputs
    second = DataPaths(tmp_path / "two")
    _chain(messy_dir, second, params)
    assert first.splits_csv.read_bytes() == second.splits_csv.read_bytes()
    assert _tree_digest(first.transformed) == _tree_digest(second.transformed)

    # idempotent: unchanged inputs and params skip; a new seed re-splits
    assert transform.run(params, first).skipped
    reseeded = _params("split.seed=7")
    validate.run(reseeded, first)
    prepare.run(reseeded, first)
    assert not transform.run(reseeded, first).skipped
    assert first.splits_csv.read_bytes() != second.splits_csv.read_bytes()


@pytest.mark.parametrize("count", [1000, 57, 3])
def test_split_is_stratified_and_seeded(count: int) -> None:
    params = load_params(REPO / "params.yaml")
    rows = [{"path": f"{label}/{i}.jpg", "label": label, "sha256": f"{i}"}
            for label in ("cat", "dog") for i in range(count)]
    assigned = assign_splits(rows, params)
    assert assigned == assign_splits(list(reversed(rows)), params)
    per = Counter((split, row["label"]) for split, row in assigned)
    for label in ("cat", "dog"):
        for split, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            assert abs(per[(split, label)] - count * fraction) <= 1
