"""The prior projector's input normalization: similarity alignment and standardization."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emola.model.prior_projector import PriorProjector
from emola.synth.face_model import MEAN_SHAPE


def _posed(points: np.ndarray, angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return (points @ np.array([[c, s], [-s, c]])) * scale + np.asarray(shift)


def _faces(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` copies of the mean face with small shape noise, each at a random pose, in pixels."""
    rng = np.random.default_rng(seed)
    faces = [_posed(MEAN_SHAPE + rng.normal(0, 0.01, MEAN_SHAPE.shape), rng.uniform(-0.3, 0.3),
                    rng.uniform(40, 70), tuple(rng.uniform(60, 130, 2))) for _ in range(n)]
    return torch.tensor(np.stack(faces).reshape(n, -1), dtype=torch.float32)


def test_aligned_projection_ignores_head_position_size_and_roll():
    torch.manual_seed(0)
    projector = PriorProjector(136, 32, align=True)
    projector.fit_normalization(_faces(64))
    face = MEAN_SHAPE + np.random.default_rng(1).normal(0, 0.02, MEAN_SHAPE.shape)
    same_face = torch.tensor(np.stack([_posed(face, a, k, (x, y)).reshape(-1)
                                       for a, k, x, y in [(0.0, 50, 96, 96), (0.25, 65, 80, 120), (-0.2, 42, 110, 70)]]),
                             dtype=torch.float32)
    out = projector(same_face)
    assert out.shape == (3, 32)
    assert torch.allclose(out[0], out[1], atol=1e-4) and torch.allclose(out[0], out[2], atol=1e-4)

    plain = PriorProjector(136, 32)
    plain.load_state_dict({k: v for k, v in projector.state_dict().items() if k != "reference"})
    raw = plain(same_face)
    assert not torch.allclose(raw[0], raw[1], atol=1e-2)  # the same weights without alignment see pose


def test_fit_finds_a_centred_unit_reference_and_aligned_statistics():
    projector = PriorProjector(136, 16, align=True)
    priors = _faces(128, seed=2)
    projector.fit_normalization(priors)
    ref = projector.reference
    assert torch.allclose(ref.mean(0), torch.zeros(2), atol=1e-6)
    assert ref.norm().item() == pytest.approx(1.0, abs=1e-5)
    # The reference is the mean face up to a similarity: aligned faces are close to it.
    aligned = projector.align_to_reference(priors).reshape(128, 68, 2)
    assert (aligned - ref).norm(dim=(1, 2)).max().item() < 0.05
    # Standardization statistics describe the aligned vectors, not the raw pixels.
    assert torch.allclose(projector.mean, aligned.reshape(128, -1).mean(0), atol=1e-6)
    assert projector.std.max().item() < 0.05


def test_fit_without_standardize_keeps_the_identity_scaling():
    projector = PriorProjector(136, 16, align=True)
    projector.fit_normalization(_faces(16), standardize=False)
    assert torch.equal(projector.mean, torch.zeros(136)) and torch.equal(projector.std, torch.ones(136))
    assert projector.reference.abs().sum() > 0


def test_published_projector_has_no_reference_and_rejects_odd_alignment():
    assert "reference" not in PriorProjector(212, 8).state_dict()
    with pytest.raises(ValueError, match="odd"):
        PriorProjector(135, 8, align=True)
