"""Register a tiny untrained model in a real MLflow server the way training does (used by the
serving tests' fixture, run as
`python -m tests.serving.register_tiny URL NAME IMAGE_SIZE [DATA_SOURCE true|false]
[--swapped]`).
The optional data source becomes the version's `data.source`/`data.synthetic` tags, as training
records them; @champion moves to the version the way promote moves it (recorded in the champion
history, the model card refreshed).

The head's weights are scaled up so different pictures get clearly different probabilities:
that lets the tests tell answers apart (batching mix-ups, EXIF handling). Then a temperature
`TEMPERATURE` (not 1) is folded into the head the way training's temperature scaling does
(`catsdogs.training.calibration.fold_temperature`), so every serving test serves a calibrated
version, and `tiny_network` rebuilds the network before the fold for comparisons. Like training, the run
carries an out-of-distribution calibration (`monitoring/ood.json`, `ood.npz`), here fitted on
generated smooth colour pictures, so the service scores and logs every answer. `--swapped`
negates the head (weights and bias): the same network with its two labels swapped, a version
that disagrees with the others on every picture (the rollout's shadow tests)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient

from catsdogs.config import CLASSES
from catsdogs.data.provenance import Provenance
from catsdogs.monitoring import ood
from catsdogs.monitoring.reference import ARTIFACT_DIR, run_network
from catsdogs.registry.history import move_champion
from catsdogs.registry.names import BY_PROMOTE
from catsdogs.registry.record import register, version_tags
from catsdogs.training.calibration import fold_temperature
from catsdogs.training.model import build_model


def log_calibration(net: torch.nn.Module, image_size: int) -> None:
    """Fit the out-of-distribution detector on 48 smooth colour gradients (train 32, val 16)."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0.0, 1.0, image_size, dtype=np.float32)
    pictures = []
    for _ in range(48):
        low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        pictures.append((low[:, None, None] + (high - low)[:, None, None] * ramp[None, None, :]
                         * ramp[None, :, None]).astype(np.uint8))
    embeddings, _ = run_network(net, torch.from_numpy(np.stack(pictures)))
    detector = ood.fit(embeddings[:32], np.arange(32) % 2, embeddings[32:], CLASSES)
    with tempfile.TemporaryDirectory() as tmp:
        detector.save(Path(tmp))
        mlflow.log_artifacts(tmp, ARTIFACT_DIR)


TEMPERATURE = 2.0


def tiny_network(swapped: bool = False) -> torch.nn.Module:
    """The tiny network as built, before the temperature is folded in (eval mode); `swapped`
    negates its head (weights and bias): the same network with its two labels swapped."""
    torch.manual_seed(0)
    net = build_model("resnet18", weights="none").eval()
    with torch.no_grad():
        net.fc.weight.mul_(-20.0 if swapped else 20.0)
        if swapped:
            net.fc.bias.neg_()
    return net


def main(url: str, name: str, image_size: int, data: Provenance | None = None,
         swapped: bool = False) -> None:
    mlflow.set_tracking_uri(url)
    net = tiny_network(swapped)
    fold_temperature(net, TEMPERATURE)
    example = np.random.default_rng(0).random((2, 3, image_size, image_size), dtype=np.float32)
    mlflow.set_experiment("catsdogs serving tests")
    with mlflow.start_run():
        version = register(net, name, example, version_tags(image_size, CLASSES, "resnet18", data))
        log_calibration(net, image_size)
    move_champion(MlflowClient(), name, version.version, reason="registered by the serving tests",
                  by=BY_PROMOTE)
    print(version.version)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--swapped"]
    main(args[0], args[1], int(args[2]),
         Provenance(args[3], args[4] == "true") if len(args) > 4 else None,
         swapped="--swapped" in sys.argv)
