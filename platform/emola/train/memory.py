"""Activation checkpointing sized to the memory: ``train.checkpointing: auto``.

Which decoder layers should recompute their activations depends on how many tokens a
micro batch holds: at the ``emola-7b`` shape on one GPU, 16 emotion-length samples (697
tokens) fit 80 GB with every fourth layer recomputed, 16 AU-length samples (917) do not.
A fixed policy either wastes time on short batches or runs out of memory on long ones.

``auto`` chooses per micro batch, from the fastest to the most frugal interval (none, every
fourth, every other, every layer), the first whose estimated peak fits the budget:

    peak = held + correction x tokens x (stored x per_layer + recomputed x layer_input + other)

- ``held``: memory allocated when the micro batch starts (weights, optimizer states, gradients);
- ``per_layer``: bytes per token that a decoder layer keeps for its backward pass, measured
  once (:func:`probe`) by counting the tensors autograd saves in a forward pass of two
  sample rows with no layer recomputed and with every layer recomputed;
- ``layer_input``: what a recomputed layer keeps (its input), plus one layer's activations
  while it is recomputed in the backward pass;
- ``other``: bytes per token kept outside the decoder layers (vision tower, embeddings,
  logits), from the same probe;
- ``correction``: 1.15 until a peak has been measured; then the largest ratio of a measured
  peak (above ``held``) to its uncorrected estimate: what the count of saved tensors misses
  (temporaries of the backward pass, allocator rounding) is learned from the run itself,
  and a micro batch never gets less room than one before it needed. The margin for what
  the allocator does not count is the budget's (by default the GPU's memory less 4 GiB).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

#: Recompute intervals from the fastest to the most frugal: 0 no layer, 4 every fourth, 2 every other, 1 every layer.
INTERVALS = (0, 4, 2, 1)
GIB = 2**30
#: Device memory left out of the default budget: the CUDA context, NCCL's buffers, the allocator's fragmentation.
HEADROOM = 4 * GIB


def recomputed_layers(layers: int, interval: int) -> int:
    """How many of ``layers`` recompute with ``interval`` (layers 0, interval, 2 x interval, ...)."""
    return 0 if interval == 0 else math.ceil(layers / interval)


def set_interval(layers: nn.ModuleList, interval: int) -> None:
    """Switch transformers' per-layer checkpointing flags: every ``interval``-th layer recomputes (0: none)."""
    for index, layer in enumerate(layers):
        layer.gradient_checkpointing = interval > 0 and index % interval == 0


def saved_bytes(forward: Callable[[], torch.Tensor], exclude: set[int]) -> int:
    """Bytes of the tensors autograd saves for backward while ``forward`` runs (storages counted once;
    storages in ``exclude``, the parameters, not counted)."""
    seen = set(exclude)
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        # Detached: an output saved by its own node would otherwise hold that node (a reference cycle through
        # autograd that Python's collector cannot see, keeping the probe's activations alive).
        return tensor.detach()

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = forward()
        del out
    return total


@dataclass
class ActivationMemory:
    """The estimate above, and the choice of interval it drives."""

    layers: int
    per_layer: float      # bytes per token per decoder layer that keeps its activations
    layer_input: float    # bytes per token per recomputed layer (its input)
    other: float          # bytes per token outside the decoder layers
    budget: float         # bytes the step may use in all
    correction: float = 1.15
    seen: float = 0.0     # the largest measured ratio of peak to the uncorrected estimate

    def estimate(self, tokens: int, interval: int) -> float:
        """Bytes above ``held`` for a micro batch of ``tokens`` (rows x width) at ``interval``."""
        recomputed = recomputed_layers(self.layers, interval)
        stored = self.layers - recomputed
        per_token = (stored * self.per_layer + recomputed * self.layer_input + (self.per_layer if recomputed else 0.0)
                     + self.other)
        return self.correction * tokens * per_token

    def choose(self, tokens: int, held: float) -> int:
        """The fastest interval whose estimated peak fits the budget (every layer when none does)."""
        for interval in INTERVALS:
            if held + self.estimate(tokens, interval) <= self.budget:
                return interval
        return 1

    def observe(self, tokens: int, interval: int, held: float, peak: float) -> None:
        """Learn from a measured peak (``correction`` above)."""
        raw = self.estimate(tokens, interval) / self.correction
        if raw > 0 and peak > held:
            self.seen = max(self.seen, (peak - held) / raw)
            self.correction = self.seen


def probe(forward: Callable[[], torch.Tensor], layers: nn.ModuleList, tokens: int, hidden: int, dtype_bytes: int,
          parameters, budget: float) -> ActivationMemory:
    """Measure ``per_layer`` and ``other`` with two forward passes of a small batch of ``tokens``
    (no backward): no layer recomputed, then every layer. Leaves every layer recomputing.

    With every layer recomputed, what autograd saves is what lies outside the layers plus
    each layer's input, which the checkpoint keeps (``layer_input`` per token and layer).
    """
    exclude = {p.untyped_storage().data_ptr() for p in parameters}
    set_interval(layers, 0)
    every_layer_keeps = saved_bytes(forward, exclude) / tokens
    set_interval(layers, 1)
    no_layer_keeps = saved_bytes(forward, exclude) / tokens
    count, layer_input = len(layers), float(hidden * dtype_bytes)
    per_layer = max(every_layer_keeps - no_layer_keeps, 0.0) / count + layer_input
    return ActivationMemory(layers=count, per_layer=per_layer, layer_input=layer_input,
                            other=max(no_layer_keeps - count * layer_input, 0.0), budget=budget)
