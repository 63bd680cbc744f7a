"""What every fast kernel's start-up check shares: where a Triton kernel can run, how far from its
reference it may be, and what the engine does when a check fails.

Each kernel module has a ``*_problem`` function that runs its kernel beside a PyTorch
reference on the machine at hand and returns a :class:`KernelProblem` (or None). The engine
(:class:`~emola.engine.engine.InferenceEngine`) turns a problem into
:class:`KernelCheckFailed`, so that a replica whose kernel is wrong or cannot run does not
start and says why, unless ``inference.kernel_fallback`` lets it run the slower PyTorch path.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

#: Largest error of a kernel's output against its reference, relative to the reference's largest value, by the
#: dtype the kernel computes in: a few units in the last place of that dtype's output rounding (bf16 keeps 8
#: significant bits: 2^-9 relative). A scale off by 2% in one split, or one split's keys dropped, exceeds it.
RELATIVE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 1e-2}


class KernelCheckFailed(RuntimeError):
    """A kernel the settings ask for failed its start-up check, and ``inference.kernel_fallback`` is off."""


@dataclass(frozen=True)
class KernelProblem:
    """Why a kernel cannot serve here. ``wrong``: it ran and disagreed with its reference (a defect, never a
    matter of the machine); otherwise it cannot run on this device."""

    message: str
    wrong: bool = False

    def __str__(self) -> str:
        return self.message


def triton_runs_on(device: torch.device) -> bool:
    """Triton kernels run on CUDA, and on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``: the tests)."""
    if device.type == "cuda":
        return True
    return (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
            and importlib.util.find_spec("triton") is not None)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` in float32 (NaN anywhere: infinity)."""
    got, want = got.float(), want.float()
    if not bool(torch.isfinite(got).all()):
        return float("inf")
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-6))


def tolerance(dtype: torch.dtype) -> float:
    return RELATIVE_TOLERANCE.get(dtype, RELATIVE_TOLERANCE[torch.bfloat16])
