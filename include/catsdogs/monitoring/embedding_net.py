"""The module `catsdogs.monitoring.features.with_embedding` returns (kept apart so that importing
`features` does not import torch)."""

from __future__ import annotations

import torch


class WithEmbedding(torch.nn.Module):
    """body(x) -> N,D embedding; head(embedding) -> N,C logits; forward returns both."""

    def __init__(self, body: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.body(x)
        return self.head(embedding), embedding
