"""Each split of `transformed/` decoded once into a memory-mapped uint8 tensor file.

Training used to decode every JPEG again in every epoch (and augment it in loader processes that
compete with the network for the same cores). The transform stage already wrote fixed-size
pictures, so decoding them once is enough: `load_split` keeps `N x 3 x S x S` uint8 pixels in
`<data>/cache/<split>-<S>/pixels.u8` (plus `labels.npy`), written atomically and stamped with a
fingerprint of every source file's SHA-256, the image size and `CACHE_FORMAT`. A change to any
picture, to the size or to the format rebuilds it; otherwise it is memory-mapped at once.

The pixels are `catsdogs.training.model.eval_resize` of `catsdogs.data.images.decode_image`: the
evaluation transform's geometric half, i.e. exactly what the Bento service computes for the same
picture (`normalize` then runs per batch, as in serving). Written here rather than with a library
(e.g. FFCV, DALI, WebDataset) because those bring their own decoding path and file format, while
this file is a plain `numpy.memmap` of the one decoding path the project already has.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from catsdogs.console import Progress
from catsdogs.paths import DataPaths
from catsdogs.storage import atomic_dir, fingerprint, is_up_to_date, sha256_file
from catsdogs.training.loading import TensorSplit, list_images

log = logging.getLogger(__name__)

CACHE_FORMAT = "uint8-nchw/v1"  # part of the stamp: bump when the cached bytes change meaning
PIXELS_FILE, LABELS_FILE = "pixels.u8", "labels.npy"


def file_hashes(items: Sequence[tuple[Path, int]], root: Path) -> list[tuple[str, str, int]]:
    """(path relative to `root`, SHA-256, label) of each image: the cache's input fingerprint."""
    return [(str(path.relative_to(root)), sha256_file(path), label) for path, label in items]


def cache_dir(paths: DataPaths, split: str, image_size: int) -> Path:
    return paths.root / "cache" / f"{split}-{image_size}"


def load_split(paths: DataPaths, split: str, image_size: int) -> TensorSplit:
    """The split's pixels from its cache, (re)building the cache first when its stamp differs.

    Raises UserError (from `list_images`) when the split folder holds no images, and
    `ImageRejected` naming the file when a picture does not decode.
    """
    items = list_images(paths.split_dir(split))
    stamp = fingerprint(CACHE_FORMAT, image_size, file_hashes(items, paths.transformed))
    folder = cache_dir(paths, split, image_size)
    if not is_up_to_date([folder], stamp):
        _build(items, folder, image_size, stamp, split)
    else:
        log.info("%s: %d pictures from the tensor cache %s", split, len(items), folder)
    shape = (len(items), 3, image_size, image_size)
    pixels = np.memmap(folder / PIXELS_FILE, dtype=np.uint8, mode="c", shape=shape)
    return TensorSplit(torch.from_numpy(pixels), torch.from_numpy(np.load(folder / LABELS_FILE)),
                       tuple(path for path, _label in items))


def _build(items: list[tuple[Path, int]], folder: Path, image_size: int, stamp: str,
           split: str) -> None:
    from catsdogs.data.images import decode_image
    from catsdogs.training.model import eval_resize

    resize = eval_resize(image_size)
    with atomic_dir(folder, stamp=stamp) as tmp:
        out = np.memmap(tmp / PIXELS_FILE, dtype=np.uint8, mode="w+",
                        shape=(len(items), 3, image_size, image_size))
        with Progress(f"tensor cache {split}", len(items)) as counter:
            for index, (path, _label) in enumerate(items):
                out[index] = resize(decode_image(path)).numpy()
                counter.update()
        out.flush()
        del out
        np.save(tmp / LABELS_FILE, np.array([label for _path, label in items], dtype=np.int64))
    log.info("%s: cached %d pictures at %d px in %s", split, len(items), image_size, folder)
