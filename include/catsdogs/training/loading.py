"""Image folders (`<dir>/{cat,dog}/*`) as seeded, reproducible PyTorch data loaders, and
`TensorBatches`: batches straight from a split's uint8 tensors (`TensorSplit`, which
`catsdogs.training.cache` builds and memory-maps),
augmented on tensors in the main process (measured in benchmarks/train_speed.py: the loader
needs well under 10% of a CPU training step, so worker processes would only compete with the
network for the cores)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from catsdogs.config import CLASSES
from catsdogs.data.images import decode_image
from catsdogs.errors import UserError
from catsdogs.training.model import normalize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_images(folder: Path) -> list[tuple[Path, int]]:
    """(path, class index) for every image in `folder/<class>/`, sorted; a UserError if none."""
    items = [
        (path, index)
        for index, label in enumerate(CLASSES)
        for path in sorted((folder / label).glob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise UserError(f"{folder}: no images found; expected class sub-folders "
                        f"{', '.join(f'{c}/' for c in CLASSES)} holding .jpg/.jpeg/.png files")
    return items


@dataclass(frozen=True)
class TensorSplit:
    """A decoded split: `pixels` N,3,S,S uint8 (memory-mapped, copy-on-write), `labels` N int64,
    `paths` the N pictures' files in the same order (`list_images`; empty when not from files)."""

    pixels: torch.Tensor
    labels: torch.Tensor
    paths: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)


class ImageFolderDataset(Dataset):
    """Decoded images (the one decoding path) with a transform, and their class index."""

    def __init__(self, folder: Path, transform: Callable) -> None:
        self.items = list_images(folder)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        return self.transform(decode_image(path)), label


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker python/numpy seeds derived from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int,
                num_workers: int, device: torch.device) -> DataLoader:
    """A DataLoader whose order and augmentation depend only on `seed`."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
        pin_memory=device.type == "cuda", worker_init_fn=_seed_worker, generator=generator,
        persistent_workers=num_workers > 0,
    )


def batch_bounds(count: int, batch_size: int, merge_single: bool) -> list[tuple[int, int]]:
    """(start, stop) of each batch over `count` items; with `merge_single` a last batch of one
    item is folded into the one before (batch-norm cannot train on a single picture)."""
    bounds = [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    if merge_single and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], count)]
    return bounds


def sampling_weights(production: Sequence[bool], weight: float) -> torch.Tensor | None:
    """Per-picture sampling weights (float64, N) of a train split: `weight` for each picture
    `production` marks (a labelled production picture), 1.0 for each source picture. None when no
    picture is favoured (`weight` 1.0, or no production picture): the epoch is then the plain
    shuffle. Raises ValueError when `weight` < 1 (params validation refuses it first, naming
    `train.production_weight`).

    With n_p production and n_s source pictures, an epoch draws a production picture with
    probability w * n_p / (w * n_p + n_s) at each draw."""
    if weight < 1:
        raise ValueError(f"train.production_weight must be at least 1, got {weight}")
    if weight == 1.0 or not any(production):
        return None
    return torch.tensor([weight if produced else 1.0 for produced in production],
                        dtype=torch.float64)


def epoch_order(count: int, generator: torch.Generator,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """The picture indices (int64, `count`) one training epoch visits, drawn from `generator`.

    Without `weights`: a permutation (`torch.randperm`), every picture once, as training always
    did. With `weights` (N = `count` non-negative floats, `sampling_weights`): `count` draws with
    replacement in proportion to them (`torch.utils.data.WeightedRandomSampler`), so an epoch
    costs the same number of steps and a favoured picture is seen more often."""
    if weights is None:
        return torch.randperm(count, generator=generator)
    if len(weights) != count:
        raise ValueError(f"{len(weights)} sampling weights for {count} pictures")
    sampler = WeightedRandomSampler(weights, count, replacement=True, generator=generator)
    return torch.tensor(list(sampler), dtype=torch.int64)


class TensorBatches:
    """Batches (float32 N,3,S,S ImageNet-normalised, int64 N labels) of a cached split.

    `augment` (e.g. `catsdogs.training.model.train_augment`) runs per picture on uint8 3,S,S
    tensors before normalisation. Shuffled (training) order comes from a generator seeded with
    `seed`, so the same seed gives the same batches (`epoch_order`: with `weights`, N sampling
    weights, a weighted draw with replacement); a last batch of one picture is merged into the
    batch before it.
    """

    def __init__(self, data: TensorSplit, batch_size: int, *, shuffle: bool, seed: int = 0,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 weights: torch.Tensor | None = None) -> None:
        self.data = self.dataset = data
        self.shuffle, self.augment, self.weights = shuffle, augment, weights
        self.bounds = batch_bounds(len(data), batch_size, merge_single=shuffle)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.bounds)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = (epoch_order(len(self.data), self.generator, self.weights) if self.shuffle
                 else torch.arange(len(self.data)))
        for start, stop in self.bounds:
            index = order[start:stop].sort().values if self.shuffle else order[start:stop]
            pixels = self.data.pixels[index]
            if self.augment is not None:
                pixels = torch.stack([self.augment(picture) for picture in pixels])
            yield normalize(pixels), self.data.labels[index]
