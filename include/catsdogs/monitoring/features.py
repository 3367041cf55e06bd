"""What is recorded per picture, the same at training time (the reference profile) and at serving
time (the prediction log), so the two can be compared column by column.

- `image_statistics`: brightness, contrast and saturation of the model's input pixels.
- `embed`: the network's penultimate-layer embedding (the input of its last `Linear` layer, the
  classifier head) together with the class probabilities, from one forward pass.
- `PREDICTION_COLUMNS` / `embedding_columns`: the column names both tables share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# One row per picture. The reference profile adds `split` (train/val); the prediction log adds
# `time` (UTC), `model_version`, `in_distribution` and `ood_score`.
IMAGE_COLUMNS = ("width", "height", "format", "brightness", "contrast", "saturation")
PREDICTION_COLUMNS = ("label", "confidence", *IMAGE_COLUMNS)
EMBEDDING_PREFIX = "emb_"


def embedding_columns(size: int) -> list[str]:
    """`emb_0 ... emb_{size-1}`: the embedding's columns."""
    return [f"{EMBEDDING_PREFIX}{i}" for i in range(size)]


def image_statistics(pixels: np.ndarray) -> dict[str, float]:
    """Brightness, contrast and saturation of one H,W,3 uint8 RGB picture, each in [0, 1].

    brightness: mean luma (ITU-R BT.601); contrast: standard deviation of luma; saturation: mean
    of (max - min) / max over the RGB channels (HSV saturation; 0 for a gray picture).
    """
    # per channel plane, max/min in uint8: 14x faster than reducing a float H,W,3 array over its
    # last axis (0.7 vs 9.5 ms for 224 px here), the same values to 1e-7; the service computes
    # this for every prediction
    red, green, blue = (pixels[..., channel] for channel in range(3))
    luma = (np.float32(0.299 / 255) * red + np.float32(0.587 / 255) * green
            + np.float32(0.114 / 255) * blue)
    high = np.maximum(np.maximum(red, green), blue)
    spread = (high - np.minimum(np.minimum(red, green), blue)).astype(np.float32)
    saturation = np.divide(spread, high, out=np.zeros_like(spread), where=high > 0)
    return {"brightness": float(luma.mean()), "contrast": float(luma.std()),
            "saturation": float(saturation.mean())}


def _head(net: Any) -> Any:
    """The network's last `torch.nn.Linear` (the classifier head of ResNet / MobileNetV2)."""
    import torch

    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no Linear layer to take an embedding from")
    return linears[-1]


def embed(net: Any, batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """One forward pass of an eager `nn.Module` on N,3,H,W normalised pixels ->
    (N,D float32 penultimate-layer embedding, N,C float32 class probabilities)."""
    import torch

    captured: list[torch.Tensor] = []
    hook = _head(net).register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    try:
        with torch.inference_mode():
            logits = net(batch)
    finally:
        hook.remove()
    probabilities = torch.softmax(logits.float(), dim=1)
    return captured[0].float().cpu().numpy(), probabilities.cpu().numpy()


def with_embedding(net: Any) -> Any:
    """A copy of `net` whose forward returns (N,C logits, N,D embedding) from ONE pass: the last
    `Linear` (the head) is taken out of the body and applied to the body's output, which is the
    head's input. Holds for networks whose head is the last operation of `forward` (ResNet's
    `fc`, MobileNetV2's `classifier[-1]`: what `build_model` makes). ValueError when `net` has no
    Linear layer (e.g. an exported graph)."""
    import copy

    import torch

    from catsdogs.monitoring.embedding_net import WithEmbedding

    head = _head(net)
    body = copy.deepcopy(net)
    name = next(n for n, m in net.named_modules() if m is head)
    parent_name, _, attribute = name.rpartition(".")
    parent = body.get_submodule(parent_name) if parent_name else body
    setattr(parent, attribute, torch.nn.Identity())
    return WithEmbedding(body, copy.deepcopy(head)).eval()

