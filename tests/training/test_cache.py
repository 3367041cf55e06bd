"""The uint8 tensor cache: serving's pixels, rebuilt when its inputs change, never half-written;
and the batches drawn from it."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from catsdogs.data.images import ImageRejected, decode_image, square_image
from catsdogs.paths import DataPaths
from catsdogs.storage import read_stamp
from catsdogs.training import cache
from catsdogs.training.cache import cache_dir, load_split
from catsdogs.training.loading import TensorBatches, batch_bounds, list_images
from catsdogs.training.model import eval_transform
from tests.training.conftest import IMAGE_SIZE, build_transformed


@pytest.fixture
def data(tmp_path) -> DataPaths:
    return build_transformed(tmp_path, per_class=6)


def test_cached_pixels_are_servings_pixels_and_normalise_like_evaluation(data) -> None:
    """The Bento service computes `square_image(upload, size)`; evaluation `eval_transform`."""
    split = load_split(data, "test", IMAGE_SIZE)
    items = list_images(data.split_dir("test"))
    assert split.pixels.dtype == torch.uint8
    assert split.pixels.shape == (len(items), 3, IMAGE_SIZE, IMAGE_SIZE)
    assert split.labels.tolist() == [label for _path, label in items]
    for index, (path, _label) in enumerate(items):
        served = np.array(square_image(path.read_bytes(), IMAGE_SIZE))
        assert torch.equal(split.pixels[index], torch.from_numpy(served).permute(2, 0, 1)), path
    images, _labels = next(iter(TensorBatches(split, len(items), shuffle=False)))
    for index, (path, _label) in enumerate(items):
        assert torch.equal(images[index], eval_transform(IMAGE_SIZE)(decode_image(path))), path


def test_cache_is_reused_and_rebuilt_when_a_picture_or_the_size_changes(data, caplog) -> None:
    first = load_split(data, "train", IMAGE_SIZE)
    stamp = read_stamp(cache_dir(data, "train", IMAGE_SIZE))
    with caplog.at_level(logging.INFO, logger="catsdogs.training.cache"):
        again = load_split(data, "train", IMAGE_SIZE)
    assert "from the tensor cache" in caplog.text
    assert torch.equal(first.pixels, again.pixels)

    path, _label = list_images(data.split_dir("train"))[0]
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (10, 200, 30)).save(path)
    changed = load_split(data, "train", IMAGE_SIZE)
    assert read_stamp(cache_dir(data, "train", IMAGE_SIZE)) != stamp
    assert torch.equal(changed.pixels[0], torch.from_numpy(
        np.array(square_image(path, IMAGE_SIZE))).permute(2, 0, 1))
    assert not torch.equal(changed.pixels[0], first.pixels[0])

    path.unlink()
    assert len(load_split(data, "train", IMAGE_SIZE)) == len(first) - 1

    small = load_split(data, "train", 32)
    assert small.pixels.shape[-1] == 32 and cache_dir(data, "train", 32).is_dir()


def test_a_failed_build_leaves_no_cache_and_the_old_one_intact(data, monkeypatch) -> None:
    load_split(data, "val", IMAGE_SIZE)
    folder = cache_dir(data, "val", IMAGE_SIZE)
    stamp = read_stamp(folder)
    victim, _label = list_images(data.split_dir("val"))[-1]
    victim.write_bytes(b"not a picture")
    with pytest.raises(ImageRejected):
        load_split(data, "val", IMAGE_SIZE)
    assert read_stamp(folder) == stamp                      # the previous cache, untouched
    assert sorted(p.name for p in folder.parent.iterdir()) == ["val-64"]
    shutil.rmtree(folder)
    monkeypatch.setattr(cache, "_build", _interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_split(data, "val", IMAGE_SIZE)
    assert not folder.parent.exists() or not list(folder.parent.iterdir())


def _interrupted(items, folder, image_size, stamp, split) -> None:
    from catsdogs.storage import atomic_dir

    with atomic_dir(folder, stamp=stamp) as tmp:
        (tmp / cache.PIXELS_FILE).write_bytes(b"\0" * 10)
        raise KeyboardInterrupt


@pytest.mark.parametrize(("count", "batch", "expected"), [
    (32, 31, [(0, 32)]),                  # a last batch of one joins the one before
    (33, 16, [(0, 16), (16, 33)]),
    (32, 64, [(0, 32)]),                  # a batch larger than the set: one batch
    (1, 8, [(0, 1)]),
    (64, 32, [(0, 32), (32, 64)]),
])
def test_training_batches_never_hold_a_single_picture(count, batch, expected) -> None:
    assert batch_bounds(count, batch, merge_single=True) == expected
    assert batch_bounds(count, batch, merge_single=False)[-1][1] == count


def test_shuffled_augmented_batches_depend_only_on_the_seed(data) -> None:
    from catsdogs.training.model import train_augment

    split = load_split(data, "train", IMAGE_SIZE)

    def epoch(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        batches = TensorBatches(split, 4, shuffle=True, seed=seed, augment=train_augment(IMAGE_SIZE))
        return [images for images, _labels in batches]

    first, second, other = epoch(3), epoch(3), epoch(4)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert sum(len(b) for b in first) == len(split)
