"""Grad-CAM (`catsdogs.inference.explain`): the heatmap lies on the feature the class is made of,
has the picture's shape and range on both architectures, and differs between the classes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from catsdogs.inference.explain import GradCam, colourise, overlay, png, target_layer
from catsdogs.training.model import build_model

SIDE = 64


class RedDetector(torch.nn.Module):
    """MobileNetV2's shape in small: `features` (whose last block Grad-CAM hooks), pooling and a
    linear head."""

    def __init__(self, conv: torch.nn.Conv2d, head: torch.nn.Linear) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Sequential(conv, torch.nn.ReLU()))
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def red_detector() -> torch.nn.Module:
    """Class 1 ("dog") is 'red here', class 0 the opposite: one 3x3 convolution that answers to
    red pixels (normalised red channel minus the others), pooled, and a linear head."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 1, kernel_size=3, padding=1)
    head = torch.nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[0, 1:] = -0.5
        conv.bias.zero_()
        head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        head.bias.zero_()
    return RedDetector(conv, head)


def grey_with_red_square(top: int, left: int, size: int = 12) -> np.ndarray:
    pixels = np.full((SIDE, SIDE, 3), 128, dtype=np.uint8)
    pixels[top:top + size, left:left + size] = (230, 20, 20)
    return pixels


@pytest.mark.parametrize(("top", "left"), [(4, 4), (40, 44), (26, 8)])
def test_heatmap_peaks_on_the_feature_the_class_is_made_of(top: int, left: int) -> None:
    cam = GradCam(red_detector())
    found = cam.explain(grey_with_red_square(top, left))
    assert found.class_index == 1 and found.probabilities[1] > 0.5
    heatmap = found.heatmap
    assert heatmap.shape == (SIDE, SIDE) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0)
    row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert top - 2 <= row < top + 14 and left - 2 <= col < left + 14
    inside = heatmap[top:top + 12, left:left + 12].mean()
    outside = np.delete(heatmap.ravel(), np.ravel_multi_index(
        np.mgrid[top:top + 12, left:left + 12].reshape(2, -1), heatmap.shape)).mean()
    assert inside > 5 * outside
    # nothing in the picture speaks for class 0: its map is empty
    assert cam.explain(grey_with_red_square(top, left), class_index=0).heatmap.max() == 0
    with pytest.raises(ValueError, match="out of range"):
        cam.explain(grey_with_red_square(top, left), class_index=2)


@pytest.mark.parametrize(("arch", "layer"), [("resnet18", "layer4"), ("mobilenet_v2", "features")])
def test_torchvision_networks_shape_range_and_the_classes_differ(arch: str, layer: str) -> None:
    torch.manual_seed(1)
    net = build_model(arch, weights="none")
    block = net.layer4 if layer == "layer4" else net.features[-1]
    assert target_layer(net) is block
    cam = GradCam(net)
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)
    cat, dog = cam.explain(pixels, 0), cam.explain(pixels, 1)
    for found in (cat, dog):
        assert found.heatmap.shape == (SIDE, SIDE) and found.heatmap.min() >= 0
        assert found.heatmap.max() <= 1 and found.probabilities.sum() == pytest.approx(1, abs=1e-5)
    assert not np.allclose(cat.heatmap, dog.heatmap)
    assert cam.explain(pixels).class_index == int(np.argmax(cat.probabilities))
    # the hooks are on a copy: the network itself is left alone
    assert not block._forward_hooks and target_layer(cam.net)._forward_hooks
    assert cam._activations is None


def test_overlay_has_the_pictures_size_and_colours_where_the_map_is_high() -> None:
    picture = Image.new("RGB", (90, 40), (128, 128, 128))
    heatmap = np.zeros((SIDE, SIDE), dtype=np.float32)
    heatmap[:, SIDE // 2:] = 1.0                                  # the right half
    blended = overlay(picture, heatmap)
    assert blended.size == (90, 40) and blended.mode == "RGB"
    left, right = np.asarray(blended)[:, :30], np.asarray(blended)[:, 60:]
    assert right[..., 0].mean() > left[..., 0].mean() + 40        # red on the right
    assert left[..., 2].mean() > left[..., 0].mean()              # bluish on the left
    decoded = Image.open(io.BytesIO(png(blended)))
    assert decoded.format == "PNG" and decoded.size == (90, 40)
    ramp = colourise(np.linspace(0, 1, 5, dtype=np.float32)[None])
    assert ramp.shape == (1, 5, 3) and tuple(ramp[0, 0]) == (0, 0, 96)
    assert tuple(ramp[0, -1]) == (230, 20, 0)
