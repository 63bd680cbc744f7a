"""The language model of EmoLA run over a static KV cache with one slot per request.

:class:`DecoderWeights` reads the weights of transformers' Llama decoder (LLaVA-1.5's
Vicuna, and the ``tiny`` profile's decoder) and holds the pieces of a layer (norms, the
fused projections, RoPE, one-query-per-row attention over the cache). :class:`SlotDecoder`
runs the computation in two forms (the packed decoder, :mod:`emola.engine.packed`, in one):

- :meth:`SlotDecoder.prefill`: new requests' prompt embeddings ``(n, L, hidden)``,
  right-padded, through every layer with causal attention; their keys and values go to
  their slots at positions ``0 .. L-1``; returns the logits at each prompt's last token.
- :meth:`SlotDecoder.decode`: one token for each of the first ``b`` slots, each at its own
  position; attention reads the slot's cached positions up to a length bucket (a multiple
  of ``length_bucket``), masked beyond the row's own position.

Requests occupy slots ``0 .. n-1`` (the engine keeps them compact), so a decode step of
``b`` rows has fixed shapes for each pair (batch bucket, length bucket). On CUDA each pair
is captured once as a CUDA graph and replayed: one decode step is then one launch, not
~30 kernel launches per layer from Python. The graphs share one memory pool and write
their logits to one persistent buffer. On CPU the same code runs eagerly.

With ``prefill_bucket`` set, prefill has fixed shapes too: prompts are right-padded to a
multiple of ``prefill_bucket`` tokens and the group to a row bucket (:func:`prefill_rows`),
the padding rows writing to a scratch slot of the cache that no request uses; on CUDA each
(rows, width) shape is then captured once (:class:`~emola.engine.graphs.ShapeGraphs`).

The weights stay those of the transformers modules: the q/k/v and gate/up projections are
concatenated once into fused matrices, and the modules' own weights become views into
them (no second copy). LoRA is normally merged into those weights before (the engine's
``merge_lora``); a model with LoRA still separate runs too, each adapted projection adding
its low-rank term ``scale * B(A x)``: what merging saves is measured that way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN

from emola.engine.graphs import ShapeGraphs
from emola.engine.rope_kernel import apply_rope, rope_store


@dataclass
class _LoRA:
    """An unmerged LoRA term of one projection: ``out[..., start:stop] += scale * B(A x)``."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float
    start: int
    stop: int


@dataclass
class _Projection:
    weight: torch.Tensor
    bias: torch.Tensor | None
    lora: list[_LoRA]


@dataclass
class _Layer:
    norm1: torch.Tensor
    qkv: _Projection
    o: _Projection
    norm2: torch.Tensor
    gate_up: _Projection
    down: _Projection


def _active(module: nn.Module) -> nn.Module:
    """The module that computes: peft's trained copy of a fully trained module (``modules_to_save``)."""
    copies = getattr(module, "modules_to_save", None)
    if isinstance(copies, nn.ModuleDict):
        return copies[module.active_adapter if isinstance(module.active_adapter, str) else module.active_adapter[0]]
    return module


def _projection(modules: list[nn.Module]) -> _Projection:
    """The fused projection of ``modules`` (concatenated along the output dimension), with their
    unmerged LoRA terms; each base module's weight becomes a view into the fused tensor."""
    bases = [m.get_base_layer() if hasattr(m, "get_base_layer") else m for m in modules]
    weight, bias = _fuse(bases)
    loras, start = [], 0
    for module, base in zip(modules, bases):
        stop = start + base.out_features
        for name in getattr(module, "active_adapters", []) or []:
            if name in getattr(module, "lora_A", {}):
                loras.append(_LoRA(module.lora_A[name].weight.detach(), module.lora_B[name].weight.detach(),
                                   float(module.scaling[name]), start, stop))
        start = stop
    return _Projection(weight, bias, loras)


def _apply(x: torch.Tensor, p: _Projection, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``x W^T (+ bias) (+ LoRA terms)``, plus ``residual`` when given: then one matrix product that
    adds into the residual (``addmm``) instead of a product and a separate addition."""
    if residual is not None and p.bias is None:
        out = torch.addmm(residual.reshape(-1, residual.shape[-1]), x.reshape(-1, x.shape[-1]), p.weight.t())
        out = out.view(residual.shape)
    else:
        out = F.linear(x, p.weight, p.bias)
        if residual is not None:
            out = out + residual
    for lora in p.lora:
        out[..., lora.start:lora.stop] += lora.scale * F.linear(F.linear(x.to(lora.a.dtype), lora.a), lora.b).to(out.dtype)
    return out


def _fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the weights (and biases) of ``linears`` along the output dimension; each
    module's parameter becomes a view into the fused tensor."""
    if len(linears) == 1:
        bias = linears[0].bias
        return linears[0].weight.detach(), None if bias is None else bias.detach()
    weight = torch.cat([m.weight.detach() for m in linears], dim=0)
    bias = None
    if linears[0].bias is not None:
        bias = torch.cat([m.bias.detach() for m in linears], dim=0)
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight = nn.Parameter(weight[start:start + rows], requires_grad=False)
        if bias is not None:
            m.bias = nn.Parameter(bias[start:start + rows], requires_grad=False)
        start += rows
    return weight, bias


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def prefill_rows(n: int) -> int:
    """Prompts prefilled together, rounded up to a row bucket: 1, 2, 4, 8, then multiples of 8."""
    if n <= 8:
        bucket = 1
        while bucket < n:
            bucket *= 2
        return bucket
    return round_up(n, 8)


def attention_shape(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of a Llama decoder's ``config``."""
    heads = config.num_attention_heads
    return heads, config.num_key_value_heads or heads, getattr(config, "head_dim", None) or config.hidden_size // heads


class DecoderWeights:
    """The weights of transformers' Llama decoder read once for the engine's own forward passes, and the
    pieces both decoders (:class:`SlotDecoder`, :class:`~emola.engine.packed.PackedDecoder`) compose a layer of.

    Args:
        language_model: transformers' ``LlamaModel`` (``model.language_model`` of a LLaVA).
        lm_head: the output projection.
        context: positions per request (the RoPE tables cover them).
    """

    def __init__(self, language_model: nn.Module, lm_head: nn.Linear, *, context: int, rope_kernel: bool = False):
        config = language_model.config
        rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope_type == "dynamic":
            raise ValueError("dynamic RoPE scaling changes with the sequence length: not supported by the engine")
        self.heads, self.kv_heads, self.head_dim = attention_shape(config)
        self.hidden = config.hidden_size
        self.scale = self.head_dim ** -0.5
        self.eps = config.rms_norm_eps
        self.act = ACT2FN[config.hidden_act]
        self.embed = _active(language_model.embed_tokens)
        self.final_norm = _active(language_model.norm).weight.detach()
        self.lm_head = _active(lm_head)
        self.layers = []
        for layer in language_model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                norm1=_active(layer.input_layernorm).weight.detach(),
                qkv=_projection([attn.q_proj, attn.k_proj, attn.v_proj]), o=_projection([attn.o_proj]),
                norm2=_active(layer.post_attention_layernorm).weight.detach(),
                gate_up=_projection([mlp.gate_proj, mlp.up_proj]), down=_projection([mlp.down_proj])))
        weight = self.layers[0].qkv.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.context = context
        with torch.no_grad():
            positions = torch.arange(context, device=self.device)[None]
            cos, sin = language_model.rotary_emb(weight[:1], positions)   # transformers' own tables (scaling incl.)
        self.cos, self.sin = cos[0], sin[0]                                 # (context, head_dim), model dtype
        self.rope_kernel = rope_kernel

    # ------------------------------------------------------------------ cache
    def _allocate_cache(self, rows: int, dtype: torch.dtype | None = None) -> None:
        """The KV cache both decoders use: ``k_cache``, ``v_cache`` ``(layers, rows, kv_heads, context, d)``,
        in the model's dtype or ``dtype`` (FP8: :meth:`store` rounds what it writes); and ``tokens`` ``(rows,)``,
        each row's last token: the next decode step's input, written on the device by the engine's sampling
        (so a step can be launched before the host has read the previous step's tokens)."""
        shape = (len(self.layers), rows, self.kv_heads, self.context, self.head_dim)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.cache_dtype = dtype or self.dtype
        self.k_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.cache_dtype, device=self.device)
        # FP8 entries are written through byte views (index_put of float8 is not on every backend)
        self._cache_bytes = None
        if self.cache_dtype != self.dtype and self.cache_dtype.itemsize == 1:
            self._cache_bytes = (self.k_cache.view(torch.uint8), self.v_cache.view(torch.uint8))

    def store(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write keys and values ``(n, kv_heads, d)`` at ``(rows[i], positions[i])`` of ``layer``."""
        if self._cache_bytes is None:
            self.k_cache[layer, rows, :, positions] = k
            self.v_cache[layer, rows, :, positions] = v
            return
        k_bytes, v_bytes = self._cache_bytes
        k_bytes[layer, rows, :, positions] = k.to(self.cache_dtype).view(torch.uint8)
        v_bytes[layer, rows, :, positions] = v.to(self.cache_dtype).view(torch.uint8)

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first ``length`` cached positions of row ``source`` to row ``target`` (every layer), and its
        last token."""
        self.k_cache[:, target, :, :length] = self.k_cache[:, source, :, :length]
        self.v_cache[:, target, :, :length] = self.v_cache[:, source, :, :length]
        self.tokens[target] = self.tokens[source]

    # ------------------------------------------------------------------ pieces
    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """LlamaRMSNorm as one fused kernel (on CUDA): normalized in float32 and scaled before the one
        rounding to the model's dtype (transformers rounds before scaling: the same in float32)."""
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def _qkv(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """``(..., (heads + 2 kv_heads) * d)`` -> q ``(..., heads, d)``, k, v ``(..., kv_heads, d)``,
        RoPE applied to q and k together (one set of kernels for both)."""
        d, h, kv = self.head_dim, self.heads, self.kv_heads
        qk, v = qkv.split([(h + kv) * d, kv * d], dim=-1)
        q, k = apply_rope(qk.unflatten(-1, (h + kv, d)), cos, sin).split([h, kv], dim=-2)
        return q, k, v.unflatten(-1, (kv, d))

    def _step_rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The RoPE tables at a step's ``positions``, gathered once for every layer: ``(n, 1, d)`` each (None with
        ``rope_kernel``, which reads the tables itself)."""
        return None if self.rope_kernel else (self.cos[positions][:, None], self.sin[positions][:, None])

    def _rotate_store(self, layer: int, qkv: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor,
                      rope: tuple[torch.Tensor, torch.Tensor] | None):
        """A step's tokens ``qkv`` ``(n, (heads + 2 kv_heads) d)`` at ``positions`` ``(n,)`` -> q ``(n, heads, d)``,
        k, v ``(n, kv_heads, d)``, k and v written to cache ``rows`` of ``layer``: one Triton kernel with
        ``rope_kernel`` (:mod:`emola.engine.rope_kernel`), else :meth:`_qkv` with ``rope`` (:meth:`_step_rope`)
        and :meth:`store`."""
        if rope is None:
            return rope_store(qkv, self.cos, self.sin, positions, rows, self.k_cache[layer], self.v_cache[layer],
                              self.heads, self.kv_heads)
        q, k, v = self._qkv(qkv, *rope)
        self.store(layer, rows, positions, k, v)
        return q, k, v

    def _row_mask(self, positions: torch.Tensor, span: int, attention: str) -> torch.Tensor:
        """The additive mask ``(b, 1, 1, span)`` of rows whose query is at ``positions``: 0 up to the row's
        own position, -inf beyond (float32 for ``matmul``, the model's dtype for ``sdpa``)."""
        visible = torch.arange(span, device=positions.device)[None, :] <= positions[:, None]   # (b, span)
        bias = torch.zeros(visible.shape, dtype=torch.float32, device=positions.device)
        bias = bias.masked_fill(~visible, float("-inf"))[:, None, None, :]
        return bias.to(self.dtype) if attention == "sdpa" else bias

    def _row_attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                       attention: str) -> torch.Tensor:
        """One query per row over its cache: ``q`` ``(b, heads, d)``, ``keys``/``values`` ``(b, kv, span, d)``,
        ``mask`` from :meth:`_row_mask`; returns ``(b, heads * d)``. ``matmul``: scores and weighted sum as two
        matrix products (like transformers' eager attention); ``sdpa``: PyTorch's fused kernel."""
        batch, groups = q.shape[0], self.heads // self.kv_heads
        if attention == "sdpa":
            attn = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask, scale=self.scale,
                                                  enable_gqa=groups > 1)
            return attn.reshape(batch, self.heads * self.head_dim)
        query = q.view(batch, self.kv_heads, groups, self.head_dim)
        scores = torch.matmul(query, keys.transpose(-1, -2)).to(torch.float32) * self.scale + mask
        weights = torch.softmax(scores, dim=-1).to(self.dtype)            # (b, kv, groups, span)
        return torch.matmul(weights, values).reshape(batch, self.heads * self.head_dim)

    def _mlp(self, x: torch.Tensor, layer: _Layer) -> torch.Tensor:
        gate, up = _apply(self._rms(x, layer.norm2), layer.gate_up).chunk(2, dim=-1)
        return _apply(self.act(gate) * up, layer.down, residual=x)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._rms(x, self.final_norm)).to(torch.float32)


class SlotDecoder(DecoderWeights):
    """Prefill and decode for ``slots`` concurrent sequences of at most ``context`` tokens each.

    Args:
        language_model: transformers' ``LlamaModel`` (``model.language_model`` of a LLaVA).
        lm_head: the output projection.
        slots: requests decoded together at most (the KV cache holds this many rows).
        context: positions per slot (prompt and answer).
        length_bucket: attention reads the cache in multiples of this many positions.
        cuda_graphs: capture and replay decode steps (CUDA only).
        attention: ``matmul`` (scores and weighted sum as two matrix products, like
            transformers' eager attention) or ``sdpa`` (PyTorch's fused kernel, masked).
        prefill_bucket: pad prompts to a multiple of this many tokens (and the group to a
            row bucket) so prefill shapes repeat; with ``cuda_graphs`` on CUDA each shape is
            captured once. ``None``: prompts run at their own length, eagerly.
    """

    def __init__(self, language_model: nn.Module, lm_head: nn.Linear, *, slots: int, context: int,
                 length_bucket: int = 128, cuda_graphs: bool = True, attention: str = "matmul",
                 prefill_bucket: int | None = None, rope_kernel: bool = False):
        super().__init__(language_model, lm_head, context=context, rope_kernel=rope_kernel)
        self.slots = slots
        self.length_bucket = max(1, min(length_bucket, context))
        self.prefill_bucket = prefill_bucket
        self.scratch_slot = slots   # padding rows of a padded prefill write here (an extra cache row)
        self._allocate_cache(slots + (1 if prefill_bucket else 0))
        # Static decode inputs (``tokens``: the cache's) and output: graphs read and write these buffers.
        self.positions = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.logits = torch.zeros(slots, self.lm_head.out_features, dtype=torch.float32, device=self.device)
        self._slot_ids = torch.arange(slots, device=self.device)
        if attention not in ("matmul", "sdpa"):
            raise ValueError(f"decode attention {attention!r}: matmul or sdpa")
        self.attention = attention
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._prefill_graphs = (ShapeGraphs(self._prefill_body, self._pool) if self.use_graphs and prefill_bucket
                                else None)

    # ----------------------------------------------------------------- prefill
    @torch.no_grad()
    def prefill(self, embeds: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Prompts into their slots; returns ``(n, vocab)`` float32 logits at each prompt's last token.

        ``embeds`` ``(n, L, hidden)`` right-padded (positions ``>= lengths[i]`` are padding:
        causal attention never lets a real token see them, and decoding overwrites their
        cache entries before reading them); ``lengths``, ``slots`` ``(n,)``.
        """
        n, length, hidden = embeds.shape
        if length > self.context:
            raise ValueError(f"a prompt of {length} tokens exceeds the {self.context}-token context")
        lengths, slots = lengths.to(self.device, non_blocking=True), slots.to(self.device, non_blocking=True)
        if self.prefill_bucket is None:
            return self._prefill_body(embeds.to(self.dtype), lengths, slots)
        rows, width = prefill_rows(n), min(self.context, round_up(length, self.prefill_bucket))
        padded = torch.zeros(rows, width, hidden, dtype=self.dtype, device=self.device)
        padded[:n, :length] = embeds
        all_lengths = torch.ones(rows, dtype=torch.long, device=self.device)
        all_lengths[:n] = lengths
        all_slots = torch.full((rows,), self.scratch_slot, dtype=torch.long, device=self.device)
        all_slots[:n] = slots
        run = self._prefill_graphs if self._prefill_graphs is not None else self._prefill_body
        return run(padded, all_lengths, all_slots)[:n]

    def _prefill_body(self, x: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        cos, sin = self.cos[:length][None, :, None], self.sin[:length][None, :, None]
        for index, layer in enumerate(self.layers):
            q, k, v = self._qkv(_apply(self._rms(x, layer.norm1), layer.qkv), cos, sin)   # (n, L, heads, d)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (n, heads, L, d)
            self.k_cache[index, slots, :, :length] = k
            self.v_cache[index, slots, :, :length] = v
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                                  enable_gqa=self.kv_heads != self.heads)
            x = _apply(attn.transpose(1, 2).flatten(2), layer.o, residual=x)
            x = self._mlp(x, layer)
        last = x[torch.arange(n, device=x.device), lengths - 1]
        return self._head(last)

    @property
    def prefill_graphs(self) -> int:
        """Prefill shapes captured so far."""
        return len(self._prefill_graphs) if self._prefill_graphs is not None else 0

    # ------------------------------------------------------------------ decode
    def _decode_body(self, batch: int, span: int) -> None:
        """One token for slots ``0 .. batch-1`` from ``tokens`` at ``positions``; logits into ``logits``.

        Attention covers cache positions ``0 .. span-1``, each row up to its own position.
        """
        tokens, positions = self.tokens[:batch], self.positions[:batch]
        slots = self._slot_ids[:batch]
        x = self.embed(tokens)                                              # (b, hidden)
        mask = self._row_mask(positions, span, self.attention)
        rope = self._step_rope(positions)
        for index, layer in enumerate(self.layers):
            q, _, _ = self._rotate_store(index, _apply(self._rms(x, layer.norm1), layer.qkv), positions, slots, rope)
            keys = self.k_cache[index, :batch, :, :span]                       # (b, kv, span, d)
            values = self.v_cache[index, :batch, :, :span]
            attn = self._row_attention(q, keys, values, mask, self.attention)
            x = _apply(attn, layer.o, residual=x)
            x = self._mlp(x, layer)
        self.logits[:batch] = self._head(x)

    def span_for(self, longest: int) -> int:
        """The length bucket that covers positions ``0 .. longest-1``."""
        return min(self.context, round_up(max(longest, 1), self.length_bucket))

    @staticmethod
    def batch_bucket(rows: int, slots: int) -> int:
        """Rows rounded up to a power of two (at most ``slots``): the decode step's batch shape."""
        bucket = 1
        while bucket < rows:
            bucket *= 2
        return min(bucket, slots)

    @torch.no_grad()
    def decode(self, rows: int, longest: int) -> torch.Tensor:
        """Run one decode step for slots ``0 .. rows-1`` (``tokens``, ``positions`` already set);
        ``longest``: one past the highest position among them. Returns ``logits[:rows]``."""
        batch = self.batch_bucket(rows, self.slots)
        span = self.span_for(longest)
        if rows < batch:   # idle slots compute on position 0 of their own (unused) rows
            self.positions[rows:batch] = 0
        if not self.use_graphs:
            self._decode_body(batch, span)
        else:
            graph = self._graphs.get((batch, span))
            if graph is None:
                graph = self._capture(batch, span)
            graph.replay()
        return self.logits[:rows]

    def _capture(self, batch: int, span: int) -> torch.cuda.CUDAGraph:
        """Capture the decode step for one (batch, span) shape.

        The warm-up runs before capture execute the step on the current inputs; a decode
        step only writes the cache entry of each row's current position, from inputs it
        does not change, so running it more than once leaves the same state.
        """
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._decode_body(batch, span)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._decode_body(batch, span)
        self._graphs[(batch, span)] = graph
        return graph

    @torch.no_grad()
    def warm_up(self, max_rows: int | None = None, max_span: int | None = None) -> int:
        """Capture every decode shape up front (largest first, so the shared pool is sized once);
        returns how many graphs exist. Idle slots are used: call before any request."""
        if not self.use_graphs:
            return 0
        batches = sorted({self.batch_bucket(r, self.slots) for r in range(1, (max_rows or self.slots) + 1)},
                         reverse=True)
        spans = sorted({self.span_for(p) for p in range(1, (max_span or self.context) + 1, self.length_bucket)},
                       reverse=True)
        self.tokens.zero_()
        self.positions.zero_()
        for batch in batches:
            for span in spans:
                if (batch, span) not in self._graphs:
                    self._capture(batch, span)
        torch.cuda.synchronize(self.device)
        return len(self._graphs)

