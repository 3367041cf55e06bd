"""benchmarks/train_quality.py --folds: the K-fold split that decides training defaults (issue 32).

Each photo must be scored exactly once, by a model that neither trained on it nor chose its
epoch or temperature with it; a fold layout that leaks would make every pooled figure a lie.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.train_quality import crop_square, fold_of, link_fold

FOLDS = 10


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    """A 2 x 30-photo stand-in for the sample (tiny JPEGs, the layout is what matters)."""
    root = tmp_path / "sample"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for index in range(30):
            Image.new("RGB", (8, 8), (index, 0, 0)).save(root / label / f"{index}.jpg")
    return root


def test_every_photo_is_tested_once_and_never_trained_on_in_its_fold(sample: Path,
                                                                      tmp_path: Path) -> None:
    folds = fold_of(sample, FOLDS)
    assert len(folds) == 60
    assert Counter(Counter(folds.values()).values()) == {6: FOLDS}   # 3 cats + 3 dogs a fold
    tested: Counter[str] = Counter()
    for fold in range(FOLDS):
        data = tmp_path / f"fold-{fold}"
        link_fold(sample, data, folds, fold, FOLDS)
        splits = {split: {f"{p.parent.name}/{p.name}"
                          for p in (data / "transformed" / split).rglob("*.jpg")}
                  for split in ("train", "val", "test")}
        assert sum(map(len, splits.values())) == 60
        assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"]
                    or splits["val"] & splits["test"])
        assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (48, 6, 6)
        assert {name.split("/")[0] for name in splits["test"]} == {"cat", "dog"}
        tested.update(splits["test"])
    assert set(tested.values()) == {1} and len(tested) == 60


def test_the_fold_layout_is_seeded(sample: Path) -> None:
    assert fold_of(sample, FOLDS) == fold_of(sample, FOLDS)
    assert fold_of(sample, FOLDS, seed=1) != fold_of(sample, FOLDS)


@pytest.mark.parametrize(("width", "height"), [(400, 300), (300, 400), (224, 224), (100, 50)])
def test_crop_square_keeps_the_centre_at_the_requested_size(width: int, height: int) -> None:
    image = Image.new("RGB", (width, height), (0, 0, 255))
    centre = (width // 4, height // 4, width - width // 4, height - height // 4)
    image.paste((255, 0, 0), centre)
    squared = crop_square(image, 224)
    assert squared.size == (224, 224)
    assert squared.getpixel((112, 112)) == (255, 0, 0)
