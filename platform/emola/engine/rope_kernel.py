"""RoPE and the KV-cache write of a decode step as one Triton kernel.

Between a layer's fused q/k/v projection and its attention, the PyTorch code of
:meth:`~emola.engine.decoder.DecoderWeights._qkv` and :meth:`~emola.engine.decoder.DecoderWeights.store`
runs seven small kernels (the rotation's negation, concatenation, two products and a sum,
then two indexed writes into the cache). In a decode step each moves a few hundred
kilobytes, so their cost is launches, not bytes: ~200 per step at the ``emola-7b`` shape.
:func:`rope_store` does the same work in one launch per layer: each program takes one
head of one token, rotates it (q and k heads) in float32, writes q and k to fresh tensors,
and writes k and v into the cache at the token's (cache row, position), in the cache's
dtype (the model's, or FP8).

It rounds once where the PyTorch code rounds after each operation, so its outputs may
differ from :func:`rope_store_reference` in the last bit of the model's dtype; the engine
checks it against the reference before use (:func:`rope_kernel_problem`).
"""

from __future__ import annotations

import functools

import torch

from emola.engine.checks import KernelProblem, relative_error, tolerance, triton_runs_on


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rope_store(qkv_ptr, cos_ptr, sin_ptr, positions_ptr, rows_ptr, q_ptr, k_ptr, k_cache_ptr, v_cache_ptr,
                   qkv_token, heads, kv_heads, cache_row, cache_head, cache_pos, HALF: tl.constexpr):
        token = tl.program_id(0)
        head = tl.program_id(1)          # q heads, then k heads, then v heads
        i = tl.arange(0, HALF)
        position = tl.load(positions_ptr + token)
        row = tl.load(rows_ptr + token)
        source = qkv_ptr + token * qkv_token + head * 2 * HALF
        x1 = tl.load(source + i).to(tl.float32)
        x2 = tl.load(source + HALF + i).to(tl.float32)
        if head < heads + kv_heads:
            table = position * 2 * HALF
            c1 = tl.load(cos_ptr + table + i).to(tl.float32)
            c2 = tl.load(cos_ptr + table + HALF + i).to(tl.float32)
            s1 = tl.load(sin_ptr + table + i).to(tl.float32)
            s2 = tl.load(sin_ptr + table + HALF + i).to(tl.float32)
            y1 = x1 * c1 - x2 * s1
            y2 = x2 * c2 + x1 * s2
            # (each branch names its own values: Triton joins the names both branches assign, so one name
            # may not hold values of two dtypes)
            if head < heads:
                q_out = q_ptr + (token * heads + head) * 2 * HALF
                tl.store(q_out + i, y1.to(q_ptr.dtype.element_ty))
                tl.store(q_out + HALF + i, y2.to(q_ptr.dtype.element_ty))
            else:
                k_head = head - heads
                k1 = y1.to(k_ptr.dtype.element_ty)   # the cache gets the rounded k, as the PyTorch path stores it
                k2 = y2.to(k_ptr.dtype.element_ty)
                k_out = k_ptr + (token * kv_heads + k_head) * 2 * HALF
                tl.store(k_out + i, k1)
                tl.store(k_out + HALF + i, k2)
                k_entry = k_cache_ptr + row * cache_row + k_head * cache_head + position * cache_pos
                tl.store(k_entry + i, k1.to(k_cache_ptr.dtype.element_ty))
                tl.store(k_entry + HALF + i, k2.to(k_cache_ptr.dtype.element_ty))
        else:
            v_head = head - heads - kv_heads
            v_entry = v_cache_ptr + row * cache_row + v_head * cache_head + position * cache_pos
            tl.store(v_entry + i, x1.to(v_cache_ptr.dtype.element_ty))
            tl.store(v_entry + HALF + i, x2.to(v_cache_ptr.dtype.element_ty))

    return rope_store


def _split(qkv: torch.Tensor, heads: int, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = qkv.shape[-1] // (heads + 2 * kv_heads)
    q, k, v = qkv.split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
    return q.unflatten(-1, (heads, d)), k.unflatten(-1, (kv_heads, d)), v.unflatten(-1, (kv_heads, d))


def rope_store(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, heads: int,
               kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotate q and k of ``qkv`` ``(n, (heads + 2 kv_heads) d)`` (contiguous) by the RoPE tables ``cos``,
    ``sin`` ``(context, d)`` at ``positions`` ``(n,)``, and write k and v to ``k_cache``, ``v_cache`` (one layer,
    ``(cache rows, kv_heads, context, d)``, contiguous) at ``(rows[i], positions[i])``.

    Returns q ``(n, heads, d)``, k ``(n, kv_heads, d)`` (rotated, in ``qkv``'s dtype) and v (a view of ``qkv``).
    """
    n, width = qkv.shape
    d = width // (heads + 2 * kv_heads)
    q = torch.empty(n, heads, d, dtype=qkv.dtype, device=qkv.device)
    k = torch.empty(n, kv_heads, d, dtype=qkv.dtype, device=qkv.device)
    if n:
        _kernel()[(n, heads + 2 * kv_heads)](qkv, cos, sin, positions, rows, q, k, k_cache, v_cache, qkv.stride(0),
                                             heads, kv_heads, k_cache.stride(0), k_cache.stride(1),
                                             k_cache.stride(2), HALF=d // 2)
    return q, k, _split(qkv, heads, kv_heads)[2]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` ``(..., d)`` by ``cos``/``sin`` broadcast to it, as transformers' Llama
    (``rotate_half``): the decoders' PyTorch path and :func:`rope_store_reference`."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def rope_store_reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                         rows: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, heads: int,
                         kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`rope_store` in PyTorch operations, rounding as transformers' Llama does (the check)."""
    q, k, v = _split(qkv, heads, kv_heads)
    c, s = cos[positions][:, None], sin[positions][:, None]
    q, k = apply_rope(q, c, s), apply_rope(k, c, s)
    k_cache.view(torch.uint8)[rows, :, positions] = k.to(k_cache.dtype).view(torch.uint8)
    v_cache.view(torch.uint8)[rows, :, positions] = v.to(v_cache.dtype).view(torch.uint8)
    return q, k, v


def rope_kernel_problem(device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int,
                        cache_dtype: torch.dtype | None = None, context: int = 2048) -> KernelProblem | None:
    """Why :func:`rope_store` cannot serve here (None: it can): Triton must compile it for ``device``, its q and k
    must agree with :func:`rope_store_reference`'s within :func:`~emola.engine.checks.tolerance` of ``dtype`` (at
    positions up to ``context``), and it must write exactly its own k and v, at each token's row and position."""
    if not triton_runs_on(device):
        return KernelProblem("the Triton RoPE kernel runs on CUDA only")
    try:
        generator = torch.Generator(device="cpu").manual_seed(0)
        n = 6
        qkv = torch.randn(n, (heads + 2 * kv_heads) * head_dim, generator=generator).to(device, dtype)
        angles = torch.rand(context, head_dim // 2, generator=generator) * 6.3
        cos = torch.cat([angles.cos()] * 2, dim=-1).to(device, dtype)
        sin = torch.cat([angles.sin()] * 2, dim=-1).to(device, dtype)
        positions = torch.tensor([0, 3, context - 1, 7, 7, 12], device=device)
        rows = torch.tensor([0, 1, 2, 3, 4, 0], device=device)
        caches = [torch.zeros(5, kv_heads, context, head_dim, dtype=cache_dtype or dtype, device=device)
                  for _ in range(2)]
        q, k, v = rope_store(qkv, cos, sin, positions, rows, caches[0], caches[1], heads, kv_heads)
        want_q, want_k, _ = rope_store_reference(qkv, cos, sin, positions, rows, *[torch.zeros_like(c) for c in caches],
                                                 heads, kv_heads)
        # q and k: the rotation, up to the reference's extra roundings
        error = max(relative_error(q, want_q), relative_error(k, want_k))
        limit = 2 * tolerance(dtype)
        if not error <= limit:
            return KernelProblem(f"the Triton RoPE kernel's rotation disagrees with the reference (relative error "
                                 f"{error:.3g} > {limit:g})", wrong=True)
        # the cache: exactly the kernel's own k and v, in the cache's dtype, at each token's row and position
        for cache, value in zip(caches, (k, v)):
            if not torch.equal(cache.view(torch.uint8)[rows, :, positions], value.to(cache.dtype).view(torch.uint8)):
                return KernelProblem("the Triton RoPE kernel wrote the cache wrongly", wrong=True)
    except Exception as err:  # noqa: BLE001 - any failure means: rotate and store another way
        return KernelProblem(f"the Triton RoPE kernel failed: {type(err).__name__}: {err}"[:500])
    return None
