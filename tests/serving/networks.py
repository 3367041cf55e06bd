"""Networks the serving tests run: untrained, but with non-trivial batch-norm statistics (batch
norm folding and every serving variant must honour them)."""

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


def pictures(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with noise, N,H,W,3 uint8 (INT8 calibration needs picture-like
    statistics)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    low, high = rng.integers(0, 256, (count, 1, 1, 3)), rng.integers(0, 256, (count, 1, 1, 3))
    gradient = low + (high - low) * (ramp[None, :, None, None] * ramp[None, None, :, None])
    noise = rng.integers(-20, 21, (count, size, size, 3))
    return np.clip(gradient + noise, 0, 255).astype(np.uint8)
