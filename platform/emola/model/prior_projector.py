"""The prior projector: landmark prior vector -> one token embedding."""

from __future__ import annotations

import torch
from torch import nn


class PriorProjector(nn.Module):
    """Two-layer MLP with GELU, the shape of LLaVA's vision projector (``mlp2x_gelu``).

    ``(batch, prior_dim)`` -> ``(batch, hidden_size)``: exactly one token per sample.

    The input is first standardized with the buffers ``mean`` and ``std``, which default to
    0 and 1 (the published model: raw vectors). :meth:`set_standardization` fits them to
    training vectors: landmark coordinates differ between expressions by a few hundredths,
    and unit-variance inputs let a randomly initialized model pick that signal up far sooner.
    The buffers are saved with the weights.
    """

    def __init__(self, prior_dim: int, hidden_size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(prior_dim))
        self.register_buffer("std", torch.ones(prior_dim))
        self.linear_1 = nn.Linear(prior_dim, hidden_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    @torch.no_grad()
    def set_standardization(self, priors: torch.Tensor, eps: float = 1e-3) -> None:
        """Fit ``mean`` and ``std`` to training prior vectors ``(N, prior_dim)``."""
        priors = priors.to(self.mean.device, torch.float32)
        self.mean.copy_(priors.mean(0))
        self.std.copy_(priors.std(0).clamp_min(eps))

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        standardized = (prior - self.mean.to(prior.dtype)) / self.std.to(prior.dtype)
        return self.linear_2(self.act(self.linear_1(standardized)))
