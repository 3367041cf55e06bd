"""Networks the serving tests run: untrained, but with non-trivial batch-norm statistics (batch
norm folding and every serving variant must honour them)."""

from __future__ import annotations

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
