"""Pictures and per-picture feature rows for the drift tests: the real photos of the sample, the
shifts applied to them (darkened, grayscale, blurred, rotated), non-pet pictures (scikit-image's
photos and noise), and the rows a prediction log / reference profile holds for them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from catsdogs.config import CLASSES
from catsdogs.monitoring.features import embedding_columns, image_statistics
from catsdogs.monitoring.prediction_log import content_hash
from tests.serving.networks import embed

SAMPLE = Path("/work/shared/data/petimages-sample")

SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "darkened": lambda im: ImageEnhance.Brightness(im).enhance(0.35),
    "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "blurred": lambda im: im.filter(ImageFilter.GaussianBlur(radius=4)),
    "rotated": lambda im: im.rotate(90, expand=True),
}


def sample_photos(root: Path = SAMPLE) -> list[Path]:
    """Every photo of the sample, cats and dogs interleaved in a fixed order."""
    cats, dogs = (sorted((root / name).glob("*.jpg")) for name in CLASSES)
    return [path for pair in zip(cats, dogs, strict=False) for path in pair]


def non_pet_pictures(count: int, seed: int = 0) -> list[Image.Image]:
    """`count` pictures that are neither cats nor dogs: random crops of scikit-image's photos
    (astronaut, coffee, rocket, coins, text...) and uniform noise, in a fixed shuffled order."""
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.rocket(), data.camera(), data.coins(),
               data.text(), data.moon(), data.page(), data.immunohistochemistry(), data.retina(),
               data.hubble_deep_field(), data.brick(), data.grass(), data.gravel(), data.clock(),
               data.colorwheel()]
    rng = np.random.default_rng(seed)
    pictures: list[Image.Image] = []
    while len(pictures) < count:
        if len(pictures) % 4 == 3:
            noise = rng.integers(0, 256, size=(int(rng.integers(120, 400)),
                                               int(rng.integers(120, 400)), 3), dtype=np.uint8)
            pictures.append(Image.fromarray(noise))
            continue
        array = sources[int(rng.integers(len(sources)))]
        height, width = array.shape[:2]
        side = int(rng.integers(min(height, width) // 2, min(height, width) + 1))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = array[top:top + side, left:left + side]
        pictures.append(Image.fromarray(crop).convert("RGB"))
    return pictures


def feature_rows(net: object, pictures: Iterable[Image.Image], image_size: int,
                 batch_size: int = 32) -> pd.DataFrame:
    """The prediction-log columns (label, confidence, width, height, format, brightness,
    contrast, saturation, content_hash, emb_0..emb_{D-1}) for `pictures`, from one eval-mode
    network."""
    import torch

    from catsdogs.inference.scorer import normalize
    from catsdogs.training.model import square_pixels

    rows: list[dict[str, object]] = []
    embeddings: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
        vectors, probabilities = embed(net, normalize(pixels))
        embeddings.append(vectors)
        for row, probs in zip(rows[len(rows) - len(batch):], probabilities, strict=True):
            row["label"] = CLASSES[int(probs.argmax())]
            row["confidence"] = float(probs.max())
        batch.clear()

    for picture in pictures:
        pixels = square_pixels(picture, image_size)
        rows.append({"width": picture.width, "height": picture.height,
                     "format": picture.format or "JPEG", **image_statistics(pixels),
                     "content_hash": content_hash(pixels)})
        batch.append(pixels)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    frame = pd.DataFrame(rows)
    vectors = np.concatenate(embeddings)
    return pd.concat([frame, pd.DataFrame(vectors, columns=embedding_columns(vectors.shape[1]))],
                     axis=1)
