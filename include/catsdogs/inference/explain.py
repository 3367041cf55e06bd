"""Why the network answered: Grad-CAM heatmaps (Selvaraju et al., 2017) and their overlay.

`GradCam(net)` hooks the output of the network's last convolutional block (ResNet's `layer4`,
MobileNetV2's last `features` block, both after their activation; another network: its last
`Conv2d`, before any activation, whose output must not be changed in place by the next layer) and, for one picture and one class, returns where the
evidence for that class lies:

    A   = the block's activations for the picture, 1 x K x h x w (K channels, h = w = S/32:
          7 x 7 for S = 224)
    G   = d logit[class] / d A, same shape
    w_k = mean of G over h, w (one weight per channel)
    cam = ReLU(sum_k w_k A_k), h x w, upsampled (bilinear) to S x S and scaled to [0, 1] by its
          maximum (all zeros when nothing supports the class)

The pixels go through THE preprocessing (`catsdogs.inference.scorer.pixels_to_inputs`); the pass
runs the eager float32 network with gradients, so it never goes through a serving variant
(TorchScript, bf16, OpenVINO): the heatmap is the torch network's view, whichever variant serves.

`overlay(picture, heatmap)` colours the heatmap (dark blue: none, red: most) and blends it over the
picture at the picture's own size: the S x S map is stretched back to the picture's aspect ratio,
undoing the squash of `catsdogs.data.images.square`. `png(image)` encodes the result.
"""

from __future__ import annotations

import copy
import io
import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from catsdogs.inference.scorer import pixels_to_inputs

logger = logging.getLogger(__name__)

# (position in [0, 1], RGB) anchors of the heatmap's colours: a "jet"-like ramp
COLOURS = ((0.0, (0, 0, 96)), (0.25, (0, 96, 255)), (0.5, (0, 220, 120)), (0.75, (255, 220, 0)),
           (1.0, (230, 20, 0)))
ALPHA = 0.45   # weight of the colours at the map's maximum (30 % of it where the map is 0)


def target_layer(net: torch.nn.Module) -> torch.nn.Module:
    """The block whose output Grad-CAM weighs: ResNet's `layer4`, MobileNetV2's last `features`
    block, else the network's last `Conv2d`. ValueError for a network without convolutions."""
    layer4 = getattr(net, "layer4", None)
    if isinstance(layer4, torch.nn.Module):
        return layer4
    features = getattr(net, "features", None)
    if isinstance(features, torch.nn.Sequential) and len(features):
        return features[-1]
    convolutions = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{type(net).__name__} has no convolution to explain with Grad-CAM")
    return convolutions[-1]


@dataclass(frozen=True)
class Explanation:
    """One picture explained: the eager network's N=1 answer and the class's heatmap."""

    probabilities: np.ndarray   # C float32, the eager float32 network's softmax
    class_index: int            # the class the heatmap is for
    heatmap: np.ndarray         # S x S float32 in [0, 1] (S: the input's side)


class GradCam:
    """Grad-CAM over a copy of `net` (eval mode, float32, on the CPU: `net` itself is left alone,
    so a network about to be registered carries no hook). Thread-safe: one explanation at a time
    (the hooks keep the pass's activations)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = copy.deepcopy(net).eval().float().cpu()
        self.layer = target_layer(self.net)
        self._lock = threading.Lock()
        self._activations: torch.Tensor | None = None
        self._gradients: torch.Tensor | None = None
        self.layer.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        if not torch.is_grad_enabled():
            return
        self._activations = output

        def gradient(grad: torch.Tensor) -> None:
            self._gradients = grad

        output.register_hook(gradient)

    def explain(self, pixels: np.ndarray, class_index: int | None = None) -> Explanation:
        """uint8 S x S x 3 pixels (`square_image`'s) -> the heatmap of `class_index` (default:
        the class the eager network predicts). ValueError for a class index out of range."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels))[None]
        with self._lock, torch.inference_mode(False), torch.enable_grad():
            inputs = pixels_to_inputs(batch, torch.device("cpu")).requires_grad_(True)
            self.net.zero_grad(set_to_none=True)
            logits = self.net(inputs)
            probabilities = torch.softmax(logits.detach().float(), dim=1)[0].numpy()
            target = int(np.argmax(probabilities)) if class_index is None else class_index
            if not 0 <= target < logits.shape[1]:
                raise ValueError(f"class index {target} out of range 0..{logits.shape[1] - 1}")
            logits[0, target].backward()
            activations, gradients = self._activations, self._gradients
            self._activations = self._gradients = None
        if activations is None or gradients is None:
            raise RuntimeError(f"{type(self.layer).__name__} gave no activations or gradients")
        weights = gradients.mean(dim=(2, 3), keepdim=True)                  # 1,K,1,1
        cam = torch.relu((weights * activations.detach()).sum(dim=1, keepdim=True))  # 1,1,h,w
        cam = torch.nn.functional.interpolate(cam, size=pixels.shape[:2], mode="bilinear",
                                              align_corners=False)[0, 0]
        peak = float(cam.max())
        heatmap = (cam / peak if peak > 0 else torch.zeros_like(cam)).clamp_(0, 1)
        return Explanation(probabilities.astype(np.float32), target,
                           heatmap.numpy().astype(np.float32))


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """H x W values in [0, 1] -> H x W x 3 uint8 colours (`COLOURS`)."""
    stops = np.array([stop for stop, _ in COLOURS])
    rgb = np.array([colour for _, colour in COLOURS], dtype=np.float32)
    values = np.clip(heatmap, 0, 1).ravel()
    channels = [np.interp(values, stops, rgb[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).reshape(*heatmap.shape, 3).round().astype(np.uint8)


def overlay(picture: Image.Image, heatmap: np.ndarray, alpha: float = ALPHA) -> Image.Image:
    """The heatmap (S x S in [0, 1]) stretched to the picture's size (W x H) and blended over it:
    an RGB image of the picture's size, more coloured where the heatmap is higher."""
    size = picture.size
    stretched = np.asarray(Image.fromarray((heatmap * 255).round().astype(np.uint8))
                           .resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255
    base = np.asarray(picture.convert("RGB"), dtype=np.float32)
    weight = (alpha * (0.3 + 0.7 * stretched))[..., None]
    blended = base * (1 - weight) + colourise(stretched).astype(np.float32) * weight
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))


def png(image: Image.Image) -> bytes:
    """The image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
