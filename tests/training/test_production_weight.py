"""`train.production_weight`: labelled production pictures drawn more often in training.

The weights are checked, not random draws: with weight w, n_p production and n_s source pictures,
an epoch's expected production share is w n_p / (w n_p + n_s). Weight 1.0 must leave training
exactly as it was (the plain seeded shuffle), and which pictures are from production comes from
transform's splits.csv joined with raw/feedback.csv.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from catsdogs.config import load_params
from catsdogs.data import feedback
from catsdogs.data.manifest import write_csv
from catsdogs.errors import UserError
from catsdogs.paths import DataPaths
from catsdogs.stages.train import _production_weights
from catsdogs.stages.transform import SPLIT_COLUMNS
from catsdogs.training.cache import load_split
from catsdogs.training.loading import (
    TensorBatches,
    TensorSplit,
    epoch_order,
    list_images,
    sampling_weights,
)


@pytest.mark.parametrize(("weight", "n_p", "n_s"), [(4.0, 30, 370), (2.5, 1, 9), (1.5, 7, 0)])
def test_weights_give_the_expected_production_share(weight: float, n_p: int, n_s: int) -> None:
    marks = [True] * n_p + [False] * n_s
    weights = sampling_weights(marks, weight)
    assert weights is not None and weights.dtype == torch.float64
    assert weights[:n_p].tolist() == [weight] * n_p and weights[n_p:].tolist() == [1.0] * n_s
    share = float(weights[:n_p].sum() / weights.sum())
    assert share == pytest.approx(weight * n_p / (weight * n_p + n_s))


def test_a_weighted_epoch_is_a_weighted_random_sampler_of_the_same_length() -> None:
    weights = sampling_weights([True, False, False, True, False], 4.0)
    assert weights is not None
    order = epoch_order(5, torch.Generator().manual_seed(3), weights)
    sampler = torch.utils.data.WeightedRandomSampler(
        weights, 5, replacement=True, generator=torch.Generator().manual_seed(3))
    assert order.tolist() == list(sampler) and order.dtype == torch.int64
    with pytest.raises(ValueError, match="4 sampling weights for 5 pictures"):
        epoch_order(5, torch.Generator(), weights[:4])


def test_weight_one_keeps_the_plain_shuffle() -> None:
    assert sampling_weights([True, False, True], 1.0) is None
    assert sampling_weights([False, False], 4.0) is None  # nothing to favour
    expected = torch.randperm(40, generator=torch.Generator().manual_seed(7))
    assert torch.equal(epoch_order(40, torch.Generator().manual_seed(7)), expected)

    split = TensorSplit(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2),
                        torch.arange(10) % 2)
    plain = TensorBatches(split, 4, shuffle=True, seed=5)
    same = TensorBatches(split, 4, shuffle=True, seed=5,
                         weights=sampling_weights([True] * 3 + [False] * 7, 1.0))
    weighted = TensorBatches(split, 4, shuffle=True, seed=5,
                             weights=sampling_weights([True] * 3 + [False] * 7, 50.0))
    for _ in range(2):  # two epochs: the generator goes on identically
        plain_labels = [pixels[:, 0, 0, 0].tolist() for pixels, _ in plain]
        assert [pixels[:, 0, 0, 0].tolist() for pixels, _ in same] == plain_labels
        drawn = [int(v) for pixels, _ in weighted for v in pixels[:, 0, 0, 0]]
        assert len(drawn) == 10 and len(set(drawn)) < 10   # with replacement: repeats


def test_a_weight_below_one_is_refused_by_name() -> None:
    with pytest.raises(UserError, match=r"train\.production_weight"):
        load_params(overrides=["train.production_weight=0.5"])
    with pytest.raises(UserError, match=r"train\.production_weight"):
        load_params(overrides=["train.production_weight=.inf"])
    with pytest.raises(ValueError, match=r"train\.production_weight"):
        sampling_weights([True], 0.9)
    assert load_params().train.production_weight == 1.0


def _picture(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def test_production_pictures_come_from_splits_csv_and_feedback_csv(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    rows = [("train/cat/a.jpg", "cat/a.jpg"), ("train/cat/prod-0011.jpg", "cat/prod-0011.jpg"),
            ("train/dog/b.jpg", "dog/b.jpg"), ("train/dog/c.jpg", "dog/c.jpg"),
            # a prod- name raw/feedback.csv does not list is a source picture
            ("train/dog/prod-9999.jpg", "dog/prod-9999.jpg"),
            ("val/dog/prod-0022.jpg", "dog/prod-0022.jpg")]
    for path, _ in rows:
        _picture(paths.transformed / path)
    write_csv(paths.splits_csv, [{"path": p, "split": p.split("/")[0], "label": p.split("/")[1],
                                  "source": s} for p, s in rows], SPLIT_COLUMNS)
    paths.raw.mkdir(parents=True)
    write_csv(paths.raw / feedback.MERGED,
              [{"path": s, "sha256": s, "label": s.split("/")[0], "labelled_at": "2026-01-01",
                "prediction_id": "x"} for s in ("cat/prod-0011.jpg", "dog/prod-0022.jpg")],
              feedback.MERGED_COLUMNS)
    assert feedback.transformed_production(paths.splits_csv, paths.raw, "train") == {
        "train/cat/prod-0011.jpg"}

    # the cache's split carries its files in list_images' order: the marks follow the pixels
    train = load_split(paths, "train", 4)
    assert [p for p, _ in list_images(paths.split_dir("train"))] == list(train.paths)
    weights, figures = _production_weights(paths, 4.0, train)
    assert weights is not None
    assert weights.tolist() == [1.0, 4.0, 1.0, 1.0, 1.0]   # list_images order: cat/a, cat/prod..
    assert figures == {"train_production_pictures": 1, "train_production_share": 0.2,
                       "train_production_drawn_share": pytest.approx(4 / 8)}
    plain, figures = _production_weights(paths, 1.0, train)
    assert plain is None and figures["train_production_drawn_share"] == 0.2
