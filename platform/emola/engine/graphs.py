"""CUDA graphs of fixed-shape functions: capture once per input shape, replay afterwards.

A prefill of ``n`` prompts runs ~1,000 kernels (the vision tower and every decoder layer);
launched one by one from Python, their launch time is a large part of the prefill of one
prompt. :class:`ShapeGraphs` captures a function once for each shape of its inputs and then
replays it as one launch: inputs are copied into the graph's own static tensors, and the
output is the graph's static output tensor, valid until the next replay of that shape.

The graphs share one memory pool with the decode graphs (:class:`~emola.engine.decoder.SlotDecoder`).
That is safe because every replay runs on the scheduler's one stream, one after another,
and nothing reads a graph's intermediates after its replay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor


class ShapeGraphs:
    """``fn(*tensors, **static) -> tensor`` replayed from a CUDA graph per input shape and ``static``.

    ``fn`` must be a pure function of its inputs apart from in-place writes whose effect
    is the same however often it runs (the decoder's prefill writes its prompts' cache
    entries): it runs twice before each capture, on the real inputs. ``static``: plain
    values that fix the computation (a row count, an attention span), part of the key.
    Inputs are copied into the graph's own tensors without waiting (``non_blocking``): a
    pinned host tensor may be passed and refilled once the replay's result has been read.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], pool):
        self.fn, self.pool = fn, pool
        self._graphs: dict[tuple, _Captured] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, *inputs: torch.Tensor, **static) -> torch.Tensor:
        key = (tuple((tuple(x.shape), x.dtype) for x in inputs), tuple(sorted(static.items())))
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(inputs, static)
        else:
            for held, x in zip(captured.inputs, inputs):
                held.copy_(x, non_blocking=True)
        captured.graph.replay()
        return captured.output

    def _capture(self, inputs: tuple[torch.Tensor, ...], static: dict) -> _Captured:
        device = next(x.device for x in inputs if x.device.type == "cuda")
        held = tuple(x.to(device, copy=True) for x in inputs)
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.fn(*held, **static)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self.fn(*held, **static)
        return _Captured(graph, held, output)
