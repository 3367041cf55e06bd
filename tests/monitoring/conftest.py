"""Session fixtures of the monitoring tests: feature rows of the real photo sample, computed once
by a real network (MobileNetV2, ImageNet backbone, a cat/dog head fitted on real photos)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.monitoring.pictures import SHIFTS, feature_rows, non_pet_pictures, sample_photos

IMAGE_SIZE = 160
HEAD_PHOTOS = 200        # fit the head (the "train" split)
REFERENCE_PHOTOS = 200   # the reference profile (the "val" split)
WINDOW = 50              # pictures per monitoring window
CLEAN_WINDOWS = 20
PROBE_REPEATS = 200      # an uptime probe's copies of one photo in a window


@dataclass
class PhotoFeatures:
    """Prediction-log rows of real photos: `reference` (held out from the head's fit, like the
    val split of a training run), `clean` (CLEAN_WINDOWS * WINDOW other photos, in windows),
    `shifted` (kind -> WINDOW rows: the first clean window's photos shifted, or non-pet pictures),
    `resized` (the first clean window's photos as a client app sends them: resized to 640x480
    and re-encoded as JPEG), `probe` (PROBE_REPEATS rows of one photo sent again and again)."""

    reference: pd.DataFrame
    clean: list[pd.DataFrame]
    shifted: dict[str, pd.DataFrame]
    resized: pd.DataFrame
    probe: pd.DataFrame


def _load(paths: list[Path]) -> list[Image.Image]:
    pictures = []
    for path in paths:
        with Image.open(path) as image:
            image.load()
            pictures.append(image)
    return pictures


def _as_client_app_sends(picture: Image.Image) -> Image.Image:
    """`picture` resized to 640x480 (whatever its aspect) and re-encoded as JPEG (quality 85)."""
    buffer = io.BytesIO()
    picture.convert("RGB").resize((640, 480), Image.Resampling.BILINEAR).save(
        buffer, "JPEG", quality=85)
    with Image.open(io.BytesIO(buffer.getvalue())) as sent:
        sent.load()
        return sent


def _fit_head(net: object, rows: pd.DataFrame, labels: np.ndarray) -> None:
    """Fit the cat/dog head (logistic regression on the embedding) and copy it into the net."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from catsdogs.monitoring.drift import embedding_names

    fitted = LogisticRegression(max_iter=2000, C=0.5).fit(rows[embedding_names(rows)].values,
                                                          labels)
    head = net.classifier[-1]  # type: ignore[attr-defined]
    with torch.no_grad():   # two-class softmax with logits (0, w.x + b) = the fitted model
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1] = torch.from_numpy(fitted.coef_[0]).float()
        head.bias[1] = float(fitted.intercept_[0])


@pytest.fixture(scope="session")
def photo_features(sample_dir: Path) -> PhotoFeatures:
    """Feature rows of ~1,650 real photos and non-pet pictures (about a minute on 2 cores)."""
    import torch

    from catsdogs.training.model import build_model
    from catsdogs.training.weights import seed_cache

    seed_cache()
    torch.manual_seed(0)
    net = build_model("mobilenet_v2", "imagenet").eval()
    photos = sample_photos(sample_dir)
    head_photos = photos[:HEAD_PHOTOS]
    head_rows = feature_rows(net, _load(head_photos), IMAGE_SIZE)
    _fit_head(net, head_rows, np.array([p.parent.name == "dog" for p in head_photos], int))
    start = HEAD_PHOTOS
    reference = feature_rows(net, _load(photos[start:start + REFERENCE_PHOTOS]), IMAGE_SIZE)
    start += REFERENCE_PHOTOS
    clean = []
    for index in range(CLEAN_WINDOWS):
        window = photos[start + index * WINDOW:start + (index + 1) * WINDOW]
        clean.append(feature_rows(net, _load(window), IMAGE_SIZE))
    base = _load(photos[start:start + WINDOW])
    shifted = {kind: feature_rows(net, [shift(p) for p in base], IMAGE_SIZE)
               for kind, shift in SHIFTS.items()}
    shifted["non-pet pictures"] = feature_rows(net, non_pet_pictures(WINDOW), IMAGE_SIZE)
    resized = feature_rows(net, [_as_client_app_sends(p) for p in base], IMAGE_SIZE)
    probe = feature_rows(net, [base[0]] * PROBE_REPEATS, IMAGE_SIZE)
    return PhotoFeatures(reference, clean, shifted, resized, probe)
