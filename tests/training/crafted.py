"""Hand-made models of known quality on the synthetic set (cats warm, dogs cool), for promotion."""

from __future__ import annotations

import torch


class ColourRule(torch.nn.Module):
    """`dog` logit minus `cat` logit = weight * (mean blue - mean red) + bias.

    weight 1, bias 0: near perfect; weight 0, bias +1: always dog; weight 0, bias -1: always cat.
    """

    def __init__(self, weight: float, bias: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(float(weight)))
        self.bias = torch.nn.Parameter(torch.tensor(float(bias)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        margin = self.weight * (images[:, 2].mean(dim=(1, 2)) - images[:, 0].mean(dim=(1, 2)))
        margin = margin + self.bias
        return torch.stack([-margin / 2, margin / 2], dim=1)
