"""Image folders (`<dir>/{cat,dog}/*`) as seeded, reproducible PyTorch data loaders."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from catsdogs.config import CLASSES
from catsdogs.data.images import decode_image
from catsdogs.errors import UserError

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
