"""The prior projector: landmark prior vector -> one token embedding."""

from __future__ import annotations

import torch
from torch import nn


class PriorProjector(nn.Module):
    """Two-layer MLP with GELU, the shape of LLaVA's vision projector (``mlp2x_gelu``).

    ``(batch, prior_dim)`` -> ``(batch, hidden_size)``: exactly one token per sample.
    """

    def __init__(self, prior_dim: int, hidden_size: int):
        super().__init__()
        self.linear_1 = nn.Linear(prior_dim, hidden_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(prior)))
