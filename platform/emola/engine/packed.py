"""One forward pass for decode rows and arriving prompts together: the packed decoder.

:class:`~emola.engine.decoder.SlotDecoder` prefills arrivals in a pass of their own, which
stops every running request for as long as a 7B prompt of ~630 tokens takes.
:class:`PackedDecoder` runs a step as one pass over packed tokens ``(total, hidden)``: one
token for each running request and every token of each arriving prompt. The matrix
products see one tall matrix, so the decode rows ride along on the prompts' weight reads.

Attention is per sequence. The prompts attend causally over their own keys and values
through a variable-length kernel (:mod:`emola.engine.attention`); the decode rows over
their cache rows, in one of two ways (``rows``):

- ``varlen``: each row over its own length (:func:`~emola.engine.decode_kernel.decode_attention`,
  a Triton kernel on CUDA);
- ``padded``: as the slot decoder's rows, over the cache up to a length bucket of the
  longest row, masked (``matmul`` or ``sdpa``).

Layout. Requests occupy cache rows ``0 .. b-1`` (running) and ``b .. b+n-1`` (arriving),
as the engine keeps them compact; row ``slots`` is a scratch row for padding tokens. The
cache is the slot decoder's, ``(layers, slots + 1, kv_heads, context, d)``. Tokens are
ordered: the decode rows (padded to a power of two), the prompts, padding. Every step
describes its tokens with one int64 tensor (:meth:`describe`): id, position and cache row
of each token, which token's logits each request gets, and the prompts' query offsets
and key counts. The shapes then depend only on the decode rows, the token count and (with
``padded``) the attention span, so on CUDA each is captured once as a CUDA graph
(:class:`~emola.engine.graphs.ShapeGraphs`) and replayed after.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from emola.engine.attention import KERNELS, reference_attention
from emola.engine.decode_kernel import decode_attention, decode_attention_reference
from emola.engine.decoder import DecoderWeights, _apply, round_up
from emola.engine.graphs import ShapeGraphs


def _power_of_two(n: int) -> int:
    bucket = 1
    while bucket < n:
        bucket *= 2
    return bucket


class PackedDecoder(DecoderWeights):
    """Decode steps and prefills as one packed pass over a slot-padded KV cache.

    Args:
        language_model / lm_head: as for :class:`~emola.engine.decoder.SlotDecoder`.
        slots: requests at most (cache rows besides the scratch row).
        context: positions per request.
        rows: ``varlen`` or ``padded``: how decode rows attend (see the module); ``varlen`` uses the
            Triton kernel where ``kernel`` is a CUDA one, the reference otherwise.
        row_attention: with ``padded``, ``matmul`` or ``sdpa`` (as the slot decoder).
        length_bucket: with ``padded``, decode rows read the cache in multiples of this.
        cuda_graphs: on CUDA, replay each step shape from a CUDA graph.
        kernel: the prompts' kernel: ``flash`` or ``efficient`` (CUDA kernels,
            :data:`~emola.engine.attention.KERNELS`), or ``reference``
            (:func:`~emola.engine.attention.reference_attention`: one kernel per sequence, with
            host synchronisation: eager only).
        token_step: prompt tokens are padded to a multiple of this.
        graph_tokens: steps of more tokens run eagerly (their arithmetic outweighs the kernel
            launches a graph saves, and each new size would cost a capture).
        cache_dtype: the KV cache's dtype (default the model's); ``torch.float8_e4m3fn`` halves the bytes a
            decode row reads (``varlen`` rows only: the kernel widens each entry as it loads it). The
            prompts attend over their own keys before rounding: only later steps read the rounded ones.
    """

    def __init__(self, language_model: nn.Module, lm_head: nn.Linear, *, slots: int, context: int,
                 rows: str = "varlen", row_attention: str = "sdpa", length_bucket: int = 128,
                 cuda_graphs: bool = True, kernel: str = "reference", token_step: int = 64, graph_tokens: int = 2048,
                 cache_dtype: torch.dtype | None = None, rope_kernel: bool = False):
        super().__init__(language_model, lm_head, context=context, rope_kernel=rope_kernel)
        if rows not in ("varlen", "padded"):
            raise ValueError(f"packed decoder rows {rows!r}: varlen or padded")
        if row_attention not in ("matmul", "sdpa"):
            raise ValueError(f"decode attention {row_attention!r}: matmul or sdpa")
        self.slots, self.rows, self.row_attention = slots, rows, row_attention
        self.scratch_slot = slots
        self.sequences = slots + 1
        self.length_bucket = max(1, min(length_bucket, context))
        self.token_step = max(1, min(token_step, context // 2))   # the padding fits the scratch row
        self.graph_tokens = graph_tokens
        if cache_dtype not in (None, self.dtype) and rows != "varlen":
            raise ValueError(f"a {cache_dtype} KV cache is read by varlen rows only, not {rows!r}")
        self._allocate_cache(slots + 1, cache_dtype)
        pin = self.device.type == "cuda"
        self._zeros: dict[int, torch.Tensor] = {}
        self._meta_host = [torch.zeros(self._meta_size(2 * (context + slots)), dtype=torch.int64, pin_memory=pin)
                           for _ in range(2)]
        self._meta_turn = 0
        self._meta_done: list[torch.cuda.Event | None] = [None, None]   # the step that last read each buffer
        if kernel != "reference" and kernel not in KERNELS:
            raise ValueError(f"attention kernel {kernel!r}: one of {', '.join([*KERNELS, 'reference'])}")
        self.kernel = kernel
        self._attend = KERNELS.get(kernel)
        self._decode_rows = decode_attention if self._attend is not None else decode_attention_reference
        self.use_graphs = cuda_graphs and self._attend is not None and self.device.type == "cuda"
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._graphs = ShapeGraphs(self._body, self._pool) if self.use_graphs else None

    @property
    def graphs(self) -> int:
        """Step shapes captured so far."""
        return len(self._graphs) if self._graphs is not None else 0

    # ------------------------------------------------------------------ shapes
    def shape(self, positions: Sequence[int], lengths: Sequence[int]) -> tuple[int, int, int]:
        """(decode width, total tokens, attention span) of a step: the decode rows rounded up to a power of
        two, the prompts' tokens rounded up to ``token_step``, and with ``padded`` the decode rows' length
        bucket (the whole context when prompts ride along; 0 with ``varlen``)."""
        b, prompt = len(positions), sum(lengths)
        width = min(_power_of_two(b), self.slots) if b else 0
        span = 0
        if b and self.rows == "padded":
            longest = max(positions) + 1
            span = self.context if prompt else min(self.context, round_up(longest, self.length_bucket))
        return width, width + round_up(prompt, self.token_step), span

    def _meta_size(self, total: int) -> int:
        return 3 * total + self.slots + 2 * self.sequences + 1

    # -------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, tokens: Sequence[int] | None, positions: Sequence[int], prompts: Sequence[torch.Tensor]
             ) -> torch.Tensor:
        """One pass: decode rows ``0 .. b-1`` (``tokens[i]`` at ``positions[i]``; ``tokens`` None: each row's
        last token is already in ``self.tokens``, where the engine's sampling wrote it) and prompts
        ``(L_i, hidden)`` into rows ``b .. b+n-1`` at positions ``0 .. L_i-1``.

        Returns ``(b + n, vocab)`` float32 logits: each decode row's next token, then each
        prompt's first answer token.
        """
        b, n = len(positions), len(prompts)
        if tokens is not None:
            if len(tokens) != b:
                raise ValueError(f"{len(tokens)} tokens for {b} decode positions")
            self.tokens[:b] = torch.as_tensor(list(tokens), dtype=torch.long).to(self.device)
        if b + n > self.slots:
            raise ValueError(f"{b} running and {n} new requests exceed the {self.slots} slots")
        lengths = [int(p.shape[0]) for p in prompts]
        if any(length > self.context for length in lengths):
            raise ValueError(f"a prompt of {max(lengths)} tokens exceeds the {self.context}-token context")
        if b and max(positions) >= self.context:
            raise ValueError(f"a decode position of {max(positions)} is outside the {self.context}-token context")
        width, total, span = self.shape(positions, lengths)
        meta = self.describe(positions, lengths, width, total)
        if prompts:
            parts = [self._zero_rows(width)] + [p.to(self.device, self.dtype) for p in prompts]
            pad = total - width - sum(lengths)
            if pad:
                parts.append(self._zero_rows(pad))
            embeds = torch.cat(parts)
        else:
            embeds = self._zero_rows(total)
        if self._graphs is not None and total <= self.graph_tokens:
            out = self._graphs(embeds, meta, width=width, span=span)
        else:
            out = self._body(embeds, meta.to(self.device, non_blocking=True), width=width, span=span)
        if self.device.type == "cuda":
            self._meta_done[self._meta_turn] = torch.cuda.Event()
            self._meta_done[self._meta_turn].record()
        self._meta_turn ^= 1
        return out[: b + n]

    def _zero_rows(self, n: int) -> torch.Tensor:
        if n not in self._zeros:
            self._zeros[n] = torch.zeros(n, self.hidden, dtype=self.dtype, device=self.device)
        return self._zeros[n]

    def describe(self, positions: Sequence[int], lengths: Sequence[int], width: int, total: int) -> torch.Tensor:
        """The step's int64 description, in a (pinned, on CUDA) host buffer: per token its id (-1: take the
        prompt embedding; the decode rows' ids are read from ``self.tokens``), position and cache row; per
        request the token whose logits it gets; per sequence of the prompts' attention (the prompts, then
        the padding) its query offsets and key counts. Padding decode rows write to the scratch row (and read
        their own rows: junk nobody uses)."""
        b, n, slots, scratch = len(positions), len(lengths), self.slots, self.scratch_slot
        pad_decode, pad_tail = width - b, total - width - sum(lengths)
        ids = np.full(total, -1, np.int64)   # the decode rows' entries are replaced by self.tokens in the pass
        scratch_positions = np.arange(pad_decode + pad_tail, dtype=np.int64) % self.context   # distinct writes
        position = np.concatenate([np.asarray(positions, np.int64), scratch_positions[:pad_decode]]
                                  + [np.arange(length, dtype=np.int64) for length in lengths]
                                  + [scratch_positions[pad_decode:]])
        row = np.concatenate([np.arange(b, dtype=np.int64), np.full(pad_decode, scratch, np.int64)]
                             + [np.full(length, b + i, np.int64) for i, length in enumerate(lengths)]
                             + [np.full(pad_tail, scratch, np.int64)])
        out = np.zeros(slots, np.int64)
        out[:b] = np.arange(b)
        out[b:b + n] = width + np.cumsum(lengths) - 1
        counts = np.zeros(self.sequences, np.int64)   # each sequence's queries and keys: its own tokens
        counts[:n] = lengths
        counts[n] = pad_tail
        meta = np.concatenate([ids, position, row, out, [0], np.cumsum(counts), counts])
        turn = self._meta_turn
        if self._meta_done[turn] is not None:
            self._meta_done[turn].synchronize()   # its last copy to the device has finished
        host = self._meta_host[turn]
        if meta.size > host.numel():   # a larger step than any before: the buffer grows once
            host = self._meta_host[turn] = torch.zeros(meta.size, dtype=torch.int64, pin_memory=host.is_pinned())
        view = host[:meta.size]
        view.numpy()[:] = meta
        return view if self.device.type == "cuda" else view.clone()

    def _prompt_attention(self, q, k, v, cu, used, tokens: int) -> torch.Tensor:
        """The prompts' causal attention over their own keys and values (packed)."""
        if self._attend is not None:
            return self._attend(q, k, v, cu, cu, used, self.scale, tokens, tokens)
        return reference_attention(q, k, v, cu, cu, used, self.scale)

    def _body(self, embeds: torch.Tensor, meta: torch.Tensor, *, width: int, span: int) -> torch.Tensor:
        """The pass over ``embeds`` ``(total, hidden)``; returns ``(slots, vocab)`` logits (rows past the
        step's requests: junk)."""
        total, s = embeds.shape[0], self.sequences
        ids, positions, rows = meta[:total], meta[total:2 * total], meta[2 * total:3 * total]
        at = 3 * total
        out = meta[at:at + self.slots]
        cu = meta[at + self.slots:at + self.slots + s + 1].to(torch.int32)
        used = meta[at + self.slots + s + 1:].to(torch.int32)
        if width:   # the decode rows' last tokens (padding rows: whatever their rows hold, a valid id)
            ids = torch.cat([self.tokens[:width], ids[width:]])
        x = torch.where((ids >= 0)[:, None], self.embed(ids.clamp(min=0)), embeds)
        rope = self._step_rope(positions)
        if width and self.rows == "padded":
            mask = self._row_mask(positions[:width], span, self.row_attention)
        elif width:
            lengths = (positions[:width] + 1).to(torch.int32)
        for index, layer in enumerate(self.layers):
            q, k, v = self._rotate_store(index, _apply(self._rms(x, layer.norm1), layer.qkv), positions, rows, rope)
            parts = []
            if width and self.rows == "padded":
                keys, values = self.k_cache[index, :width, :, :span], self.v_cache[index, :width, :, :span]
                parts.append(self._row_attention(q[:width], keys, values, mask, self.row_attention))
            elif width:
                parts.append(self._decode_rows(q[:width], self.k_cache[index], self.v_cache[index], lengths,
                                               self.scale))
            if total > width:
                rest = total - width
                parts.append(self._prompt_attention(q[width:], k[width:], v[width:], cu, used, rest).reshape(rest, -1))
            attn = torch.cat(parts) if len(parts) > 1 else parts[0]
            x = _apply(attn, layer.o, residual=x)
            x = self._mlp(x, layer)
        return self._head(x[out])

    # ---------------------------------------------------------------- warm-up
    @torch.no_grad()
    def warm_up(self, prompt_length: int, max_tokens: int, arrivals: int = 2, spread: int = 32) -> int:
        """Capture the steps a server meets first, before any request: every decode-only shape, and the
        shapes of 1 .. ``arrivals`` prompts of ``prompt_length`` +- ``spread`` tokens arriving beside
        0 .. ``slots`` - 1 running rows (up to ``max_tokens`` and ``graph_tokens``). Uses the idle cache
        rows. Returns the graph count."""
        if self._graphs is None:
            return 0
        steps: dict[tuple[int, int, int], tuple[list[int], list[int]]] = {}
        for rows in range(1, self.slots + 1):
            for longest in range(self.length_bucket if self.rows == "padded" else self.context, self.context + 1,
                                 self.length_bucket):
                positions = [longest - 1] * rows
                steps.setdefault(self.shape(positions, []), (positions, []))
        shortest, longest = max(1, prompt_length - spread), min(self.context, prompt_length + spread)
        for count in range(1, min(arrivals, self.slots) + 1):
            for running in range(0, self.slots - count + 1):
                for length in range(shortest, longest + 1):
                    lengths = [length] * count
                    if running + count * length <= max_tokens:
                        shape = self.shape([0] * running, lengths)
                        if shape[1] <= self.graph_tokens:
                            steps.setdefault(shape, ([0] * running, lengths))
        hidden = torch.zeros(1, self.hidden, dtype=self.dtype, device=self.device)
        for shape in sorted(steps, key=lambda key: (key[1], key[2]), reverse=True):   # largest first: one pool size
            positions, lengths = steps[shape]
            self.step(None, positions, [hidden.expand(length, -1) for length in lengths])
        torch.cuda.synchronize(self.device)
        return self.graphs
