"""The prior projector: landmark prior vector -> one token embedding."""

from __future__ import annotations

import torch
from torch import nn


class PriorProjector(nn.Module):
    """Two-layer MLP with GELU, the shape of LLaVA's vision projector (``mlp2x_gelu``).

    ``(batch, prior_dim)`` -> ``(batch, hidden_size)``: exactly one token per sample.

    Two optional input normalizations come first; both are fitted once to the training
    vectors by :meth:`fit_normalization` and saved with the weights as buffers:

    - ``align=True`` reads the vector as ``prior_dim / 2`` points ``x0 y0 x1 y1 ...`` and
      removes head position, size and in-plane rotation: each face is centred, scaled to
      unit norm and rotated onto the ``reference`` shape (the generalized Procrustes mean
      of the training faces). Expressions move landmarks by a few hundredths of the face
      while a head roll of 15 degrees moves the outer points by a tenth, and a box-normalized
      vector (the 68-point backends) still carries the roll: without alignment the model
      must learn to undo it from a thousand examples. docs/experiments.md (2026-11-21)
      has what a linear probe reads from each view.
    - ``mean`` and ``std`` standardize each coordinate; they default to 0 and 1.

    The published model uses neither: raw InsightFace vectors (``align=False``, no fit).
    """

    def __init__(self, prior_dim: int, hidden_size: int, *, align: bool = False):
        super().__init__()
        if align and prior_dim % 2:
            raise ValueError(f"align needs x,y point pairs; prior_dim {prior_dim} is odd")
        self.align = align
        self.register_buffer("mean", torch.zeros(prior_dim))
        self.register_buffer("std", torch.ones(prior_dim))
        if align:
            self.register_buffer("reference", torch.zeros(prior_dim // 2, 2))
        self.linear_1 = nn.Linear(prior_dim, hidden_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    @staticmethod
    def _centred_unit(points: torch.Tensor) -> torch.Tensor:
        """``(..., K, 2)`` -> the same shapes, centred on their centroid, unit Frobenius norm."""
        centred = points - points.mean(-2, keepdim=True)
        return centred / centred.flatten(-2).norm(dim=-1).clamp_min(1e-8)[..., None, None]

    def align_to_reference(self, prior: torch.Tensor) -> torch.Tensor:
        """Similarity-align ``(batch, prior_dim)`` vectors to ``reference``; same shape out.

        The rotation has a closed form in 2-D: the angle maximizing the dot product with the
        reference is ``atan2(sum(x*ry - y*rx), sum(x*rx + y*ry))``.
        """
        points = self._centred_unit(prior.reshape(prior.shape[0], -1, 2))
        ref = self.reference.to(points.dtype)
        x, y = points[..., 0], points[..., 1]
        angle = torch.atan2((x * ref[:, 1] - y * ref[:, 0]).sum(-1), (x * ref[:, 0] + y * ref[:, 1]).sum(-1))
        c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
        return torch.stack([c * x - s * y, s * x + c * y], dim=-1).reshape(prior.shape)

    @torch.no_grad()
    def fit_normalization(self, priors: torch.Tensor, *, standardize: bool = True, eps: float = 1e-3,
                          iterations: int = 5) -> None:
        """Fit the reference shape (when aligning) and, with ``standardize``, ``mean`` and ``std``.

        ``priors``: training vectors ``(N, prior_dim)``.
        """
        priors = priors.to(self.mean.device, torch.float32)
        if self.align:
            # Generalized Procrustes: align to the current mean shape, re-estimate it, repeat.
            self.reference.copy_(self._centred_unit(priors.reshape(len(priors), -1, 2).mean(0)))
            for _ in range(iterations):
                aligned = self.align_to_reference(priors).reshape(len(priors), -1, 2)
                self.reference.copy_(self._centred_unit(aligned.mean(0)))
            priors = self.align_to_reference(priors)
        if standardize:
            self.mean.copy_(priors.mean(0))
            self.std.copy_(priors.std(0).clamp_min(eps))

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        if self.align:
            prior = self.align_to_reference(prior.float()).to(prior.dtype)
        standardized = (prior - self.mean.to(prior.dtype)) / self.std.to(prior.dtype)
        return self.linear_2(self.act(self.linear_1(standardized)))
