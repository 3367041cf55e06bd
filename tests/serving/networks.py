"""Networks the serving tests run: untrained, but with non-trivial batch-norm statistics (batch
norm folding and every serving variant must honour them); `embed`, the tests' own way to the
penultimate-layer embedding (a forward hook), to check the scorer's against."""

from __future__ import annotations

import numpy as np
import torch

from catsdogs.training.model import build_model


def trained_looking(arch: str) -> torch.nn.Module:
    """`arch` with random weights (seeded) and batch-norm running statistics away from 0/1."""
    torch.manual_seed(3)
    net = build_model(arch, weights="none").eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return net


def embed(net: torch.nn.Module, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One forward pass of an eager `nn.Module` on N,3,H,W normalised pixels, the head's input
    captured by a forward hook -> (N,D float32 penultimate-layer embedding, N,C float32 class
    probabilities): independent of `catsdogs.inference.scorer.with_embedding`."""
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    captured: list[torch.Tensor] = []
    hook = linears[-1].register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    try:
        with torch.inference_mode():
            logits = net(batch)
    finally:
        hook.remove()
    probabilities = torch.softmax(logits.float(), dim=1)
    return captured[0].float().cpu().numpy(), probabilities.cpu().numpy()


def pictures(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with noise, N,H,W,3 uint8 (INT8 calibration needs picture-like
    statistics)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    low, high = rng.integers(0, 256, (count, 1, 1, 3)), rng.integers(0, 256, (count, 1, 1, 3))
    gradient = low + (high - low) * (ramp[None, :, None, None] * ramp[None, None, :, None])
    noise = rng.integers(-20, 21, (count, size, size, 3))
    return np.clip(gradient + noise, 0, 255).astype(np.uint8)
