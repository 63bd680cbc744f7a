"""Causal attention over packed sequences of different lengths: the packed decoder's prompts.

The packed decoder (:class:`~emola.engine.packed.PackedDecoder`) runs the prompts of the
requests that arrive in a step as one packed matrix ``(total, heads, d)``; sequence ``i``
owns queries ``cu_q[i] .. cu_q[i+1]-1`` and the first ``used_k[i]`` keys from ``cu_k[i]``
on. Attention is causal, aligned at the end: the last query of a sequence sees all
``used_k[i]`` keys, the one before it one fewer (a prompt over its own keys is ordinary
causal attention; a chunk of a prompt whose beginning is cached would see that beginning).

On CUDA this is FlashAttention-2's variable-length kernel as bundled with PyTorch
(``aten._flash_attention_forward`` with ``seqused_k``), or PyTorch's memory-efficient
kernel in its variable-length form (``aten._efficient_attention_forward`` with
``seqlen_k``). :func:`reference_attention` computes the same with one
``scaled_dot_product_attention`` per sequence (CPU, tests, and the check that a kernel
agrees on the machine at hand: :func:`kernel_problem`). The decode rows, one query each,
attend through :mod:`emola.engine.decode_kernel` (these kernels work in tiles of 64-128
queries: measured slower for one query per row).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from emola.engine.checks import KernelProblem, relative_error, tolerance


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                        used_k: torch.Tensor, scale: float) -> torch.Tensor:
    """Packed causal attention, end-aligned, one sequence at a time.

    ``q`` ``(total, heads, d)``; ``k``, ``v`` ``(keys, kv_heads, d)``, sequence ``i``'s from ``cu_k[i]``;
    ``cu_q``, ``cu_k`` ``(S + 1,)``; ``used_k`` ``(S,)``. Returns ``(total, heads, d)``; queries that
    see no key (more queries than keys) get zeros.
    """
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    starts_q, starts_k, used = cu_q.tolist(), cu_k.tolist(), used_k.tolist()
    groups = q.shape[1] // k.shape[1]
    for i, m in enumerate(used):
        first, last = starts_q[i], starts_q[i + 1]
        n = last - first
        if n == 0 or m == 0:
            continue
        query = q[first:last].transpose(0, 1)                                  # (heads, n, d)
        keys = k[starts_k[i]:starts_k[i] + m].transpose(0, 1)                  # (kv, m, d)
        values = v[starts_k[i]:starts_k[i] + m].transpose(0, 1)
        visible = torch.arange(m, device=q.device)[None] <= torch.arange(n, device=q.device)[:, None] + (m - n)
        attn = F.scaled_dot_product_attention(query, keys, values, attn_mask=visible, scale=scale,
                                              enable_gqa=groups > 1)
        seen = visible.any(-1)                                                 # rows with no key: zeros, not NaN
        out[first:last] = torch.where(seen[None, :, None], attn, 0).transpose(0, 1)
    return out


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                    used_k: torch.Tensor, scale: float, max_q: int, max_k: int) -> torch.Tensor:
    """The same on CUDA through FlashAttention-2's variable-length kernel (no host synchronisation: it can
    be captured in a CUDA graph). ``cu_q``, ``cu_k``, ``used_k`` int32; ``max_q``, ``max_k``: bounds on
    any one sequence's queries and keys."""
    return torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False, scale=scale, seqused_k=used_k)[0]


def efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                        used_k: torch.Tensor, scale: float, max_q: int, max_k: int) -> torch.Tensor:
    """The same through PyTorch's memory-efficient (CUTLASS) kernel: sequences as offsets into one batch
    row, keys counted per sequence, causal from the bottom right. As many key heads as query heads."""
    return torch.ops.aten._efficient_attention_forward(
        q[None], k[None], v[None], None, cu_q, cu_k, max_q, max_k, 0.0, 2, False, scale=scale, seqlen_k=used_k)[0][0]


#: The kernels the packed decoder can attend with, fastest expected first (CUDA), and the reference.
KERNELS = {"flash": flash_attention, "efficient": efficient_attention}


def kernel_problem(kernel: str, device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int,
                   head_dim: int) -> KernelProblem | None:
    """Why ``kernel`` cannot serve here (None: it can): it must run on ``device`` and agree with
    :func:`reference_attention` within :func:`~emola.engine.checks.tolerance` of ``dtype`` on a mix of a decode
    row, a prompt, an empty sequence and a chunk."""
    if kernel == "reference":
        return None
    if device.type != "cuda":
        return KernelProblem(f"the {kernel} kernel runs on CUDA only")
    if dtype not in (torch.float16, torch.bfloat16):
        return KernelProblem(f"the {kernel} kernel needs float16 or bfloat16 weights, not {dtype}")
    if kernel == "efficient" and kv_heads != heads:
        return KernelProblem("the efficient kernel needs as many key heads as query heads")
    try:
        context = 128
        generator = torch.Generator(device="cpu").manual_seed(0)
        q_counts, used = [1, 40, 0, 7], [57, 40, 0, 90]
        cu_q = torch.tensor([0] + torch.tensor(q_counts).cumsum(0).tolist(), dtype=torch.int32, device=device)
        used_k = torch.tensor(used, dtype=torch.int32, device=device)
        # Queries, keys and values as the decoder passes them: views into one fused projection's output.
        fused = torch.randn(context * len(used), heads + 2 * kv_heads, head_dim, generator=generator).to(device, dtype)
        q = fused[:sum(q_counts), :heads]
        scale = head_dim ** -0.5
        k, v = fused[:, heads:heads + kv_heads], fused[:, heads + kv_heads:]
        cu_k = torch.arange(0, context * (len(used) + 1), context, dtype=torch.int32, device=device)
        got = KERNELS[kernel](q, k, v, cu_q, cu_k, used_k, scale, max(q_counts), context)
        want = reference_attention(q.float(), k.float(), v.float(), cu_q, cu_k, used_k, scale)
        error = relative_error(got, want)
        if not error <= tolerance(dtype):
            return KernelProblem(f"the {kernel} kernel disagrees with the reference (relative error {error:.3g} > "
                                 f"{tolerance(dtype):g})", wrong=True)
    except Exception as err:  # noqa: BLE001 - any failure means: use another kernel
        return KernelProblem(f"the {kernel} kernel failed: {type(err).__name__}: {err}"[:500])
    return None
