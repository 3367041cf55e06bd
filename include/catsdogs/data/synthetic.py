"""A small generated stand-in data set (used by `make demo` without Kaggle credentials, and tests).

Cats are warm images with triangles (ears), dogs cool images with rounded blobs: easy enough for a
CNN to learn in one epoch, varied enough (size, position, noise) to exercise every stage. The set
is marked as generated (`catsdogs.data.provenance.GENERATED_MARKER`), so a model trained on it is
recorded as such.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from catsdogs.config import CLASSES
from catsdogs.data.provenance import mark_generated

log = logging.getLogger(__name__)


def _draw(label: str, rng: np.random.Generator) -> Image.Image:
    width, height = int(rng.integers(96, 320)), int(rng.integers(96, 320))
    if label == "cat":
        base = rng.integers([150, 60, 20], [255, 140, 90])
    else:
        base = rng.integers([20, 60, 130], [90, 150, 255])
    noise = rng.normal(0, 18, size=(height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        size = rng.uniform(0.1, 0.3) * min(width, height)
        colour = tuple(int(c) for c in rng.integers(0, 255, size=3))
        if label == "cat":
            draw.polygon([(cx, cy - size), (cx - size, cy + size), (cx + size, cy + size)], fill=colour)
        else:
            draw.ellipse([cx - size, cy - size * 0.7, cx + size, cy + size * 0.7], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.2))))


def generate_dataset(target: Path, per_class: int = 60, seed: int = 0,
                     classes: tuple[str, ...] = CLASSES) -> Path:
    """Write `target/{cat,dog}/<label>.<i>.jpg` plus the generated-set marker and return `target`.
    Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    for label in classes:
        folder = target / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            _draw(label, rng).save(folder / f"{label}.{index}.jpg", quality=90)
    mark_generated(target, per_class=per_class, seed=seed, classes=list(classes))
    log.info("generated %d synthetic images per class in %s", per_class, target)
    return target
